"""Qualcomm QNN target (Hexagon NPU, HTP backend) through ONNX Runtime's QNN execution provider, onnxruntime-qnn.

The toolchain lives in its own venv (``edgeconv toolchain install qnn``; docs/architecture.md, "NPU toolchains"): its
job (edgeconv/toolchains/jobs/qnn_job.py) makes QNN's QDQ ONNX (int8: uint8 activations and weights, or 16-bit
activations) or keeps the float graph for fp16, then the offline context binary for the profile's ``htp_arch``. The
bundle's model is the context ONNX (an EPContext node pointing at the ``*_qnn.bin`` beside it), run by the ``qnn``
runner (edgeconv/runners/qnn.py) on onnxruntime-qnn's HTP backend: on the device the NPU, on x86-64 QNN's HTP emulator,
so every figure measured here is labelled "host emulation on the QNN HTP emulator, not the device". Any node the QNN
EP does not take (it would run on the CPU EP) is refused, named, at convert time (exit 4).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv import toolchains
from edgeconv.errors import ConversionFailed, PreflightError
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions

TOOLCHAIN = "qnn"
JOB = "qnn_job.py"
JOB_TIMEOUT_S = 1800
JOB_DIR = ".qnn-job"  # scratch inside the bundle being built, removed after the job
QDQ_FILE = "model.qdq.onnx"
CONTEXT_FILE = "model_ctx.onnx"  # onnxruntime-qnn writes model_ctx_qnn.bin beside it
EMULATION_NOTE = "host emulation on the QNN HTP emulator, not the device"
# the label every table and report prints for a figure measured here (edgeconv.core.machine.where_label)
EMULATION_LABEL = EMULATION_NOTE + "; latency: device only"
LATENCY_NOTE = ("device only: QNN's HTP emulator on x86-64 runs 50-120x slower than the CPU; its timing says nothing about "
                "the Hexagon NPU")
# onnxruntime.quantization.CalibrationMethod members, the default first
CALIBRATION = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def device_settings(profile) -> dict[str, Any]:
    """The profile's Hexagon arch (and SoC model, which fp16 needs)."""
    dev = profile.raw.get("device", {})
    if not dev.get("htp_arch"):
        raise PreflightError(f"device profile {profile.name} lacks [device] htp_arch (the Hexagon arch the context binary "
                             "is built for)", hint=f"the profile is {profile.path}")
    return {"htp_arch": int(dev["htp_arch"]), "soc_model": dev.get("soc_model"), "chip": dev.get("chip")}


def save_feeds(path: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """Feeds as ``s<i>__<input name>`` arrays (the job's ``load_feeds`` reads them back)."""
    np.savez(path, **{f"s{i}__{name}": np.asarray(a) for i, feed in enumerate(feeds) for name, a in feed.items()})
    return path


class QnnTarget(Target):
    name = "qnn"
    precisions = ("int8", "fp16")
    dynamic_batch = False
    needs_calibration = ("int8",)
    calibration_methods = tuple(CALIBRATION)
    int16_activations = True  # QNN's 16-bit activations with 8-bit weights

    def check_options(self, profile, opts: TargetOptions) -> None:
        super().check_options(profile, opts)
        device_settings(profile)
        if opts.precision == "fp16" and not profile.raw.get("device", {}).get("soc_model"):
            raise PreflightError(f"device profile {profile.name} lacks [device] soc_model, which QNN's fp16 needs")
        toolchains.require(TOOLCHAIN)  # exit 3 with the install command, before any export

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        tc = toolchains.require(TOOLCHAIN)
        settings = device_settings(profile)
        scratch = workdir / JOB_DIR
        scratch.mkdir(parents=True, exist_ok=True)
        request = self._request(onnx_path, workdir, scratch, settings, opts, ctx)
        try:
            resp = toolchains.run_job(tc, JOB, request, workdir=scratch, timeout=JOB_TIMEOUT_S)
        except ConversionFailed as exc:
            ctx.failed_build_dir.mkdir(parents=True, exist_ok=True)
            kept = [shutil.copy2(p, ctx.failed_build_dir / p.name) for p in scratch.glob("qnn-*") if p.is_file()]
            raise ConversionFailed(exc.message.replace(str(scratch), str(ctx.failed_build_dir)), details=exc.details,
                                   hint=f"the job's files are kept in {ctx.failed_build_dir}" if kept else exc.hint) from exc
        shutil.copy2(scratch / "qnn-job.log", workdir / "qnn-job.log")
        shutil.rmtree(scratch, ignore_errors=True)
        return self._conversion(onnx_path, profile, opts, settings, resp, tc)

    def _request(self, onnx_path: Path, workdir: Path, scratch: Path, settings: dict[str, Any], opts: TargetOptions,
                 ctx: TargetContext) -> dict[str, Any]:
        method = ctx.quant.calibration or "minmax"
        if method not in CALIBRATION:
            raise ConversionFailed(f"unknown calibration method {method!r} (QNN's quantizer has {', '.join(CALIBRATION)})")
        request = {"onnx": str(onnx_path), "outdir": str(workdir), "precision": opts.precision,
                   "htp_arch": settings["htp_arch"], "soc_model": settings["soc_model"],
                   "qdq_name": QDQ_FILE, "context_name": CONTEXT_FILE,
                   "activations": "uint16" if ctx.quant.activations == "int16" else "uint8",
                   "calibration_method": CALIBRATION[method],
                   "check_samples": str(save_feeds(scratch / "check.npz", [ctx.reference_inputs]))}
        if opts.precision == "int8":
            if not ctx.calibration:
                raise ConversionFailed("QNN int8 needs calibration samples (--calib DATA, or --data)")
            request["calibration"] = str(save_feeds(scratch / "calibration.npz", ctx.calibration))
        return request

    def _conversion(self, onnx_path: Path, profile, opts: TargetOptions, settings: dict[str, Any], resp: dict[str, Any],
                    tc: toolchains.Toolchain) -> Conversion:
        checks = resp["checks"]
        qnn = {"htp_arch": settings["htp_arch"], "soc_model": settings["soc_model"], "chip": settings["chip"],
               "provider_options": resp["provider_options"], "context_binaries": resp["context_binaries"],
               "nodes_by_ep": resp["assignment"], "cpu_ep_nodes": resp["cpu_nodes"],
               "emulator_check": {**checks, "what": "the check samples on QNN's HTP emulator (this context binary, CPU "
                                                    "fallback disabled) against ONNX Runtime's CPU EP on the same graph",
                                  "emulator_ms_per_run_note": "this host's emulator, not a device latency"}}
        extra: dict[str, Any] = {"toolchain": tc.record(), "qnn": qnn, "host_emulation": True,
                                 "host_emulation_note": EMULATION_NOTE, "host_emulation_label": EMULATION_LABEL,
                                 "latency_device_only": LATENCY_NOTE,
                                 "runner_options": {}}
        if "quantization" in resp:
            extra["quantization"] = resp["quantization"]
        artifacts = [Artifact(onnx_path.name, "canonical-onnx", "fp32"),
                     Artifact(resp["context_onnx"], "model", opts.precision, profile.runner, extra),
                     *(Artifact(b, "context-binary", opts.precision) for b in resp["context_binaries"])]
        if opts.precision == "int8":
            artifacts.append(Artifact(QDQ_FILE, "qdq-onnx", "int8"))
        artifacts.append(Artifact("qnn-job.log", "log", opts.precision))
        cpu_free = {"kind": "qnn-ep-assignment", "name": "every node on the QNN EP", "ok": not resp["cpu_nodes"],
                    "nodes_by_ep": resp["assignment"], "htp_arch": settings["htp_arch"]}
        notes = [f"QNN context binary for htp_arch {settings['htp_arch']}: {resp['qnn_nodes']} node(s) on the QNN EP, none "
                 f"on the CPU EP; emulator vs CPU EP max abs {checks['max_abs_vs_cpu_ep']:.3g} on {checks['runs']} run(s)",
                 f"latency: {LATENCY_NOTE}"]
        return Conversion(artifacts, checks=[cpu_free], notes=notes)
