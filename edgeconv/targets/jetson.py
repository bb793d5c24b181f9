"""Jetson target: TensorRT-ready bundles. The engine itself is built on the Jetson (`edgeconv build`), because an
engine only runs on the GPU and TensorRT version it was built with.

Host side (here): a TensorRT-clean ONNX (constants folded by onnxslim, shapes inferred, opset within the
profile's parser), a preflight against the profile's TensorRT (unsupported ops, opset, int8/DLA on devices
without them), explicit symmetric per-channel Q/DQ for int8 (onnxruntime.quantization: no calibrators, which
TensorRT 10.1+ deprecates), a `build.sh` with the equivalent trtexec line, and a host preview on ONNX Runtime
that every report labels "host emulation, not device".
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import ConversionFailed, PreflightError
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions
from edgeconv.targets.qdq import CALIBRATION_METHODS, quantize_qdq

DEFAULT_WORKSPACE_MB = 1024


def trt_shapes(inputs: dict[str, list], dynamic_batch: bool, max_batch: int) -> dict[str, dict[str, list[int]]] | None:
    """min/opt/max shapes per input for a dynamic batch (opt = max: the batch the engine is tuned for)."""
    if not dynamic_batch:
        return None
    out = {}
    for name, shape in inputs.items():
        rest = [int(d) for d in shape[1:]]
        out[name] = {"min": [1, *rest], "opt": [max_batch, *rest], "max": [max_batch, *rest]}
    return out


def trtexec_command(build: dict[str, Any], trtexec: str = "trtexec") -> list[str]:
    """The trtexec equivalent of `edgeconv build` for this bundle (argument list)."""
    cmd = [trtexec, f"--onnx={build['onnx']}", f"--saveEngine={build['engine']}", f"--timingCacheFile={build['timing_cache']}",
           f"--memPoolSize=workspace:{build['workspace_mb']}M"]
    if build["fp16"]:
        cmd.append("--fp16")
    if build["int8"]:
        cmd.append("--int8")  # explicit quantization: scales come from the graph's Q/DQ nodes, no calibration
    if build.get("dla_core") is not None:
        cmd += [f"--useDLACore={build['dla_core']}", "--allowGPUFallback"]
    if build.get("shapes"):
        for key in ("min", "opt", "max"):
            joined = ",".join(f"{n}:{'x'.join(map(str, s[key]))}" for n, s in build["shapes"].items())
            cmd.append(f"--{key}Shapes={joined}")
    return cmd


def build_script(build: dict[str, Any], trtexec: str) -> str:
    line = " ".join(shlex.quote(a) for a in trtexec_command(build, "${TRTEXEC:-%s}" % trtexec))
    line = line.replace(shlex.quote("${TRTEXEC:-%s}" % trtexec), '"${TRTEXEC:-%s}"' % trtexec)
    return (
        "#!/bin/sh\n"
        "# Build the TensorRT engine for this bundle on the Jetson itself (an engine is tied to the GPU and the\n"
        "# TensorRT version that built it). `edgeconv build .` does the same through the TensorRT Python API and\n"
        "# records the device in manifest.json; this is the trtexec equivalent.\n"
        "set -e\n"
        'cd "$(dirname "$0")"\n'
        f"{line}\n"
    )


class JetsonTarget(Target):
    name = "jetson"
    precisions = ("fp32", "fp16", "int8")
    dynamic_batch = True
    needs_calibration = ("int8",)
    float_fallback = True  # onnxruntime.quantization's nodes_to_exclude
    calibration_methods = tuple(CALIBRATION_METHODS)
    int16_activations = False  # TensorRT takes int8 and fp8/fp4 Q/DQ, not 16-bit activations: the guard says so

    def check_options(self, profile, opts: TargetOptions) -> None:
        device = profile.raw.get("device", {})
        problems = []
        if opts.precision == "int8" and not device.get("fast_int8", False):
            problems.append(f"{profile.name} has no fast int8 (compute capability {device.get('compute_capability', '?')}); "
                            "use --precision fp16")
        if opts.precision == "fp16" and not device.get("fast_fp16", False):
            problems.append(f"{profile.name} has no fast fp16; use --precision fp32")
        dla = opts.extra.get("dla_core")
        if dla is not None:
            cores = int(device.get("dla_cores", 0))
            if cores == 0:
                problems.append(f"{profile.name} has no DLA cores; drop --dla-core")
            elif not 0 <= dla < cores:
                problems.append(f"{profile.name} has {cores} DLA core(s): --dla-core must be 0..{cores - 1}")
            if opts.precision == "fp32":
                problems.append("the DLA runs fp16 or int8, not fp32")
            if opts.dynamic_batch:
                problems.append("the DLA needs static shapes; drop --dynamic-batch")
        if opts.extra.get("max_batch") is not None and not opts.dynamic_batch:
            problems.append("--max-batch goes with --dynamic-batch")
        if problems:
            raise PreflightError(f"target {profile.name} refuses the options:\n  - " + "\n  - ".join(problems))
        super().check_options(profile, opts)

    def graph_problems(self, proto, profile, opts: TargetOptions) -> list[str]:
        problems = super().graph_problems(proto, profile, opts)
        unsupported = set(profile.raw.get("tensorrt", {}).get("unsupported_ops", []))
        found: dict[str, list[str]] = {}
        for node in proto.graph.node:
            if node.domain in ("", "ai.onnx") and node.op_type in unsupported:
                found.setdefault(node.op_type, []).append(node.name or "(unnamed)")
            elif node.domain not in ("", "ai.onnx"):
                found.setdefault(f"{node.domain}.{node.op_type}", []).append(node.name or "(unnamed)")
        trt = profile.raw.get("device", {}).get("tensorrt", "?")
        for op, names in sorted(found.items()):
            problems.append(f"op {op} ({', '.join(names[:5])}{', …' if len(names) > 5 else ''}) is not supported by the "
                            f"TensorRT {trt} ONNX parser")
        return problems

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        import onnx

        clean = workdir / "model_trt.onnx"
        notes = self._clean(onnx_path, clean)
        device = profile.raw.get("device", {})
        precision = opts.precision
        extra: dict[str, Any] = {"host_emulation": True, "tensorrt_cleanup": notes}
        artifacts = [Artifact(onnx_path.name, "canonical-onnx", "fp32")]
        engine_onnx = clean.name
        if precision == "int8":
            qdq = workdir / "model_int8_qdq.onnx"
            extra["quantization"] = self._quantize(clean, qdq, ctx)
            engine_onnx = qdq.name
            artifacts.append(Artifact(clean.name, "tensorrt-onnx-fp32", "fp32"))
            artifacts.append(Artifact(qdq.name, "model", "int8", "onnxruntime", extra))
            extra["host_emulation_note"] = "Q/DQ graph run by ONNX Runtime's int8 kernels on this host"
        else:
            artifacts.append(Artifact(clean.name, "model", precision, "onnxruntime", extra))
            extra["host_emulation_note"] = ("fp32 graph run by ONNX Runtime on this host; TensorRT applies fp16 when it builds "
                                            "the engine on the device" if precision == "fp16"
                                            else "fp32 graph run by ONNX Runtime on this host")
        inputs = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in onnx.load(str(clean)).graph.input}
        max_batch = int(opts.extra.get("max_batch") or 8)
        build = {
            "format": "tensorrt-engine", "built": False, "onnx": engine_onnx, "engine": "model.engine",
            "timing_cache": "timing.cache", "fp16": precision in ("fp16", "int8"), "int8": precision == "int8",
            "dla_core": opts.extra.get("dla_core"), "workspace_mb": int(opts.extra.get("workspace_mb") or DEFAULT_WORKSPACE_MB),
            "shapes": trt_shapes(inputs, opts.dynamic_batch, max_batch),
            "for_device": {k: device.get(k) for k in ("jetpack", "l4t", "tensorrt", "cuda", "compute_capability")},
            "how": "on the Jetson: `edgeconv build BUNDLE` (TensorRT Python API) or `sh BUNDLE/build.sh` (trtexec)",
        }
        extra["device_build"] = build
        trtexec = profile.raw.get("tensorrt", {}).get("trtexec", "trtexec")
        script = workdir / "build.sh"
        script.write_text(build_script(build, trtexec))
        script.chmod(0o755)
        artifacts.append(Artifact(script.name, "build-script", precision))
        return Conversion(artifacts)

    @staticmethod
    def _clean(src: Path, dest: Path) -> list[str]:
        """Fold constants and simplify with onnxslim, then re-infer shapes; falls back to the graph as it is
        only when onnxslim is absent, and says so."""
        import onnx

        from edgeconv.lazy import version_of

        model = onnx.load(str(src))
        notes = []
        if version_of("onnxslim"):
            import onnxslim

            try:
                model = onnxslim.slim(model)
                notes.append(f"constants folded and graph simplified by onnxslim {version_of('onnxslim')}")
            except Exception as exc:
                raise ConversionFailed(f"onnxslim could not simplify the graph for TensorRT: "
                                       f"{type(exc).__name__}: {exc}") from exc
        else:
            notes.append("onnxslim not installed: graph kept as exported (pip install 'edgeconv[jetson]' to fold constants)")
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        onnx.checker.check_model(model)
        onnx.save(model, str(dest))
        return notes

    @staticmethod
    def _quantize(src: Path, dest: Path, ctx: TargetContext) -> dict[str, Any]:
        """Explicit int8: symmetric (zero point 0) activations, symmetric per-channel weights, Q/DQ pairs that
        TensorRT fuses; bias left in float (TensorRT quantizes it itself)."""
        import onnx

        options = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "AddQDQPairToWeight": True,
                   "DedicatedQDQPair": False}
        # the int8 guard's float layers: nodes the quantizer leaves without Q/DQ (TensorRT runs them in fp16/fp32)
        info = quantize_qdq(src, dest, ctx.calibration, exclude=[n for layer in ctx.float_layers for n in layer["nodes"]],
                            settings=ctx.quant, symmetric_activations=True, extra_options=options,
                            reuse_dir=ctx.reuse_dir)
        q = onnx.load(str(dest))
        zero_points = [i for i in q.graph.initializer if "zero_point" in i.name]
        nonzero = [i.name for i in zero_points if np.any(onnx.numpy_helper.to_array(i))]
        if nonzero:
            raise ConversionFailed(f"the Q/DQ graph has non-zero zero points ({nonzero[:3]}); TensorRT needs symmetric int8")
        return {**info, "per_channel": True,
                "quantize_linear_nodes": sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")}
