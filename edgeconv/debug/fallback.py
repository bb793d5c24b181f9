"""The int8 guard (``convert --fallback auto``): when the full-int8 artifact misses ``--max-accuracy-drop``, keep the
layers that lose the most in float — ranked by ``edgeconv debug``'s numbers on the artifact just built — adding one
at a time until the drop is within budget or ``--max-float-layers`` is reached. Each backend keeps a layer in float
by its own mechanism (ONNX Runtime's ``nodes_to_exclude``, NNCF's ignored scope, TFLite's denylisted nodes): the
target reads ``TargetContext.float_layers``. What the float layers cost (size, p50 latency) is measured against the
full-int8 artifact on this host.

A target may keep layers in float by its own accuracy control instead (OpenVINO: NNCF's
``quantize_with_accuracy_control``, the path without ``--fallback auto``): ``accuracy_control_record`` gives that the
same record — its op names mapped back to ONNX nodes and source names, the drop of the full-int8 model it started from
and of the artifact kept, and the same cost figures.
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
        "cost": _cost(full_size, size, full_p50, p50, art.runner, job.batch),
    }
    return {**best, "record": record}


def _cost(full_size: int, size: int, full_p50: float, p50: float, runner: str | None, batch: int | None) -> dict[str, Any]:
    return {
        "bytes": {"full_int8": full_size, "with_float_layers": size, "delta": size - full_size},
        "p50_ms": {"full_int8": full_p50, "with_float_layers": p50, "delta": p50 - full_p50,
                   "ratio": p50 / full_p50 if full_p50 else None},
        "method": f"{runner} on this host, batch {batch or 1}, {LATENCY_WARMUP} warm-up + {LATENCY_RUNS} timed runs each, "
                  "median of the runtime call",
    }


def _float_tensors(model) -> set[str]:
    """Tensors of the graph that are (or may be) float: what the debugger's reference run would have produced."""
    import onnx

    known: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without inferred types every output counts (the names still map)
        inferred = model
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if v.type.HasField("tensor_type"):
            known[v.name] = v.type.tensor_type.elem_type
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return {o for node in model.graph.node for o in node.output if o and known.get(o, onnx.TensorProto.FLOAT) in floats}


def layers_of_ops(onnx_path: Path, framework: str, ops: list[str],
                  layer_names: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """An artifact's op names → the canonical graph's layers (``edgeconv debug``'s grouping, source names included),
    in the order given, and the op names no ONNX node accounts for. OpenVINO names an op after its ONNX node (``node``)
    or a part of it (``node/WithoutBiases``); an ONNX name may itself hold ``/``, so the longest node name wins."""
    import onnx

    from edgeconv.debug.graph import layers_of

    model = onnx.load(str(onnx_path))
    layers = layers_of(model, framework, _float_tensors(model), layer_names)
    by_node = {n: layer for layer in layers for n in layer.nodes}
    for node in model.graph.node:  # an op may carry the name of its node's output tensor instead
        for o in node.output:
            if node.name in by_node and o not in by_node:
                by_node[o] = by_node[node.name]
    names = sorted(by_node, key=len, reverse=True)
    found: dict[str, dict[str, Any]] = {}
    unmatched = []
    for op in ops:
        hit = next((n for n in names if op == n or op.startswith(n + "/")), None)
        if hit is None:
            unmatched.append(op)
            continue
        layer = by_node[hit]
        entry = found.setdefault(layer.name, {"layer": layer.name, "source": layer.source, "source_class": layer.source_class,
                                              "op": layer.op, "nodes": layer.nodes, "artifact_names": []})
        entry["artifact_names"].append(op)
    return list(found.values()), unmatched


def accuracy_control_record(conversion, work: Path, onnx_path: Path, framework: str, accuracy_after: dict[str, Any],
                            measure_accuracy, runner_options: dict[str, Any], data_feed: dict[str, np.ndarray],
                            batch: int | None, layer_names: list[str] | None = None, steps: Steps | None = None) -> dict[str, Any]:
    """The fallback record of a target's own accuracy control (``conversion.accuracy_control``): the layers it kept in
    float with their source names, the drop of the full-int8 model it started from (``measure_accuracy(dir, artifact)``,
    the same check as the kept artifact's ``accuracy_after``) and after, and the size and p50 latency against full int8.
    The full-int8 files are removed afterwards; when nothing was reverted the artifact is the full-int8 model."""
    steps = steps or Steps()
    ac = conversion.accuracy_control
    full, full_dir = ac.get("full_int8"), ac.get("full_int8_dir")
    art = _model(conversion)
    sample = {k: v[: batch or 1] for k, v in data_feed.items()}
    try:
        kept, unmatched = layers_of_ops(onnx_path, framework, ac["float_ops"], layer_names)
        if full is None:
            with steps.step("accuracy control kept no layer in float: p50 latency of the int8 artifact"):
                full_p50 = p50 = _p50_ms(work, art, runner_options, sample)
            full_size = size = _size(work, conversion)
            before = accuracy_after
        else:
            full_art = _model(full)
            with steps.step("accuracy control: accuracy of the full-int8 model it started from"):
                before = measure_accuracy(full_dir, full_art)
            with steps.step("accuracy control: p50 latency of the full-int8 model"):
                full_p50 = _p50_ms(full_dir, full_art, runner_options, sample)
            with steps.step("accuracy control: p50 latency with the float layers"):
                p50 = _p50_ms(work, art, runner_options, sample)
            full_size, size = _size(full_dir, full), _size(work, conversion)
        nncf = ac.get("nncf") or {}
        attempts = []
        for i, step in enumerate(nncf.get("steps", []), 1):
            layers, rest = layers_of_ops(onnx_path, framework, step["reverted"], layer_names)
            attempts.append({"step": i, "layers": [x["source"] or x["layer"] for x in layers] + rest,
                             "drop_points": step["drop_points"], "ok": step["ok"], "measured_with": "nncf"})
    finally:
        if full_dir is not None:
            shutil.rmtree(full_dir, ignore_errors=True)
    record = {
        "mode": "accuracy-control",
        "ok": bool(accuracy_after["ok"]),
        "max_float_layers": None,  # the target's accuracy control sets its own bound
        "max_accuracy_drop": accuracy_after.get("max_drop_points"),
        "ranked_by": ac["ranked_by"],
        "mechanism": ac["mechanism"],
        "float_layers": kept + [{"layer": op, "source": None, "source_class": None, "op": None, "nodes": [],
                                 "artifact_names": [op]} for op in unmatched],
        "candidates": None,  # the accuracy control does not publish its ranking
        "drop_before": before["drop_points"],
        "drop_after": accuracy_after["drop_points"],
        "accuracy_before": before["artifact"],
        "accuracy_after": accuracy_after["artifact"],
        "attempts": attempts,
        "attempts_measured_with": nncf.get("measured_with"),
        "cost": _cost(full_size, size, full_p50, p50, art.runner, batch),
    }
    if unmatched:
        record["unmatched_ops"] = unmatched
    return record


def _mechanism(backend: str) -> str:
    return {"jetson": "onnxruntime.quantization.quantize_static nodes_to_exclude (no Q/DQ around those nodes)",
            "onnx": "onnxruntime.quantization.quantize_static nodes_to_exclude (no Q/DQ around those nodes)",
            "openvino": "nncf.quantize ignored_scope (no FakeQuantize on those ops)",
            "tflite": "tf.lite.experimental.QuantizationDebugger denylisted_nodes (those ops stay float, between "
                      "DEQUANTIZE/QUANTIZE)"}.get(backend, "tf.lite.experimental.QuantizationDebugger denylisted_nodes (those "
                                                          "ops run on the CPU in float)")
