"""LiteRT (TFLite) runner: ai-edge-litert's Interpreter, XNNPACK on (LiteRT's default CPU path).

It speaks the source model's terms: tensors by the manifest's names, in the source layout (the artifact's
NHWC tensors are transposed back and forth), float in and out (int8/uint8 tensors are quantized and
dequantized with their own scale and zero point). Latency is the time of ``invoke()``. The work is done by
the device runner's LiteRtBackend, the same code that runs on a phone or board.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.device.edgeconv_runner import LiteRtBackend
from edgeconv.errors import BadInput
from edgeconv.lazy import version_of
from edgeconv.runners.base import Runner, runner_errors
from edgeconv.specs import TensorSpec


def signature_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of the default signature: name, shape, dtype, tensor index, quantization."""
    b = _backend(path)
    rows = lambda entries: [{"name": e["name"], "shape": list(b.interp.get_tensor_details()[e["index"]]["shape"]),  # noqa: E731
                             "dtype": e["dtype"].name, "index": e["index"], "quantization": (e["scale"], e["zero"])} for e in entries]
    return rows(b.inputs), rows(b.outputs)


def _backend(path: Path, threads: int | None = None, **options) -> LiteRtBackend:
    with runner_errors():
        return LiteRtBackend(path, threads, **options)


class LiteRtRunner(Runner):
    runtime = "litert"
    accepted_options = ("tensor_names", "permutations", "io_layout", "delegate")

    @property
    def resizes_batch(self) -> bool:
        # the interpreter resizes input tensors; a delegate's compiled graph (Edge TPU) has its shapes baked in
        return not self.options.get("delegate")

    def load(self) -> None:
        layout = self.options.get("io_layout", "source")
        if layout not in ("source", "artifact"):
            raise BadInput(f"--io-layout must be source or artifact, not {layout!r}")
        self.backend = _backend(self.artifact, self.threads, **self.options)
        self.inputs = [TensorSpec(e["name"], e["shape"], "float32" if e["scale"] else e["dtype"].name) for e in self.backend.inputs]
        self.outputs = [TensorSpec(e["name"], e["shape"], "float32" if e["scale"] else e["dtype"].name) for e in self.backend.outputs]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        missing = [s.name for s in self.inputs if s.name not in feed]
        if missing:
            raise BadInput(f"no data for input(s) {missing}")
        return self.backend.prepare(feed)

    def run_prepared(self, prepared: Any) -> list[np.ndarray]:
        out = self.backend.run(prepared)
        self.last_inference_s = self.backend.last_s
        return out

    def fixed_batch(self) -> int | None:
        return self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None

    def info(self) -> dict[str, Any]:
        dtypes = sorted({e["dtype"].name for e in self.backend.inputs + self.backend.outputs})
        return {"runtime": "litert", "version": version_of("ai-edge-litert") or version_of("tflite-runtime"), "device": "CPU",
                "threads": self.threads or "default", **self.backend.info(), "precision": ", ".join(dtypes) + " I/O tensors",
                "io_layout": self.options.get("io_layout", "source")}
