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


def trtexec_command(build: dict[str, Any], trtexec: str = "trtexec", strongly_typed: bool = False) -> list[str]:
    """The trtexec equivalent of `edgeconv build` for this bundle (argument list). TensorRT 10 (weakly typed network):
    ``--fp16``/``--int8`` with the fp32 layers pinned by precision constraints. ``strongly_typed`` (TensorRT 11, which
    drops those flags; TensorRT 10 takes it too): the bundle's strongly typed graph, whose types are the precisions."""
    cmd = [trtexec, f"--onnx={build['onnx']}", f"--saveEngine={build['engine']}", f"--timingCacheFile={build['timing_cache']}",
           f"--memPoolSize=workspace:{build['workspace_mb']}M"]
    if strongly_typed:  # the graph's own types rule: no --fp16/--int8 (TensorRT 11 drops them)
        cmd[1] = f"--onnx={build['strongly_typed']['onnx']}"
        cmd.append("--stronglyTyped")
    if build["fp16"] and not strongly_typed:
        cmd.append("--fp16")
    if build["int8"] and not strongly_typed:
        cmd.append("--int8")  # explicit quantization: scales come from the graph's Q/DQ nodes, no calibration
    if build.get("fp32_layers") and not strongly_typed:
        joined = ",".join(f"{n}:fp32" for n in build["fp32_layers"])
        cmd += [f"--layerPrecisions={joined}", f"--layerOutputTypes={joined}", "--precisionConstraints=obey"]
    if build.get("dla_core") is not None:
        cmd += [f"--useDLACore={build['dla_core']}", "--allowGPUFallback"]
    if build.get("shapes"):
        for key in ("min", "opt", "max"):
            joined = ",".join(f"{n}:{'x'.join(map(str, s[key]))}" for n, s in build["shapes"].items())
            cmd.append(f"--{key}Shapes={joined}")
    return cmd


def _line(build: dict[str, Any], trtexec: str, strongly_typed: bool) -> str:
    line = " ".join(shlex.quote(a) for a in trtexec_command(build, "${TRTEXEC:-%s}" % trtexec, strongly_typed))
    return line.replace(shlex.quote("${TRTEXEC:-%s}" % trtexec), '"${TRTEXEC:-%s}"' % trtexec)


STRONGLY_TYPED_SCRIPT = "build_strongly_typed.sh"


def build_script(build: dict[str, Any], trtexec: str, strongly_typed: bool = False) -> str:
    """build.sh (TensorRT 10's weakly typed line; on TensorRT 11 it hands over to the strongly typed script), or with
    ``strongly_typed`` that script."""
    head = (
        "#!/bin/sh\n"
        "# Build the TensorRT engine for this bundle on the Jetson itself (an engine is tied to the GPU and the\n"
        "# TensorRT version that built it). `edgeconv build .` does the same through the TensorRT Python API and\n"
        "# records the device in manifest.json; this is the trtexec equivalent.\n"
        "set -e\n"
        'cd "$(dirname "$0")"\n'
    )
    if strongly_typed or not build.get("strongly_typed"):
        return head + _line(build, trtexec, strongly_typed) + "\n"
    fp32 = ", ".join(build.get("fp32_layers") or []) or "none"
    return head + (
        f"# Targets the TensorRT {build['tensorrt_line']} line: a weakly typed network with --fp16/--int8 (layers kept in\n"
        f"# fp32 by precision constraints: {fp32}). TensorRT 11 drops those flags: there (or with\n"
        f"# EDGECONV_STRONGLY_TYPED=1) {STRONGLY_TYPED_SCRIPT} builds the strongly typed graph\n"
        f"# {build['strongly_typed']['onnx']}, whose casts keep the same layers in fp32.\n"
        'TRT_MAJOR="${TRT_MAJOR:-$(python3 -c \'import tensorrt; print(tensorrt.__version__.split(".")[0])\' 2>/dev/null '
        '|| echo %s)}"\n' % build["tensorrt_line"]
        + 'if [ "${EDGECONV_STRONGLY_TYPED:-0}" = 1 ] || [ "$TRT_MAJOR" -ge 11 ]; then\n'
        f'  exec sh "./{STRONGLY_TYPED_SCRIPT}"\nfi\n' + _line(build, trtexec, False) + "\n")


class JetsonTarget(Target):
    name = "jetson"
    precisions = ("fp32", "fp16", "int8")
    dynamic_batch = True
    needs_calibration = ("int8",)
    float_fallback = True  # onnxruntime.quantization's nodes_to_exclude
    fp16_float_layers = True  # fp16: TensorRT layer precision constraints and a strongly typed graph (_typed_build)
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
        build.update(self._typed_build(clean, workdir, precision, engine_onnx, ctx, device))
        extra["device_build"] = build
        trtexec = profile.raw.get("tensorrt", {}).get("trtexec", "trtexec")
        script, typed = workdir / "build.sh", workdir / STRONGLY_TYPED_SCRIPT
        script.write_text(build_script(build, trtexec))
        typed.write_text(build_script(build, trtexec, strongly_typed=True))
        for s in (script, typed):
            s.chmod(0o755)
        artifacts += [Artifact(script.name, "build-script", precision),
                      Artifact(typed.name, "build-script-strongly-typed", precision)]
        if precision == "fp16":
            artifacts.append(Artifact(build["strongly_typed"]["onnx"], "tensorrt-onnx-strongly-typed", "fp16"))
        return Conversion(artifacts)

    @staticmethod
    def _typed_build(clean: Path, workdir: Path, precision: str, engine_onnx: str, ctx: TargetContext,
                     device: dict[str, Any]) -> dict[str, Any]:
        """The TensorRT line the bundle targets, the layers kept in fp32 (fp16 --fallback auto: TensorRT's layers are
        named after the ONNX nodes) and the strongly typed graph TensorRT 11 builds (fp16: the fp32 layers cast in the
        graph, edgeconv/targets/half.py; int8: the Q/DQ graph, the rest fp32; fp32: the graph itself)."""
        import onnx

        line = str(device.get("tensorrt") or "10").split(".")[0]
        present = {n.name for n in onnx.load(str(clean), load_external_data=False).graph.node}
        wanted = [n for layer in ctx.float_layers for n in layer["nodes"]] if precision == "fp16" else []
        fp32 = [n for n in wanted if n in present]
        typed = engine_onnx
        if precision == "fp16":
            from edgeconv.targets.half import half_with_fp32_nodes

            typed = "model_trt_fp16.onnx"
            onnx.save(half_with_fp32_nodes(clean, fp32), str(workdir / typed))
        out: dict[str, Any] = {"tensorrt_line": line, "fp32_layers": fp32,
                               "strongly_typed": {"onnx": typed, "how": "trtexec --stronglyTyped / "
                                                  "NetworkDefinitionCreationFlag.STRONGLY_TYPED: no --fp16/--int8 flags"}}
        if len(fp32) < len(wanted):
            out["fp32_layers_missing"] = [n for n in wanted if n not in present]  # onnxslim merged or renamed them
        return out

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
