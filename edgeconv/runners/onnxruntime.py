"""ONNX Runtime runner (CPU execution provider): the core's OnnxRuntimeBackend behind edgeconv's runner interface, so
the host and the device run ONNX models through the same code."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeconv.core.backends.onnxruntime import OnnxRuntimeBackend
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    backend_class = OnnxRuntimeBackend  # a runner on another ONNX Runtime backend (qnn) names its own
    accepted_options = OnnxRuntimeBackend.accepted_options

    def load(self) -> None:
        self.backend = self.backend_class(self.artifact, self.threads, **self.options)
        self.session = self.backend.session
        self.inputs = [TensorSpec(e["name"], e["shape"], e["type"]) for e in self.backend.inputs]
        self.outputs = [TensorSpec(e["name"], e["shape"], e["type"]) for e in self.backend.outputs]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        return self.backend.prepare(feed)

    def run(self, prepared: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.backend.run(prepared)
        self.last_s = self.backend.last_s
        return out

    def layer_profiler(self, feed: dict[str, np.ndarray]) -> Any:
        """Per-node kernel times from ONNX Runtime's profiler: the core's, so host and device time layers alike."""
        return self.backend.layer_profiler(feed)

    def info(self) -> dict[str, Any]:
        return self.backend.info()
