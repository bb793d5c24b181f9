"""ONNX Runtime runner (CPU execution provider): the device runner's OnnxRuntimeBackend behind edgeconv's runner
interface, so the host and the device run ONNX models through the same code."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeconv.device.edgeconv_runner import BadRequest, MissingRuntime, OnnxRuntimeBackend
from edgeconv.errors import BadInput, MissingDependency
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    accepted_options = OnnxRuntimeBackend.accepted_options

    def load(self) -> None:
        try:
            self.backend = OnnxRuntimeBackend(self.artifact, self.threads, **self.options)
        except MissingRuntime as exc:
            raise MissingDependency(exc.message, hint="pip install onnxruntime") from exc
        except BadRequest as exc:
            raise BadInput(exc.message) from exc
        self.session = self.backend.session
        self.inputs = [TensorSpec(e["name"], e["shape"], e["type"]) for e in self.backend.inputs]
        self.outputs = [TensorSpec(e["name"], e["shape"], e["type"]) for e in self.backend.outputs]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        try:
            return self.backend.prepare(feed)
        except BadRequest as exc:
            raise BadInput(exc.message) from None

    def run_prepared(self, prepared: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = self.backend.run(prepared)
        self.last_inference_s = self.backend.last_s
        return out

    def info(self) -> dict[str, Any]:
        return self.backend.info()
