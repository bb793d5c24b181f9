"""The int8 guard (``convert --fallback auto``): when the full-int8 artifact misses ``--max-accuracy-drop``, keep the
layers that lose the most in float — ranked by ``edgeconv debug``'s numbers on the artifact just built — adding one
at a time until the drop is within budget or ``--max-float-layers`` is reached. Each backend keeps a layer in float
by its own mechanism (ONNX Runtime's ``nodes_to_exclude``, NNCF's ignored scope, TFLite's denylisted nodes): the
target reads ``TargetContext.float_layers``. What the float layers cost (size, p50 latency) is measured against the
full-int8 artifact on this host.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.progress import Steps

RANK_SAMPLES = 32
LATENCY_RUNS = 30
LATENCY_WARMUP = 5


@dataclass
class GuardJob:
    """What the guard needs from the conversion in progress (edgeconv/convert.py builds it)."""

    target: Any
    profile: Any
    topts: Any
    ctx: Any
    onnx_path: Path
    work: Path
    conversion: Any  # the full-int8 Conversion
    framework: str
    data_feed: dict[str, np.ndarray]
    batch: int | None
    max_float_layers: int
    measure: Any  # (workdir, conversion) -> (parity ParityReport, parity check dict, accuracy check dict)
    runner_options: dict[str, Any]
    failed_dir: Path
    layer_names: list[str] | None = None  # a Keras source's layer names (edgeconv debug maps TF scopes back to them)


def _feeds(feed: dict[str, np.ndarray], batch: int | None, n: int) -> list[dict[str, np.ndarray]]:
    step = batch or 1
    total = min(n, len(next(iter(feed.values())))) // step * step
    return [{k: v[i : i + step] for k, v in feed.items()} for i in range(0, total, step)]


def _model(conversion) -> Any:
    return next(a for a in conversion.artifacts if a.role == "model")


def _size(workdir: Path, conversion) -> int:
    return sum((workdir / a.file).stat().st_size for a in conversion.artifacts if a.role in ("model", "weights"))


def _p50_ms(workdir: Path, art, options: dict[str, Any], feed: dict[str, np.ndarray]) -> float:
    """p50 by the one latency method (edgeconv.stats, i.e. the device runner's)."""
    from edgeconv.runners import open_runner
    from edgeconv.stats import summarize_latency, time_runner

    with open_runner(art.runner, workdir / art.file, options=options) as r:
        times = time_runner(r, feed, warmup=LATENCY_WARMUP, runs=LATENCY_RUNS)
    return float(summarize_latency(times, len(next(iter(feed.values()))))["p50_ms"])


def rank_layers(job: GuardJob, workdir: Path, conversion) -> list[dict[str, Any]]:
    """An artifact's layers, most harmful first (edgeconv debug's ``added_snr_db``)."""
    from edgeconv.debug import compare_layers

    art = _model(conversion)
    table = compare_layers(job.onnx_path, workdir / art.file, art.runner, art.extra.get("runner_options") or {},
                           job.framework, _feeds(job.data_feed, job.batch, RANK_SAMPLES), steps=Steps(),
                           layer_names=job.layer_names)
    ranked = sorted((r for r in table["rows"] if r["rank"] is not None), key=lambda r: r["rank"])
    if job.profile.backend in ("tflite", "coral", "ethos-u"):
        ranked = [r for r in ranked if r["artifact_names"]]  # the denylist takes TFLite tensor names
    return [{"layer": r["layer"], "source": r["source"], "op": r["op"], "nodes": r["nodes"], "artifact_names": r["artifact_names"],
             "snr_db": r["snr_db"], "added_snr_db": r["added_snr_db"]} for r in ranked]


def guard(job: GuardJob, first_accuracy: dict[str, Any], steps: Steps | None = None) -> dict[str, Any]:
    """Find the fewest float layers that meet the budget. Returns ``{"conversion", "parity", "parity_check",
    "accuracy_check", "record"}`` for the artifact to keep (its files are in ``job.work``)."""
    from edgeconv.errors import PreflightError

    steps = steps or Steps()
    if not getattr(job.target, "float_fallback", False):
        raise PreflightError(f"--fallback auto: target {job.profile.name} ({job.profile.backend}) has no way to keep layers in float")
    with steps.step("int8 guard: ranking the layers by the error each adds (edgeconv debug on the full-int8 artifact)"):
        ranked = rank_layers(job, job.work, job.conversion)
    full_art = _model(job.conversion)
    sample = {k: v[: job.batch or 1] for k, v in job.data_feed.items()}
    with steps.step("int8 guard: p50 latency of the full-int8 artifact"):
        full_p50 = _p50_ms(job.work, full_art, job.runner_options, sample)
    full_size = _size(job.work, job.conversion)
    attempts: list[dict[str, Any]] = []
    best = None
    scratch = Path(tempfile.mkdtemp(prefix=f".{job.work.name}.fallback-", dir=job.work.parent))
    try:
        chosen: list[dict[str, Any]] = []
        candidates = ranked
        for k in range(1, job.max_float_layers + 1):
            # the worst layer not yet in float, as the debugger ranks the last attempt (a layer kept in float moves the
            # error: its consumer may now re-quantize the same range)
            nxt = next((c for c in candidates if c["layer"] not in {x["layer"] for x in chosen}), None)
            if nxt is None:
                break
            chosen = [*chosen, nxt]
            attempt = scratch / f"attempt-{k}"
            attempt.mkdir()
            job.ctx.float_layers = chosen
            label = ", ".join(c["source"] or c["layer"] for c in chosen)
            with steps.step(f"int8 guard: {k} layer(s) in float ({label})"):
                from edgeconv.convert import converter_step

                with converter_step(f"the {job.profile.backend} conversion with {k} float layer(s)", job.failed_dir):
                    conversion = job.target.convert(job.onnx_path, attempt, job.profile, job.topts, job.ctx)
                parity, parity_check, acc_check = job.measure(attempt, conversion)
            attempts.append({"float_layers": k, "layers": [c["source"] or c["layer"] for c in chosen],
                             "drop_points": acc_check["drop_points"], "ok": acc_check["ok"], "parity_ok": parity_check["ok"]})
            if best is None or acc_check["drop_points"] < best["accuracy_check"]["drop_points"]:
                best = {"k": k, "dir": attempt, "conversion": conversion, "parity": parity, "parity_check": parity_check,
                        "accuracy_check": acc_check, "layers": chosen}
            if acc_check["ok"]:
                break
            if k < job.max_float_layers:
                with steps.step(f"int8 guard: ranking the layers of the attempt with {k} float layer(s)"):
                    candidates = rank_layers(job, attempt, conversion)
        if best is None:
            raise PreflightError("--fallback auto: the debugger found no layer of this artifact to keep in float")
        art = _model(best["conversion"])
        with steps.step("int8 guard: p50 latency with the float layers"):
            p50 = _p50_ms(best["dir"], art, job.runner_options, sample)
        size = _size(best["dir"], best["conversion"])
        shutil.copytree(best["dir"], job.work, dirs_exist_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        job.ctx.float_layers = []
    kept = best["layers"]
    record = {
        "mode": "auto",
        "ok": bool(best["accuracy_check"]["ok"]),
        "max_float_layers": job.max_float_layers,
        "max_accuracy_drop": first_accuracy.get("max_drop_points"),
        "ranked_by": "edgeconv debug: the SNR each layer's own error leaves (channel-balanced), worst first, on "
                     f"{RANK_SAMPLES} samples of --data; the full-int8 artifact first, then each attempt's",
        "mechanism": _mechanism(job.profile.backend),
        "float_layers": kept,
        "candidates": [{"layer": r["layer"], "source": r["source"], "added_snr_db": r["added_snr_db"]} for r in ranked[:10]],
        "drop_before": first_accuracy["drop_points"],
        "drop_after": best["accuracy_check"]["drop_points"],
        "accuracy_before": first_accuracy["artifact"],
        "accuracy_after": best["accuracy_check"]["artifact"],
        "attempts": attempts,
        "cost": {
            "bytes": {"full_int8": full_size, "with_float_layers": size, "delta": size - full_size},
            "p50_ms": {"full_int8": full_p50, "with_float_layers": p50, "delta": p50 - full_p50,
                       "ratio": p50 / full_p50 if full_p50 else None},
            "method": f"{art.runner} on this host, batch {job.batch or 1}, {LATENCY_WARMUP} warm-up + {LATENCY_RUNS} timed "
                      "runs each, median of the runtime call",
        },
    }
    return {**best, "record": record}


def _mechanism(backend: str) -> str:
    return {"jetson": "onnxruntime.quantization.quantize_static nodes_to_exclude (no Q/DQ around those nodes)",
            "onnx": "onnxruntime.quantization.quantize_static nodes_to_exclude (no Q/DQ around those nodes)",
            "openvino": "nncf.quantize ignored_scope (no FakeQuantize on those ops)",
            "tflite": "tf.lite.experimental.QuantizationDebugger denylisted_nodes (those ops stay float, between "
                      "DEQUANTIZE/QUANTIZE)"}.get(backend, "tf.lite.experimental.QuantizationDebugger denylisted_nodes (those "
                                                          "ops run on the CPU in float)")
