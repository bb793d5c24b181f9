"""ONNX Runtime runner (CPU execution provider)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgeconv.errors import BadInput
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


class OnnxRuntimeRunner(Runner):
    runtime = "onnxruntime"
    accepted_options = ("providers",)

    def load(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = self.options.get("providers") or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(self.artifact), so, providers=providers)
        except Exception as exc:
            raise BadInput(f"ONNX Runtime cannot load {self.artifact}: {exc}") from exc
        self.inputs = [self._spec(a) for a in self.session.get_inputs()]
        self.outputs = [self._spec(a) for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]

    @staticmethod
    def _spec(arg):
        dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                 "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
                 "tensor(uint8)": "uint8", "tensor(bool)": "bool"}.get(arg.type, arg.type)
        shape = [d if isinstance(d, int) else (d or None) for d in arg.shape]
        return TensorSpec(arg.name, shape, dtype)

    def run_prepared(self, prepared: dict[str, np.ndarray]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        out = self.session.run(self._output_names, prepared)
        self.last_inference_s = time.perf_counter() - t0
        return out

    def info(self) -> dict[str, Any]:
        import onnxruntime as ort

        so = self.session.get_session_options()
        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "providers": self.session.get_providers(),
            "device": "CPU",
            "threads": so.intra_op_num_threads or "default (one per physical core)",
            "precision": "as stored in the graph",
        }

