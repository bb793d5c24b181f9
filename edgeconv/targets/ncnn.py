"""NCNN target (Tencent ncnn, ARM/x86 CPUs, Vulkan GPUs): pnnx turns the checked ONNX graph into
``model.ncnn.param`` / ``model.ncnn.bin``, fp32 or fp16 weight storage.

int8 is refused: ncnn's int8 path needs its ``ncnn2table`` / ``ncnn2int8`` tools, which no Python package ships,
and edgeconv does not ship a half-working substitute.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from edgeconv.errors import ConversionFailed, MissingDependency, PreflightError
from edgeconv.lazy import version_of
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions

PNNX_TIMEOUT_S = 900
PROBE_TIMEOUT_S = 300


class NcnnTarget(Target):
    name = "ncnn"
    precisions = ("fp32", "fp16")
    dynamic_batch = False

    def check_options(self, profile, opts: TargetOptions) -> None:
        if opts.precision.startswith("int8"):
            raise PreflightError("ncnn int8 needs ncnn's ncnn2table/ncnn2int8 tools, which no Python package ships; "
                                 "use --precision fp32 or fp16 for ncnn (or --target tflite/openvino for int8)")
        super().check_options(profile, opts)

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        try:
            import pnnx

            exe = pnnx.EXEC_PATH  # the converter binary inside the pnnx wheel
        except (ImportError, AttributeError) as exc:
            raise MissingDependency("pnnx is not installed (needed for the ncnn target)",
                                    hint="pip install 'edgeconv[ncnn]'") from exc
        build = workdir / "_pnnx"
        build.mkdir()
        shapes = ctx.input_shapes
        shape_arg = ",".join("[" + ",".join(str(int(d)) for d in s) + "]" for s in shapes.values())
        fp16 = 1 if opts.precision == "fp16" else 0
        cmd = [exe, "model.onnx", f"inputshape={shape_arg}", f"fp16={fp16}", "ncnnparam=model.ncnn.param",
               "ncnnbin=model.ncnn.bin", "ncnnpy=model_ncnn.py", "pnnxparam=model.pnnx.param", "pnnxbin=model.pnnx.bin",
               "pnnxpy=model_pnnx.py", "pnnxonnx=model.pnnx.onnx"]
        shutil.copyfile(onnx_path, build / "model.onnx")
        try:
            proc = subprocess.run(cmd, cwd=build, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ConversionFailed(f"pnnx did not finish in {PNNX_TIMEOUT_S} s") from exc
        param, binary = build / "model.ncnn.param", build / "model.ncnn.bin"
        if proc.returncode != 0 or not param.exists():
            log = proc.stdout + proc.stderr
            failed_dir = ctx.failed_build_dir
            failed_dir.mkdir(parents=True, exist_ok=True)
            (failed_dir / "pnnx.log").write_text(log)
            raise ConversionFailed(f"pnnx {version_of('pnnx')} could not convert the graph (exit {proc.returncode})",
                                   details="\n".join(log.strip().splitlines()[-15:]), hint=f"full log: {failed_dir / 'pnnx.log'}")
        blobs_in, blobs_out = _io_blobs(param.read_text())
        names = list(shapes) + list(ctx.output_shapes)
        if len(blobs_in) != len(shapes) or len(blobs_out) != len(ctx.output_shapes):
            raise ConversionFailed(f"the ncnn graph has inputs {blobs_in} and outputs {blobs_out}; the model has {names}")
        options = {"tensor_names": dict(zip(names, blobs_in + blobs_out)), "fp16_storage": bool(fp16),
                   "bin_file": binary.name}
        _probe_in_child(param, options, shapes, ctx.failed_build_dir)
        for f in (param, binary):
            shutil.move(str(f), workdir / f.name)
        shutil.rmtree(build, ignore_errors=True)
        extra = {"converter": f"pnnx {version_of('pnnx')} (fp16={fp16})", "runner_options": options,
                 "weights_storage": "fp16" if fp16 else "fp32"}
        return Conversion([Artifact(onnx_path.name, "canonical-onnx", "fp32"),
                           Artifact(param.name, "model", opts.precision, profile.runner, extra),
                           Artifact(binary.name, "weights", opts.precision)])


def _io_blobs(param_text: str) -> tuple[list[str], list[str]]:
    """Input blobs (``Input`` layers) and output blobs (produced, never consumed) of an ncnn .param file."""
    produced, consumed, inputs = [], set(), []
    for line in param_text.splitlines()[2:]:
        parts = line.split()
        if len(parts) < 4:
            continue
        kind, n_in, n_out = parts[0], int(parts[2]), int(parts[3])
        bottoms, tops = parts[4 : 4 + n_in], parts[4 + n_in : 4 + n_in + n_out]
        consumed.update(bottoms)
        produced += tops
        if kind == "Input":
            inputs += tops
    outputs = [t for t in produced if t not in consumed and t not in inputs]
    key = lambda n: int(re.sub(r"\D", "", n) or 0)  # noqa: E731 — pnnx names them in0, in1 … / out0, out1 …
    return sorted(inputs, key=key), sorted(outputs, key=key)


def _probe_in_child(param: Path, options: dict, shapes: dict[str, list[int]], failed_dir: Path) -> None:
    """Load the pnnx output and run it once on zeros with edgeconv's ncnn runner, in a child process. ncnn crashes (a
    segmentation fault) on some graphs pnnx writes; in edgeconv's own process that would kill the conversion with no
    report."""
    cmd = [sys.executable, "-c", "from edgeconv.targets.ncnn import _probe_main; _probe_main()",
           str(param), json.dumps(options), json.dumps(shapes)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConversionFailed(f"ncnn did not run the graph pnnx wrote within {PROBE_TIMEOUT_S} s") from exc
    if proc.returncode == 0:
        return
    failed_dir.mkdir(parents=True, exist_ok=True)
    for f in (param, param.with_name(options["bin_file"])):
        shutil.copyfile(f, failed_dir / f.name)
    if proc.returncode < 0:
        how = f"crashes ({signal.Signals(-proc.returncode).name})"
    else:
        how = f"fails (exit {proc.returncode})"
    raise ConversionFailed(f"ncnn {version_of('ncnn')} {how} loading or running the graph pnnx {version_of('pnnx')} wrote",
                           details="\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:]) or None,
                           hint=f"the .param/.bin are in {failed_dir} to report to ncnn; another target may avoid it")


def _probe_main() -> None:
    """Child side of ``_probe_in_child``: argv = param, runner options, {input: shape}. Exit 1 with the runner's
    message when it refuses the graph; a crash is the signal the parent reports."""
    import numpy as np

    from edgeconv.errors import EdgeconvError
    from edgeconv.runners import open_runner

    param, options, shapes = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    try:
        with open_runner("ncnn", param, options=options) as runner:
            runner.infer({name: np.zeros(shape, np.float32) for name, shape in shapes.items()})
    except EdgeconvError as exc:
        sys.exit(exc.message)
