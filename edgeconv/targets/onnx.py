"""ONNX Runtime target: the checked ONNX graph as it is (fp32), with fp16 weights and math (fp16), or quantized to a Q/DQ
graph (int8: asymmetric uint8 activations and symmetric per-channel int8 weights, ONNX Runtime's fast U8S8 path on
CPUs; onnxruntime.quantization.quantize_static on the calibration data, edgeconv/targets/qdq.py)."""

from __future__ import annotations

from pathlib import Path

from edgeconv.errors import ConversionFailed
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions
from edgeconv.targets.qdq import CALIBRATION_METHODS, quantize_qdq


class OnnxTarget(Target):
    name = "onnx"
    precisions = ("fp32", "fp16", "int8")
    dynamic_batch = True
    needs_calibration = ("int8",)
    float_fallback = True  # onnxruntime.quantization's nodes_to_exclude
    calibration_methods = tuple(CALIBRATION_METHODS)
    int16_activations = True  # 16-bit Q/DQ (com.microsoft domain below opset 21); ONNX Runtime runs those ops in float
    fp16_float_layers = True  # fp16: convert_float_to_float16's node_block_list (edgeconv/convert/fp16_fallback.py)

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        if opts.precision == "fp32":
            return Conversion([Artifact(onnx_path.name, "model", "fp32", profile.runner)])
        if opts.precision == "int8":
            dest = workdir / "model_int8_qdq.onnx"
            info = quantize_qdq(onnx_path, dest, ctx.calibration,
                                exclude=[n for layer in ctx.float_layers for n in layer["nodes"]],
                                settings=ctx.quant, symmetric_activations=False, reuse_dir=ctx.reuse_dir)
            return Conversion([Artifact(onnx_path.name, "canonical-onnx", "fp32"),
                               Artifact(dest.name, "model", "int8", profile.runner, {"quantization": info})])
        import onnx

        from edgeconv.targets.half import half_with_fp32_nodes

        dest = workdir / "model_fp16.onnx"
        try:
            onnx.save(half_with_fp32_nodes(onnx_path, [n for layer in ctx.float_layers for n in layer["nodes"]]), str(dest))
        except Exception as exc:
            raise ConversionFailed(f"fp16 conversion of the ONNX graph failed: {type(exc).__name__}: {exc}") from exc
        # Inputs and outputs stay float32 so callers feed the same data; the graph computes in fp16.
        return Conversion([
            Artifact(onnx_path.name, "canonical-onnx", "fp32"),
            Artifact(dest.name, "model", "fp16", profile.runner,
                     {"io_dtype": "float32", "converter": "onnxruntime.transformers.float16"}),
        ])
