"""ExecuTorch runner: the Python runtime (``executorch.runtime``) executing a ``.pte`` program's ``forward``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgeconv.errors import ArtifactRefused
from edgeconv.lazy import require, version_of
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


class ExecuTorchRunner(Runner):
    runtime = "executorch"
    accepted_options = ("input_names", "input_dtypes")

    def load(self) -> None:
        self._torch = require("torch", why="to feed ExecuTorch programs")
        runtime = require("executorch.runtime", why="to run .pte programs (pip install 'edgeconv[executorch]')")
        try:
            self.method = runtime.Runtime.get().load_program(str(self.artifact)).load_method("forward")
        except Exception as exc:
            raise ArtifactRefused(f"ExecuTorch cannot load {self.artifact}: {exc}") from exc
        names = self.options.get("input_names") or ["input"]
        # the program's input dtypes (token ids are int64); a bundle written before they were recorded: float32
        dtypes = self.options.get("input_dtypes") or ["float32"] * len(names)
        self.inputs = [TensorSpec(n, [1], d) for n, d in zip(names, dtypes)]
        self.outputs = []

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        return [self._torch.from_numpy(p) for p in super().prepare(feed).values()]

    def run(self, prepared: Any) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = self.method.execute(prepared)
        self.last_s = time.perf_counter() - t0
        return [o.detach().numpy().copy() for o in out]

    def fixed_batch(self) -> int | None:
        return 1  # exported for batch 1

    def info(self) -> dict[str, Any]:
        return {"runtime": "executorch", "version": version_of("executorch"), "device": "CPU", "threads": "runtime default",
                "precision": "as lowered (see the manifest's delegation record)"}
