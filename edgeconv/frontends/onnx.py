"""ONNX sources: ``.onnx``, with or without external data. The reference runtime is ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeconv.errors import BadInput
from edgeconv.frontends.base import ExportRecord, LoadOptions, SourceModel
from edgeconv.lazy import version_of
from edgeconv.onnx_tools import TWO_GB, io_specs, load_onnx, opset_of
from edgeconv.specs import TensorSpec


class OnnxSource(SourceModel):
    framework = "onnx"
    format = "onnx"
    frontend = "OnnxFromOnnx"
    layout_default = "NCHW"

    def __init__(self, path: Path, options: LoadOptions):
        super().__init__(path)
        self.proto = load_onnx(path)
        self.inputs, self.outputs = io_specs(self.proto, self.layout_default)
        self.default_opset = opset_of(self.proto)
        self._session = None

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        if self._session is None:
            try:
                self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            except Exception as exc:
                raise BadInput(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        return self._session.run(None, {s.name: feed[s.name] for s in self.inputs})

    def export_onnx(self, dest: Path, *, inputs: list[TensorSpec], opset: int | None, dynamic_batch: bool) -> ExportRecord:
        import onnx

        from edgeconv.onnx_tools import set_input_shapes

        have = opset_of(self.proto)
        if opset and opset != have:
            from onnx import version_converter

            try:
                proto = version_converter.convert_version(self.proto, opset)
            except Exception as exc:
                raise BadInput(f"cannot convert {self.path} from opset {have} to {opset}: {exc}") from exc
        else:
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
        set_input_shapes(proto, inputs, dynamic_batch)
        big = proto.ByteSize() > TWO_GB
        onnx.save(proto, str(dest), save_as_external_data=big, location=dest.name + ".data" if big else None)
        return ExportRecord(exporter=f"onnx {onnx.__version__} (copy)", opset=opset or have)

    def versions(self) -> dict[str, str | None]:
        return {"onnxruntime": version_of("onnxruntime")}

