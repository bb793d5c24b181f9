"""LiteRT (TFLite) runner: ai-edge-litert's Interpreter, XNNPACK on (LiteRT's default CPU path).

It speaks the source model's terms: tensors by the manifest's names, in the source layout (the artifact's
NHWC tensors are transposed back and forth), float in and out (int8/uint8 tensors are quantized and
dequantized with their own scale and zero point). Latency is the time of ``invoke()``. The work is done by
the core's LiteRtBackend, the same code that runs on a phone or board.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.backends.litert import LiteRtBackend
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


def signature_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of the default signature: name, shape, dtype, tensor index, quantization."""
    b = LiteRtBackend(path)
    details = b.interp.get_tensor_details()

    def rows(entries):
        return [{"name": e["name"], "shape": list(details[e["index"]]["shape"]), "dtype": e["dtype"].name, "index": e["index"],
                 "quantization": (e["scale"], e["zero"])} for e in entries]

    return rows(b.inputs), rows(b.outputs)


def _spec(e: dict[str, Any]) -> TensorSpec:
    return TensorSpec(e["name"], e["shape"], "float32" if e["scale"] else e["dtype"].name)  # quantized: float in and out


class LiteRtRunner(Runner):
    runtime = "litert"
    accepted_options = LiteRtBackend.accepted_options

    @property
    def resizes_batch(self) -> bool:
        return self.backend.resizes_batch  # the interpreter resizes; a delegate's compiled graph has its shapes baked in

    def load(self) -> None:
        self.backend = LiteRtBackend(self.artifact, self.threads, **self.options)
        self.inputs = [_spec(e) for e in self.backend.inputs]
        self.outputs = [_spec(e) for e in self.backend.outputs]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        return self.backend.prepare(feed)

    def run(self, prepared: Any) -> list[np.ndarray]:
        out = self.backend.run(prepared)
        self.last_s = self.backend.last_s
        return out

    def fixed_batch(self) -> int | None:
        return self.backend.fixed_batch()

    def info(self) -> dict[str, Any]:
        return self.backend.info()
