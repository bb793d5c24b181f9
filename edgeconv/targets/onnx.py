"""ONNX Runtime target: the checked ONNX graph as it is (fp32) or with fp16 weights and math (fp16)."""

from __future__ import annotations

from pathlib import Path

from edgeconv.errors import ConversionFailed
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions


class OnnxTarget(Target):
    name = "onnx"
    precisions = ("fp32", "fp16")
    dynamic_batch = True

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        if opts.precision == "fp32":
            return Conversion([Artifact(onnx_path.name, "model", "fp32", profile.runner)])
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        dest = workdir / "model_fp16.onnx"
        try:
            half = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
            onnx.save(half, str(dest))
        except Exception as exc:
            raise ConversionFailed(f"fp16 conversion of the ONNX graph failed: {type(exc).__name__}: {exc}") from exc
        # Inputs and outputs stay float32 so callers feed the same data; the graph computes in fp16.
        return Conversion([
            Artifact(onnx_path.name, "canonical-onnx", "fp32"),
            Artifact(dest.name, "model", "fp16", profile.runner, {"io_dtype": "float32", "converter": "onnxruntime.transformers.float16"}),
        ])
