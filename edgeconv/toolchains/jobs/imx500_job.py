"""Sony IMX500 (Raspberry Pi AI Camera) in the ``imx500`` toolchain: MCT post-training quantization with the IMX500
target platform capabilities, MCT's ONNX export (its quantizer ops, opset 20), then ``imxconv-pt`` → packerOut.zip
and the memory report. Run by edgeconv/targets/imx500.py with the toolchain's python (docs/architecture.md, "NPU
toolchains"); stdlib + numpy + the toolchain's packages only, never edgeconv.

Request ``action``:
- ``convert``: ``module`` (a ``torch.save``d nn.Module edgeconv wrote from the source it loaded; ``sys_path``: the
  folders of the user's code its classes come from), ``calibration`` (.npz, one stacked array per input, in
  ``inputs``' order), ``batch``, ``onnx`` (the quantized ONNX to write), ``opset``, ``tpc_version``, ``outdir``
  (imxconv-pt's output folder), ``converter_timeout``. Response: the quantized ONNX's I/O names, the memory report,
  the files imxconv-pt wrote, versions.
- ``simulate`` (served, ``serve`` in the request): the quantized ONNX on ONNX Runtime with mct_quantizers' session
  options (its quantizer ops as custom ops): an .npz of inputs (``in0``…) in, an .npz of outputs (``out0``…) back.
  Simulated quantization on this host's CPU, not the sensor.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import _common

VERSIONS = ("edge-mdt", "model-compression-toolkit", "imx500-converter", "mct-quantizers", "edge-mdt-tpc", "torch",
            "torchvision", "onnx", "onnxruntime")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def torch_for_mct():
    """torch, readied for MCT 2.5 beside the CPU torch 2.13.

    - torchvision (edgemdt_cl imports it) is PyPI's build, whose compiled ops link CUDA torch: beside the CPU torch they
      do not load, and its import then fails registering fake kernels for ``torchvision::nms``/``qnms``. Declaring
      those two schemas lets the pure-Python part import; PTQ of a classifier calls none of torchvision's kernels
      (an NMS layer would fail, loudly, with no kernel).
    - ``torch.onnx.export`` defaults to the dynamo exporter since torch 2.9; MCT's quantizer ops export through the
      TorchScript exporter's symbolic functions, so MCT's calls get ``dynamo=False``."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is not None and not hasattr(torch.ops.torchvision, "nms"):
        compiled = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
        try:
            if compiled is None:
                raise OSError("no compiled ops")
            torch.ops.load_library(str(compiled))
        except OSError:
            for op in ("nms", "qnms"):
                torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    export = torch.onnx.export

    def torchscript_export(*args, **kwargs):
        kwargs.setdefault("dynamo", False)
        return export(*args, **kwargs)

    torch.onnx.export = torchscript_export
    return torch


def quantize(req: dict[str, Any]) -> dict[str, Any]:
    """MCT PTQ on the calibration samples with the IMX500 TPC, exported as ONNX with MCT's quantizer ops."""
    torch = torch_for_mct()
    import model_compression_toolkit as mct
    from edgemdt_tpc import get_target_platform_capabilities

    sys.path[:0] = [p for p in req.get("sys_path", []) if p not in sys.path]
    model = torch.load(req["module"], map_location="cpu", weights_only=False).eval()  # written by edgeconv itself
    with np.load(req["calibration"]) as f:
        arrays = [f[f"in{j}"].astype(np.float32) for j in range(len(req["inputs"]))]
    batch = max(1, int(req.get("batch") or 1))

    def representative():
        for i in range(0, len(arrays[0]), batch):
            yield [a[i:i + batch] for a in arrays]

    tpc = get_target_platform_capabilities(tpc_version=str(req["tpc_version"]), device_type="imx500")
    start = time.perf_counter()
    quantized, _ = mct.ptq.pytorch_post_training_quantization(model, representative, target_platform_capabilities=tpc)
    ptq_s = time.perf_counter() - start
    mct.exporter.pytorch_export_model(quantized, save_model_path=req["onnx"], repr_dataset=representative,
                                      onnx_opset_version=int(req["opset"]))
    return {"ptq_seconds": ptq_s, "calibration_samples": len(arrays[0]), "tpc_version": str(req["tpc_version"])}


def run_converter(onnx_path: Path, outdir: Path, timeout: float) -> dict[str, Any]:
    """``imxconv-pt`` (it runs Java): its log kept; the memory report read even when it refuses the model."""
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(bindir / "imxconv-pt"), "-i", str(onnx_path), "-o", str(outdir), "--no-input-persistency",
           "--overwrite-output"]
    start = time.perf_counter()
    # check=False on purpose: a model that does not fit still gets its memory report, which edgeconv quotes; the exit
    # code goes back in the response and edgeconv refuses it (edgeconv/targets/imx500.py, check_converter)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    log = outdir / "imxconv.log"
    outdir.mkdir(parents=True, exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    reports = sorted(outdir.glob("*MemoryReport.json"))
    report = json.loads(reports[0].read_text()).get("Memory Report", {}) if reports else None
    return {"returncode": proc.returncode, "command": cmd, "log": str(log), "seconds": time.perf_counter() - start,
            "memory_report": report, "memory_report_file": str(reports[0]) if reports else None,
            "packer": str(outdir / "packerOut.zip") if (outdir / "packerOut.zip").exists() else None,
            "files": sorted(p.name for p in outdir.iterdir())}


def onnx_io(path: str) -> dict[str, list[str]]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    init = {i.name for i in model.graph.initializer}
    return {"inputs": [i.name for i in model.graph.input if i.name not in init],
            "outputs": [o.name for o in model.graph.output],
            "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import}}


def convert(req: dict[str, Any]) -> dict[str, Any]:
    out = quantize(req)
    out["io"] = onnx_io(req["onnx"])
    out["converter"] = run_converter(Path(req["onnx"]), Path(req["outdir"]), float(req.get("converter_timeout", 1800)))
    out["versions"] = versions()
    return out


def session(path: str):
    import onnxruntime as ort
    from mct_quantizers import get_ort_session_options

    return ort.InferenceSession(path, get_ort_session_options(), providers=["CPUExecutionProvider"])


def simulate(req: dict[str, Any]) -> dict[str, Any]:
    """Serve the quantized ONNX: an .npz of inputs (in0, in1, … in the ONNX's input order) → an .npz of outputs."""
    sess = session(req["onnx"])
    names = [i.name for i in sess.get_inputs()]

    def answer(data: bytes) -> bytes:
        with np.load(io.BytesIO(data)) as f:
            feed = {n: f[f"in{j}"] for j, n in enumerate(names)}
        start = time.perf_counter()
        outs = sess.run(None, feed)
        buf = io.BytesIO()
        np.savez(buf, seconds=np.float64(time.perf_counter() - start), **{f"out{j}": o for j, o in enumerate(outs)})
        return buf.getvalue()

    return {"inputs": names, "outputs": [o.name for o in sess.get_outputs()], "versions": versions(), "_serve": answer}


def handle(req: dict[str, Any]) -> dict[str, Any]:
    if req.get("action") == "simulate":
        return simulate(req)
    return convert(req)


if __name__ == "__main__":
    _common.main(handle)
