"""ncnn runner (CPU; Vulkan off): the core's NcnnBackend behind edgeconv's runner interface, so the host and the device
run ncnn pairs through the same code, with the same explicit fp16 settings (ncnn's own defaults differ per CPU: fp16
storage on AVX2 CPUs, fp16 arithmetic too on ARMv8.2; see the backend). ncnn has no batch axis: each sample is one
extractor run, and a batch is their loop."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeconv.core.backends.ncnn import NcnnBackend
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


class NcnnRunner(Runner):
    runtime = "ncnn"
    accepted_options = NcnnBackend.accepted_options

    def load(self) -> None:
        self.backend = NcnnBackend(self.artifact, self.threads, **self.options)
        self.inputs = [TensorSpec(e["name"], [1], "float32") for e in self.backend.inputs]
        self.outputs = [TensorSpec(e["name"], [], "float32") for e in self.backend.outputs]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        return self.backend.prepare(feed)

    def run(self, prepared: Any) -> list[np.ndarray]:
        out = self.backend.run(prepared)
        self.last_s = self.backend.last_s
        return out

    def fixed_batch(self) -> int | None:
        return None  # any batch: one extractor run per sample

    def info(self) -> dict[str, Any]:
        return self.backend.info()
