"""Sony IMX500 target (the Raspberry Pi AI Camera's on-sensor NPU): MCT post-training quantization → imxconv-pt.

edge-mdt (Model Compression Toolkit, the IMX500 target platform capabilities, imx500-converter) lives in its own venv
(``edgeconv toolchain install imx500``; docs/architecture.md, "NPU toolchains"); its job
(edgeconv/toolchains/jobs/imx500_job.py) quantizes the source's nn.Module with MCT on the calibration samples, exports
MCT's ONNX (opset 20, its quantizer ops) and runs ``imxconv-pt`` (Java) for ``packerOut.zip`` and the memory report.
A model that does not fit the sensor's 8 MB is refused (exit 4) with the converter's figure.

MCT quantizes a ``torch.nn.Module`` it traces with torch.fx: a state_dict with ``--model-class`` or a pickled module
(``--trust-pickle``). A TorchScript module cannot be traced and a ``.pt2`` program is aten-level (MCT quantizes
neither its weights nor folds its batch norms), so both are refused before any work, as are Keras and ONNX sources.

Nothing on x86 runs ``packerOut.zip`` (the camera-side packaging is Raspberry Pi OS only): the bundle's ``imx500``
runner (edgeconv/runners/imx500.py) runs the quantized ONNX on ONNX Runtime with mct_quantizers' custom ops in the
toolchain — simulated quantization, not the sensor. Latency: on the device only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv import toolchains
from edgeconv.core.text import shorten
from edgeconv.errors import ConversionFailed, MissingDependency, PreflightError
from edgeconv.onnx_tools import opset_of
from edgeconv.runners.imx500 import INDEX_FILE, LATENCY_NOTE, MODEL_FILE, SIM_LABEL, STORE_DIR
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions

TOOLCHAIN = "imx500"
JOB = "imx500_job.py"
JOB_TIMEOUT_S = 3600
MIN_OPSET = 15  # imxconv-pt refuses older opsets
EXPORT_OPSET = 20  # MCT's ONNX export with torch >= 2.4
MCT_SOURCES = ("torch-state-dict", "torch-pickled-module")


class Imx500Target(Target):
    name = "imx500"
    precisions = ("int8",)
    dynamic_batch = False
    needs_calibration = ("int8",)

    def check_source(self, source) -> None:
        if source.framework == "torch" and source.format in MCT_SOURCES:
            return
        why = {"torchscript": "a TorchScript module, which torch.fx cannot trace",
               "torch.export": "a torch.export program, whose aten-level graph MCT does not quantize (no weight "
                               "quantizers, batch norms left unfolded)"}.get(source.format, f"a {source.framework} model "
                                                                                          f"({source.format})")
        raise PreflightError(
            f"the IMX500 toolchain (MCT) quantizes a torch.nn.Module it traces with torch.fx; {source.path} is {why}",
            hint="give the PyTorch state_dict with --model-class pkg.module:Class (or path/to/file.py:Class), or a "
                 "pickled module of your own with --trust-pickle")

    def check_options(self, profile, opts: TargetOptions) -> None:
        super().check_options(profile, opts)
        toolchains.require(TOOLCHAIN)  # exit 3 with the install command, before any export
        if shutil.which("java") is None:
            raise MissingDependency("imxconv-pt (the IMX500 converter) needs Java, and no `java` is on PATH",
                                    hint="apt-get install default-jre-headless")

    def graph_problems(self, proto, profile, opts: TargetOptions) -> list[str]:
        problems = super().graph_problems(proto, profile, opts)
        opset = opset_of(proto)
        if opset < MIN_OPSET:
            problems.append(f"opset {opset}: imxconv-pt takes opset {MIN_OPSET} or newer (edgeconv writes the quantized "
                            f"ONNX at {EXPORT_OPSET}); drop --opset or give one ≥ {MIN_OPSET}")
        return problems

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        tc = toolchains.require(TOOLCHAIN)
        scratch = Path(tempfile.mkdtemp(prefix="edgeconv-imx500-"))
        store = workdir / STORE_DIR
        request = self._request(scratch, store, profile, ctx)
        resp = toolchains.run_job(tc, JOB, request, workdir=scratch, timeout=JOB_TIMEOUT_S)
        shutil.copyfile(scratch / "imx500-job.log", store / "imx500-job.log")
        memory = check_converter(resp["converter"])
        files = [f for f in resp["converter"]["files"] if (scratch / "imxconv" / f).is_file()]
        for f in files:
            shutil.copyfile(scratch / "imxconv" / f, store / f)
        index = {"model": MODEL_FILE, "precision": opts.precision, "made_by": SIM_LABEL, "onnx_io": resp["io"],
                 "inputs": [{"name": n, "shape": [None, *[int(d) for d in s[1:]]], "dtype": "float32"}
                            for n, s in ctx.input_shapes.items()],
                 "outputs": [{"name": n, "shape": [None, *[d if isinstance(d, int) else None for d in s[1:]]],
                              "dtype": "float32"} for n, s in ctx.output_shapes.items()]}
        (store / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
        shutil.rmtree(scratch, ignore_errors=True)
        return self._conversion(tc, resp, memory, files, opts, profile, request)

    def _request(self, scratch: Path, store: Path, profile, ctx: TargetContext) -> dict[str, Any]:
        """Write what the job reads: the source's module (torch.save, this process's own object) and the stacked
        calibration samples."""
        import torch

        if not ctx.calibration:
            raise PreflightError("int8 for the IMX500 needs calibration samples: pass --calib DATA.npz (or --data)")
        store.mkdir(parents=True, exist_ok=True)
        module = ctx.source_model.module
        with classes_findable(module):
            torch.save(module, scratch / "module.pt")
        names = list(ctx.input_shapes)
        stacked = {f"in{j}": stack_samples([s[n] for s in ctx.calibration], len(ctx.input_shapes[n]))
                   for j, n in enumerate(names)}
        np.savez(scratch / "calibration.npz", **stacked)
        dev = profile.raw.get("device", {})
        return {"action": "convert", "module": str(scratch / "module.pt"), "sys_path": code_roots(module),
                "calibration": str(scratch / "calibration.npz"), "inputs": names, "batch": dev.get("calibration_batch", 16),
                "onnx": str((store / MODEL_FILE).resolve()), "opset": EXPORT_OPSET,
                "tpc_version": str(dev.get("tpc_version", "4.0")), "outdir": str(scratch / "imxconv"),
                "converter_timeout": JOB_TIMEOUT_S / 2}

    def _conversion(self, tc: toolchains.Toolchain, resp: dict[str, Any], memory: dict[str, Any], files: list[str],
                    opts: TargetOptions, profile, request: dict[str, Any]) -> Conversion:
        versions = resp["versions"]
        imx = {"tpc_version": resp["tpc_version"], "calibration_samples": resp["calibration_samples"],
               "onnx_opset": resp["io"]["opset"], "memory": memory, "converter_seconds": round(resp["converter"]["seconds"], 2),
               "ptq_seconds": round(resp["ptq_seconds"], 2), "packer": f"{STORE_DIR}/packerOut.zip",
               "runs_on": "the Raspberry Pi AI Camera's IMX500 (packerOut.zip, packaged on Raspberry Pi OS with "
                          "imx500-package); the host only simulates the quantization"}
        extra: dict[str, Any] = {"converter": f"imx500-converter {versions.get('imx500-converter')} (MCT "
                                              f"{versions.get('model-compression-toolkit')})",
                                 "toolchain": tc.record(), "imx500": imx, "host_emulation": True,
                                 "host_emulation_note": f"{SIM_LABEL}; latency: {LATENCY_NOTE}",
                                 "latency_note": LATENCY_NOTE, "latency_device_only": LATENCY_NOTE,
                                 "runner_options": {}}
        artifacts = [Artifact(f"{STORE_DIR}/{MODEL_FILE}", "model", opts.precision, profile.runner, extra),
                     Artifact(f"{STORE_DIR}/{INDEX_FILE}", "runner-index", opts.precision),
                     *(Artifact(f"{STORE_DIR}/{f}", "imx500-" + ("packer" if f == "packerOut.zip" else
                                                                  "memory-report" if f.endswith("MemoryReport.json")
                                                                  else "log" if f.endswith(".log") else "converter-output"),
                                opts.precision) for f in files),
                     Artifact(f"{STORE_DIR}/imx500-job.log", "log", opts.precision)]
        fits = {"kind": "imx500-memory", "name": "fits the IMX500's on-chip memory", "ok": True, **memory}
        notes = [f"IMX500 memory report: {memory['summary']}",
                 f"quantized by MCT {versions.get('model-compression-toolkit')} (IMX500 TPC {resp['tpc_version']}) on "
                 f"{resp['calibration_samples']} calibration samples; packerOut.zip by imxconv-pt "
                 f"{versions.get('imx500-converter')}", f"parity and accuracy here: {SIM_LABEL}", f"latency: {LATENCY_NOTE}"]
        return Conversion(artifacts, checks=[fits], notes=notes)


def stack_samples(samples: list[np.ndarray], rank: int) -> np.ndarray:
    """One array of the calibration samples (each with its batch axis, or without one)."""
    arrays = [np.asarray(a, dtype=np.float32) for a in samples]
    return np.concatenate(arrays) if arrays[0].ndim == rank else np.stack(arrays)


@contextlib.contextmanager
def classes_findable(module):
    """Pickle finds a class by module and name and refuses one that is "not the same object" as what that name holds
    now: a ``--model-class`` file loaded again in this process (a second import of the user's ``model.py``, e.g. by an
    embedding program) shadows the class the model was built from. While saving, each such module name holds a
    stand-in that answers with the model's own classes; the job imports the same file by the same name."""
    shadowed = {}
    for cls in {type(sub) for sub in module.modules()}:
        name, qual = cls.__module__, cls.__qualname__
        if name.split(".")[0] in ("torch", "builtins") or "." in qual or getattr(sys.modules.get(name), qual, None) is cls:
            continue
        if name not in shadowed:
            shadowed[name] = types.ModuleType(name)
            shadowed[name].__dict__.update(vars(sys.modules[name]) if name in sys.modules else {})
        setattr(shadowed[name], qual, cls)
    saved = {name: sys.modules.get(name) for name in shadowed}
    sys.modules.update(shadowed)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old


def code_roots(module) -> list[str]:
    """The folders the job puts on sys.path so that unpickling finds the classes of ``module`` (the user's code)."""
    roots: list[str] = []
    for sub in module.modules():
        name = type(sub).__module__
        if name.split(".")[0] in ("torch", "builtins"):
            continue
        file = getattr(sys.modules.get(name), "__file__", None)
        if file:
            root = str(Path(file).resolve().parents[name.count(".")])
            if root not in roots:
                roots.append(root)
    return roots


def check_converter(conv: dict[str, Any]) -> dict[str, Any]:
    """The memory report's figures; a model over the 8 MB, or a converter that failed, is ConversionFailed."""
    report = conv.get("memory_report")
    log = Path(conv["log"])
    tail = shorten(log.read_text(errors="replace"), 3000, keep="tail") if log.exists() else ""
    if not report:
        raise ConversionFailed(f"imxconv-pt failed (exit {conv['returncode']}) and wrote no memory report", details=tail)
    memory = {"usage": report.get("Memory Usage"), "available": report.get("Total Memory Available On Chip"),
              "utilization": report.get("Memory Utilization"), "fits": bool(report.get("Fit In Chip")),
              "model_size": report.get("Model Memory Physical Size"),
              "runtime_size": report.get("Runtime Memory Physical Size")}
    memory["figure"] = (f"{memory['usage']} of {memory['available']} ({memory['utilization']}; weights "
                        f"{memory['model_size']}, runtime {memory['runtime_size']})")
    memory["summary"] = f"{'fits' if memory['fits'] else 'does not fit'}: {memory['figure']}"
    if not memory["fits"]:
        raise ConversionFailed(f"the model does not fit the IMX500's on-chip memory: {memory['figure']}",
                               hint="a smaller model (edgeconv compress) or a smaller input")
    if conv["returncode"] != 0 or not conv.get("packer"):
        raise ConversionFailed(f"imxconv-pt failed (exit {conv['returncode']}) without packerOut.zip", details=tail)
    return memory
