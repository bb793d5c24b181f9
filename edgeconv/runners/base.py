"""The runner interface: one runtime each, the same shape for all (after Polygraphy's backend runners).

A runner loads an artifact, says what it takes and gives, runs a feed and records the time of the last
inference — measured around the runtime call only. Validate, profile and compare talk to nothing else.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.device import edgeconv_runner as device
from edgeconv.device.edgeconv_runner import check_options
from edgeconv.errors import ArtifactRefused, BadInput, MissingDependency
from edgeconv.specs import TensorSpec


@contextlib.contextmanager
def runner_errors() -> Iterator[None]:
    """The device runner's refusals as edgeconv's typed errors (same messages, same exit codes): the one mapping,
    for the runners here and for validate/profile executing the device runner's request code."""
    try:
        yield
    except device.MissingRuntime as exc:
        raise MissingDependency(exc.message, hint=exc.hint) from None
    except device.ArtifactRejected as exc:
        raise ArtifactRefused(exc.message, hint=exc.hint) from None
    except device.BadRequest as exc:
        raise BadInput(exc.message, hint=exc.hint) from None


class Runner(ABC):
    runtime: str = ""  # "onnxruntime", "litert", "openvino", ...
    accepted_options: tuple[str, ...] = ()  # runtime-specific options (device, precision hint, ...)
    resizes_batch = False  # the runtime re-plans an artifact with a fixed batch for another batch size

    def __init__(self, artifact: Path, *, threads: int | None = None, options: dict[str, Any] | None = None):
        self.artifact = artifact
        self.threads = threads
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        with runner_errors():  # the device runner's rule: an option the runtime does not take is refused, never ignored
            check_options(self.runtime, self.accepted_options, self.options)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.last_inference_s = 0.0
        self.load()

    @abstractmethod
    def load(self) -> None:
        """Load the artifact; fill ``inputs`` and ``outputs``."""

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        """Turn a feed into whatever ``run_prepared`` takes, once (no per-call conversions when timing)."""
        prepared = {}
        for spec in self.inputs:
            if spec.name not in feed:
                raise BadInput(f"no data for input {spec.name!r}; the model's inputs are {[s.name for s in self.inputs]}")
            prepared[spec.name] = np.ascontiguousarray(feed[spec.name], dtype=np.dtype(spec.dtype))
        return prepared

    @abstractmethod
    def run_prepared(self, prepared: Any) -> list[np.ndarray]:
        """Run once; set ``last_inference_s`` to the runtime call's duration."""

    def infer(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.run_prepared(self.prepare(feed))

    # The device runner's backend interface (``prepare``/``run``/``last_s``), so the one ``execute`` and the
    # statistics in edgeconv_runner.py drive edgeconv's runners exactly as they drive the device's backends.
    def run(self, prepared: Any) -> list[np.ndarray]:
        return self.run_prepared(prepared)

    @property
    def last_s(self) -> float:
        return self.last_inference_s

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
