"""ONNX Runtime target: the checked ONNX graph as it is (fp32), with fp16 weights and math (fp16), or quantized to a Q/DQ
graph (int8: asymmetric uint8 activations and symmetric per-channel int8 weights, ONNX Runtime's fast U8S8 path on
CPUs; onnxruntime.quantization.quantize_static on the calibration data)."""

from __future__ import annotations

from pathlib import Path

from edgeconv.errors import ConversionFailed
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions


class OnnxTarget(Target):
    name = "onnx"
    precisions = ("fp32", "fp16", "int8")
    dynamic_batch = True
    needs_calibration = ("int8",)
    float_fallback = True  # onnxruntime.quantization's nodes_to_exclude

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        if opts.precision == "fp32":
            return Conversion([Artifact(onnx_path.name, "model", "fp32", profile.runner)])
        if opts.precision == "int8":
            dest = workdir / "model_int8_qdq.onnx"
            info = quantize_qdq(onnx_path, dest, ctx.calibration, exclude=[n for layer in ctx.float_layers for n in layer["nodes"]])
            return Conversion([Artifact(onnx_path.name, "canonical-onnx", "fp32"),
                               Artifact(dest.name, "model", "int8", profile.runner, {"quantization": info})])
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


def quantize_qdq(src: Path, dest: Path, samples: list, *, exclude: list[str]) -> dict:
    """Static int8 Q/DQ for ONNX Runtime's CPU kernels: uint8 activations (asymmetric, per tensor), int8 weights
    (symmetric, per channel), MinMax calibration on ``samples``; ``exclude``: nodes left in float (the int8 guard)."""
    import logging

    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(samples)

        def get_next(self):
            return next(self._it, None)

    present = {n.name for n in onnx.load(str(src), load_external_data=False).graph.node}
    exclude = [n for n in exclude if n in present]
    quiet = logging.Filter()  # quantize_static advises its own pre-processing; the canonical graph is already folded
    quiet.filter = lambda record: "pre-processing before quantization" not in str(record.msg)
    logging.getLogger().addFilter(quiet)
    try:
        quantize_static(str(src), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or None)
    except Exception as exc:
        raise ConversionFailed(f"Q/DQ quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    finally:
        logging.getLogger().removeFilter(quiet)
    return {"tool": f"onnxruntime.quantization {ort_version} quantize_static (QDQ)", "activations": "uint8, asymmetric, per tensor",
            "weights": "int8, symmetric, per channel", "calibration_method": "MinMax", "samples": len(samples),
            "nodes_to_exclude": exclude}
