"""``.tflite`` files as sources: the file itself on LiteRT is the reference (a float ``.tflite`` of a model is what its
int8 twin is checked against), and a full-int8 file is what the TFLite-family targets take as it is (``edgeconv
convert model.tflite --target coral|ethos-u|tflite``, edgeconv/wrap.py). There is no ONNX export from a ``.tflite``:
re-quantizing or converting it elsewhere needs the model it was made from. See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import BadInput
from edgeconv.frontends.base import ExportRecord, LoadOptions, SourceModel
from edgeconv.specs import TensorSpec, guess_layout

TFLITE_IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of TFLite's schema, at bytes 4..8
# ops that do not compute on their float inputs' values: the QUANTIZE / DEQUANTIZE at the edges of a float-I/O integer
# model, and SHAPE (it reads a tensor's shape: ai-edge-quantizer leaves a Keras Reshape's SHAPE of the float input)
NOT_COMPUTING = ("QUANTIZE", "DEQUANTIZE", "SHAPE")


def check_tflite_file(path: Path) -> None:
    """A ``.tflite`` must be a TFLite flatbuffer: its file identifier says so before any runtime opens it."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        found = head[4:8] if len(head) >= 8 else b""
        raise BadInput(f"{path} is not a TFLite flatbuffer (its file identifier is {found!r}, not {TFLITE_IDENTIFIER!r})",
                       hint="a .tflite comes from TFLiteConverter, onnx2tf, ai-edge-torch …; check that the download or "
                            "copy is complete and that the file is not another format renamed")


def tflite_precision(path: Path) -> str:
    """What a TFLite file computes in, read from its ops and tensors: ``int8`` (every op but those of NOT_COMPUTING
    on integer tensors), ``int8-dynamic`` (int8 weights, float activations), ``fp16`` (float16 weights),
    else ``fp32``."""
    from edgeconv.targets.tflite import tflite_graph

    ops, tensors, _, _ = tflite_graph(path)
    dtypes = {tensors[i]["dtype"] for op in ops for i in op["inputs"] + op["outputs"]}
    computing = [op for op in ops if op["op"] not in NOT_COMPUTING]
    in_float = [op for op in computing
                if any(tensors[i]["dtype"] in ("float32", "float16") for i in op["inputs"] + op["outputs"])]
    if computing and dtypes & {"int8", "uint8"} and not in_float:
        return "int8"
    if "int8" in dtypes:
        return "int8-dynamic"
    return "fp16" if "float16" in dtypes else "fp32"


def quantization(backend) -> dict[str, Any]:
    """The quantization parameters of a LiteRT backend's quantized inputs and outputs, as the file has them: float
    data given for them is quantized with these (and outputs dequantized)."""
    return {e["name"]: {"dtype": e["dtype"].name, "scale": e["scale"], "zero_point": e["zero"]}
            for e in backend.inputs + backend.outputs if e["scale"]}


def input_ranges(backend) -> dict[str, tuple[float, float]]:
    """The float range each input of an int8 file is quantized over: its own scale and zero point for an integer input,
    else those of the QUANTIZE op a float input feeds (a float-I/O int8 model). Random reference inputs are drawn there:
    standard-normal data far outside the calibrated range measures clipping, not the model."""
    interp = backend.interp
    tensors = {int(t["index"]): t for t in interp.get_tensor_details()}
    # _get_ops_details is the interpreter's own op listing; it has no public twin (as in targets/tflite.py)
    quantize = {int(op["inputs"][0]): int(op["outputs"][0]) for op in interp._get_ops_details()
                if op["op_name"] == "QUANTIZE" and len(op["inputs"]) and len(op["outputs"])}
    out = {}
    for e in backend.inputs:
        t = tensors[e["index"]] if e["scale"] else tensors.get(quantize.get(e["index"], -1))
        scale, zero = (t["quantization"] if t is not None else (0.0, 0))
        if scale:
            info = np.iinfo(np.dtype(t["dtype"]))
            out[e["name"]] = (float((info.min - zero) * scale), float((info.max - zero) * scale))
    return out


class TfliteSource(SourceModel):
    framework = "litert"
    format = "tflite"
    frontend = "TfliteFile"
    layout_default = "NHWC"

    def __init__(self, path: Path, options: LoadOptions | None = None):
        from edgeconv.runners.litert import LiteRtRunner

        super().__init__(path)
        check_tflite_file(path)
        try:
            self.runner = LiteRtRunner(path)
        except ValueError as exc:  # several signatures: the interpreter's signature runner needs one
            raise BadInput(f"{path} has no single signature LiteRT can run by name: {exc}",
                           hint="re-export it with the one signature to run (TFLiteConverter.from_saved_model / "
                                "from_keras_model)") from exc
        self.inputs = [TensorSpec(s.name, s.shape, s.dtype, guess_layout(s.shape, "NHWC")) for s in self.runner.inputs]
        self.outputs = [TensorSpec(s.name, s.shape, s.dtype, None) for s in self.runner.outputs]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from edgeconv.data import run_batched

        return run_batched(self.runner.infer, {s.name: feed[s.name] for s in self.inputs}, self.runner.fixed_batch())

    def export_onnx(self, dest: Path, *, inputs: list[TensorSpec], opset: int | None, dynamic_batch: bool) -> ExportRecord:
        raise BadInput(f"{self.path.name} is a .tflite file: edgeconv takes it as it is to the TFLite-family targets "
                       "(tflite, coral, ethos-u) but cannot turn it into ONNX for other targets",
                       hint="convert the model it was made from (.keras, SavedModel, .pt2, .onnx) for other targets")

    def versions(self) -> dict[str, str | None]:
        info = self.runner.info()
        return {"litert": info.get("version")}
