"""rknn-toolkit2 in the rknn toolchain's venv: build a .rknn from the canonical ONNX, export it, and run it on the
toolkit's simulator in this same process (docs/architecture.md, "NPU toolchains").

The simulator runs a model only in the process that built it (a .rknn loaded back with ``load_rknn`` cannot
``init_runtime`` without a board), so this job builds, exports, starts the simulator, runs the request's feeds and
then, with ``serve`` in the request, stays up answering more feeds over a local socket until edgeconv closes it or
dies. Standard library, numpy and rknn-toolkit2 only: edgeconv is not installed here.

Request: onnx, rknn (output path), platform, precision ("int8" | "fp16"), dataset (rknn's dataset.txt for int8),
quantized_algorithm, inputs [{name, shape, layout}], feeds (.npz of input batches), outputs (.npz to write), serve
({address, authkey_hex} or absent), float_layers (int8: [{tensors, inputs}] kept out of int8 by hybrid quantization). Response:
rknn_sha256, versions, outputs, sim_seconds (per inference), served, hybrid_layers ({config tensor: dtype} set).
"""

from __future__ import annotations

import hashlib
import io
import re
import time
from pathlib import Path
from typing import Any

import _common
import numpy as np


# a tensor whose calibrated magnitude exceeds this stays out of float16 (max 65504): samples beyond the calibration's
# range would overflow to inf; it goes to int16 instead
FP16_SAFE = 32768.0


def _check(what: str, call, *args, **kwargs) -> None:
    """One rknn-toolkit2 call: its ValueError carries the toolkit's whole traceback as its message; the last line
    says what went wrong. A non-zero return code is a failure too."""
    try:
        code = call(*args, **kwargs)
    except ValueError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise RuntimeError(f"rknn-toolkit2 {what} failed: {lines[-1] if lines else type(exc).__name__}") from exc
    if code != 0:
        raise RuntimeError(f"rknn-toolkit2 {what} returned {code} (its log says why)")


def build(req: dict[str, Any]):
    from rknn.api import RKNN

    rknn = RKNN(verbose=bool(req.get("verbose")))
    config = {"target_platform": req["platform"], "optimization_level": int(req.get("optimization_level", 3))}
    if req["precision"] == "int8":
        config["quantized_dtype"] = req.get("quantized_dtype", "w8a8")
        config["quantized_algorithm"] = req.get("quantized_algorithm", "normal")
    _check("config", rknn.config, **config)
    _check("load_onnx", rknn.load_onnx, model=req["onnx"])
    int8 = req["precision"] == "int8"
    if int8 and req.get("float_layers"):
        rknn = hybrid(rknn, req, config)
    else:
        _check("build", rknn.build, do_quantization=int8, dataset=req.get("dataset") if int8 else None)
    _check("export_rknn", rknn.export_rknn, req["rknn"])
    if req.get("analysis"):  # before init_runtime: accuracy_analysis runs the model its own way
        _check("accuracy_analysis", rknn.accuracy_analysis, inputs=req["analysis"]["inputs"],
               output_dir=req["analysis"]["output_dir"], target=None)
    _check("init_runtime (the simulator)", rknn.init_runtime)
    return rknn


def hybrid(rknn, req: dict[str, Any], config: dict[str, Any]):
    """int8 with some layers out of int8: hybrid_quantization_step1 writes the quantization config of every tensor
    (``<model>.quantization.cfg`` in the working folder); the tensors of the layers asked for (an ONNX tensor, or the
    toolkit's conversion of one: ``relu_2-rs``) go to ``custom_quantize_layers`` as float16, or as int16 where
    calibration saw values beyond FP16_SAFE in what the layer writes or reads (fp16 would overflow: the toolkit takes
    no float32 there);
    hybrid_quantization_step2 builds from it. Returns the toolkit object that built the model."""
    from rknn.api import RKNN

    _check("hybrid_quantization_step1", rknn.hybrid_quantization_step1, dataset=req["dataset"])
    stem = Path(req["onnx"]).stem
    cfg = Path.cwd() / f"{stem}.quantization.cfg"
    text = cfg.read_text()
    ranges = _ranges(text)
    chosen: dict[str, str] = {}
    for layer in req["float_layers"]:
        own = [n for n in ranges if n in layer["tensors"] or _onnx_name(n) in layer["tensors"]]
        read = [r for n, r in ranges.items() if n in layer["inputs"] or _onnx_name(n) in layer["inputs"]]
        wide = max([ranges[n] for n in own] + read, default=0.0) > FP16_SAFE
        chosen.update({n: "int16" if wide else "float16" for n in own})
    if not chosen:
        raise RuntimeError(f"none of {req['float_layers']} is a tensor of the quantization config")
    block = "custom_quantize_layers:\n" + "".join(f"    {n}: {dtype}\n" for n, dtype in chosen.items())
    text, count = re.subn(r"^custom_quantize_layers:.*\n", lambda _: block, text, count=1, flags=re.M)
    if count != 1:
        raise RuntimeError(f"{cfg.name} has no custom_quantize_layers entry")
    cfg.write_text(text)
    req["hybrid_layers"] = chosen
    rknn.release()
    rknn = RKNN(verbose=bool(req.get("verbose")))
    _check("config", rknn.config, **config)
    _check("hybrid_quantization_step2", rknn.hybrid_quantization_step2, model_input=str(cfg.with_name(f"{stem}.model")),
           data_input=str(cfg.with_name(f"{stem}.data")), model_quantization_cfg=str(cfg))
    return rknn


def _ranges(text: str) -> dict[str, float]:
    """Each tensor of a quantization config with the largest magnitude calibration saw in it (``ori_min``/``ori_max``)."""
    section = text.split("quantize_parameters:", 1)[1]
    parts = re.split(r"^    (\S+):\s*$", section, flags=re.M)
    out = {}
    for name, block in zip(parts[1::2], parts[2::2]):
        lists = re.findall(r"ori_m(?:in|ax):\s*\n((?:\s+-\s+\S+\n?)+)", block)
        nums = [abs(float(x)) for lst in lists for x in re.findall(r"-\s+(\S+)", lst)]
        out[name.strip("'\"")] = max(nums, default=0.0)
    return out


def _onnx_name(name: str) -> str:
    for suffix in ("_int8", "-rs", "_mm"):  # the toolkit's names for its own conversions of an ONNX tensor
        name = name.removesuffix(suffix)
    return name


def analysis_rows(path: Path) -> list[dict[str, Any]]:
    """accuracy_analysis's error_analysis.txt as rows: op, tensor, and for the simulator against fp32 ("golden") the
    cosine and euclidean distance, accumulated ("entire") and of the layer alone ("single"). A row the toolkit
    leaves blank (a layer fused into the next) has no figures."""
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("["):
            continue
        head, _, rest = line.partition("]")
        parts = rest.split()
        tensor = parts[0] if parts else ""
        # fixed-width columns with 5 decimals that run together when a figure is wide ("1243.705200.99998")
        nums = [float(x) for x in re.findall(r"-?\d+\.\d{5}", " ".join(parts[1:]))]
        row: dict[str, Any] = {"op": head[1:], "tensor": tensor}
        if "q_zero" in parts[1:]:
            row["q_zero"] = True  # the toolkit's mark: the simulator's int8 values of this tensor are all zero
        if len(nums) >= 4:
            row.update({"entire_cos": nums[0], "entire_euc": nums[1], "single_cos": nums[2], "single_euc": nums[3]})
        rows.append(row)
    return rows


def simulate(rknn, inputs: list[dict[str, Any]], feeds: dict[str, np.ndarray]) -> tuple[list[np.ndarray], float]:
    """Every sample of ``feeds`` through the simulator, one at a time (the .rknn has a fixed batch of 1). 4-D inputs
    are given as NCHW: ``inference`` otherwise takes them as NHWC."""
    n = len(feeds[inputs[0]["name"]])
    formats = ["nchw" if len(s["shape"]) == 4 else None for s in inputs]
    rows: list[list[np.ndarray]] = []
    start = time.perf_counter()
    for i in range(n):
        sample = [np.ascontiguousarray(feeds[s["name"]][i:i + 1]) for s in inputs]
        outs = rknn.inference(inputs=sample, data_format=formats if any(formats) else None)
        if outs is None:
            raise RuntimeError(f"the simulator returned no outputs for sample {i}")
        rows.append([np.asarray(o, dtype=np.float32) for o in outs])
    spent = (time.perf_counter() - start) / max(n, 1)
    return [np.concatenate([r[j] for r in rows]) for j in range(len(rows[0]))] if rows else [], spent


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {d: md.version(d) for d in ("rknn-toolkit2", "numpy", "onnx", "torch")}


def handle(req: dict[str, Any]) -> dict[str, Any]:
    rknn = build(req)
    sha = hashlib.sha256(Path(req["rknn"]).read_bytes()).hexdigest()
    with np.load(req["feeds"]) as f:
        feeds = {k: f[k] for k in f.files}
    outs, spent = simulate(rknn, req["inputs"], feeds)
    Path(req["outputs"]).write_bytes(_npz_bytes({f"out{j}": o for j, o in enumerate(outs)}))
    response = {"rknn_sha256": sha, "versions": _versions(), "outputs": req["outputs"], "sim_seconds": spent,
                "served": bool(req.get("serve")), "hybrid_layers": req.get("hybrid_layers", {})}
    if req.get("analysis"):
        report = Path(req["analysis"]["output_dir"]) / "error_analysis.txt"
        response["analysis"] = {"file": str(report), "rows": analysis_rows(report)}
    if req.get("serve"):
        def answer(data: bytes) -> bytes:
            with np.load(io.BytesIO(data)) as f:
                more = {k: f[k] for k in f.files}
            result, took = simulate(rknn, req["inputs"], more)
            return _npz_bytes({"sim_seconds": np.float64(took), **{f"out{j}": o for j, o in enumerate(result)}})

        response["_serve"] = answer
    else:
        rknn.release()
    return response


if __name__ == "__main__":
    _common.main(handle)
