"""The runner interface: one runtime each, the same shape for all (after Polygraphy's backend runners).

A runner loads an artifact, says what it takes and gives, runs a feed and records the time of the last
inference — measured around the runtime call only. Validate, profile and compare talk to nothing else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.backends.base import check_options, missing_inputs
from edgeconv.specs import TensorSpec


class Runner(ABC):
    runtime: str = ""  # "onnxruntime", "litert", "openvino", ...
    accepted_options: tuple[str, ...] = ()  # runtime-specific options (device, precision hint, ...)
    resizes_batch = False  # the runtime re-plans an artifact with a fixed batch for another batch size

    def __init__(self, artifact: Path, *, threads: int | None = None, options: dict[str, Any] | None = None):
        self.artifact = artifact
        self.threads = threads
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        check_options(self.runtime, self.accepted_options, self.options)  # the core's rule: refused, never ignored
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.last_s = 0.0  # seconds of the last runtime call
        self.load()

    @abstractmethod
    def load(self) -> None:
        """Load the artifact; fill ``inputs`` and ``outputs``."""

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        """Turn a feed into whatever ``run`` takes, once (no per-call conversions when timing)."""
        missing_inputs([{"name": s.name} for s in self.inputs], feed)  # the core's refusal, in its words
        return {s.name: np.asarray(feed[s.name], dtype=np.dtype(s.dtype), order="C") for s in self.inputs}

    @abstractmethod
    def run(self, prepared: Any) -> list[np.ndarray]:
        """The inference call: run ``prepared`` once; set ``last_s`` to the runtime call's duration. The core's backends
        have the same ``prepare``/``run``/``last_s``, so the one ``execute`` and the statistics in ``edgeconv.core``
        drive edgeconv's runners exactly as they drive the device's backends."""

    def infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """``run(prepare(feed))``, for a one-off call (nothing timed twice)."""
        return self.run(self.prepare(feed))

    def fixed_batch(self) -> int | None:
        """The batch every call must have, or None when the first axis is dynamic."""
        dims = [s.shape[0] for s in self.inputs if s.shape]
        fixed = [d for d in dims if isinstance(d, int)]
        return fixed[0] if fixed else None

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Runtime name and version, threads, device, precision that ran."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
