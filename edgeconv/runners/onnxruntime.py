"""ONNX Runtime runner (CPU execution provider): the device runner's OnnxRuntimeBackend behind edgeconv's runner
interface, so the host and the device run ONNX models through the same code."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeconv.device.edgeconv_runner import OnnxRuntimeBackend
from edgeconv.runners.base import Runner, runner_errors
from edgeconv.specs import TensorSpec


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    accepted_options = OnnxRuntimeBackend.accepted_options

    def load(self) -> None:
        with runner_errors():
            self.backend = OnnxRuntimeBackend(self.artifact, self.threads, **self.options)
        self.session = self.backend.session
        self.inputs = [TensorSpec(e["name"], e["shape"], e["type"]) for e in self.backend.inputs]
        self.outputs = [TensorSpec(e["name"], e["shape"], e["type"]) for e in self.backend.outputs]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        with runner_errors():
            return self.backend.prepare(feed)

    def run_prepared(self, prepared: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.backend.run(prepared)
        self.last_inference_s = self.backend.last_s
        return out

    def layer_profiler(self, feed: dict[str, np.ndarray]) -> Any:
        """Per-node kernel times from ONNX Runtime's profiler: the device runner's, so host and device time layers alike."""
        return self.backend.layer_profiler(feed)

    def info(self) -> dict[str, Any]:
        return self.backend.info()
