"""Measuring the source and the result alike: MACs and int8 size of their ONNX export, ONNX Runtime fp32 latency
(interleaved), top-1 on labelled data, and the size of each as a torch.export ``.pt2``."""

from __future__ import annotations

import contextlib
import copy
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.text import first_line, shorten
from edgeconv.errors import BadInput
from edgeconv.specs import TensorSpec

LATENCY_ROUNDS = 4  # before/after alternate, one fresh session per round (two live ORT pools would time each other)


def source_pt2(torch, source, model_path: Path, args: tuple, dest: Path) -> tuple[Path | None, str | None]:
    """The source as a torch.export .pt2, so its size compares like with like with the written one: the file itself when it
    is one, else the module exported to ``dest``. The figure is extra: a module torch.export cannot take is reported
    (None and the reason), not fatal, since the compressed model has been exported and checked already."""
    if source.program is not None:
        return model_path, None
    try:
        with torch.no_grad():
            torch.export.save(torch.export.export(copy.deepcopy(source.module).eval(), args), str(dest))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return None, (f"not measured: torch.export could not export the source module ({type(exc).__name__}: "
                      f"{first_line(exc, 200)})")
    return dest, None


def _int8_sizes(onnx_path: Path, tmp: Path) -> dict[str, Any]:
    """Size of an int8 ONNX artifact (ONNX Runtime dynamic quantization: int8 weights, symmetric per channel, so a zero
    stays a zero) and of that file zipped (deflate, level 9)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        dest = tmp / (onnx_path.stem + ".int8.onnx")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantize_dynamic(str(onnx_path), str(dest), weight_type=QuantType.QInt8, per_channel=True)
    except Exception as exc:  # noqa: BLE001 - the size figure is extra: a graph the quantizer cannot take is reported, not fatal
        return {"int8_bytes": None, "int8_zip_bytes": None,
                "int8_note": f"not quantized: {type(exc).__name__}: {shorten(exc, 200)}"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(dest, dest.name)
    return {"int8_bytes": dest.stat().st_size, "int8_zip_bytes": len(buf.getvalue())}


def graph_metrics(source, specs: list[TensorSpec], dest: Path) -> dict[str, Any]:
    """``source`` exported to ONNX at ``dest``: its MACs at batch 1, its size, and the size of its int8 form."""
    from edgeconv.onnx_tools import load_onnx, summarize

    source.export_onnx(dest, inputs=specs, opset=None, dynamic_batch=False)
    summary = summarize(load_onnx(dest), source.layout_default)
    return {"macs": summary["macs"], "onnx_bytes": dest.stat().st_size, **_int8_sizes(dest, dest.parent)}


def latency(paths: dict[str, Path], feed: dict[str, np.ndarray], *, runs: int, warmup: int,
            threads: int | None) -> dict[str, Any]:
    """fp32 p50 on ONNX Runtime of each model over ``runs`` timed runs in all, interleaved: LATENCY_ROUNDS rounds (fewer
    when runs < LATENCY_ROUNDS), the order alternating, a fresh session per model and round (closed before the next opens)."""
    from edgeconv.runners import open_runner
    from edgeconv.stats import LATENCY_METHOD, summarize_latency, time_runner

    labels = list(paths)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    # ``runs`` timed runs per model in all: spread over the rounds, the first rounds taking the remainder (fewer rounds
    # when runs < LATENCY_ROUNDS, so no round times zero runs)
    rounds = max(1, min(LATENCY_ROUNDS, runs))
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    info = {}
    for r in range(rounds):
        for label in (labels if r % 2 == 0 else labels[::-1]):
            runner = open_runner("onnxruntime", paths[label], threads=threads)
            try:
                samples[label] += time_runner(runner, feed, warmup=warmup, runs=per_round[r])
                info = runner.info()
            finally:
                runner.close()
    stats = {k: summarize_latency(v) for k, v in samples.items()}
    split = str(per_round[0]) if len(set(per_round)) == 1 else "+".join(map(str, per_round))
    return {"stats": stats, "method": f"{LATENCY_METHOD}; {rounds} rounds, before/after alternating, a fresh session "
                                      f"each, {warmup} warm-up + {split} timed runs per round ({sum(per_round)} per "
                                      "model), batch 1",
            "runtime": {k: info.get(k) for k in ("runtime", "version", "threads") if k in info}}


def top1(onnx_path: Path, feed: dict[str, np.ndarray], y: np.ndarray) -> float:
    from edgeconv.data import accuracy, classifier_output, run_batched
    from edgeconv.runners import open_runner

    runner = open_runner("onnxruntime", onnx_path)
    try:
        outs = run_batched(runner.infer, feed, runner.fixed_batch())
    finally:
        runner.close()
    idx = classifier_output(outs)
    if idx is None:
        raise BadInput(f"--data: the model's outputs {[list(o.shape) for o in outs]} are not class scores (N, classes)")
    return accuracy(outs[idx], y)["top1"]
