"""The int8 guard's levers, in the order the guard pulls them (``LEVERS``): calibration, packed outputs, float layers,
16-bit activations, quantization-aware fine-tuning (``convert --levers`` picks and orders them). Each takes the
``Guard`` (its attempts so far, the best of them first in line), builds and measures attempts through
``Guard.attempt``, and returns a note for the record: what it tried, or why it was skipped. A lever starts from the
best attempt so far, so calibration found by the first lever carries into the float layers of the second. See
edgeconv/convert/guard.py and docs/architecture.md."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.convert.attempts import Attempt, Guard, GuardJob
from edgeconv.progress import Steps

RANK_SAMPLES = 32
PACKED_RANGE_RATIO = 50.0  # an output whose channels' ranges differ more than this packs quantities of different scales
SENSITIVITY_CANDIDATES = 8  # layers whose float effect on the drop is measured, the debugger's worst first
SENSITIVITY_SECONDS = 180.0  # the time cap of that measurement (each candidate is one conversion and one --data run)


def calibration(g: Guard) -> dict[str, Any]:
    """The backend's other calibration methods on the same samples; the best one carries into the next levers."""
    methods = tuple(getattr(g.job.target, "calibration_methods", ()))
    note: dict[str, Any] = {"name": "calibration"}
    if len(methods) < 2:
        return {**note, "skipped": f"{g.job.profile.backend} offers one calibration method here"}
    base = g.best
    tried = []
    for method in methods[1:]:
        a = g.attempt("calibration", f"calibration {method}", replace(base.settings, calibration=method), base.float_layers)
        tried.append({"method": method, a.score_name: a.score, "ok": a.ok})
        if a.ok:
            break
    return {**note, "default": methods[0], "tried": tried}


def rank_by_snr(job: GuardJob, workdir: Path, attempt: Attempt) -> list[dict[str, Any]]:
    """An artifact's layers, most harmful first by the error each adds to its own output (``edgeconv debug``'s
    ``added_snr_db``, on RANK_SAMPLES samples of --data, else of the reference samples)."""
    from edgeconv.debug import compare_layers

    feed = job.evaluator.data.feed if job.evaluator.data is not None else job.evaluator.feed
    step = job.evaluator.batch or 1
    total = min(RANK_SAMPLES, len(next(iter(feed.values())))) // step * step
    feeds = [{k: v[i: i + step] for k, v in feed.items()} for i in range(0, total, step)]
    art = attempt.model
    table = compare_layers(job.onnx_path, workdir / art.file, art.runner, art.extra.get("runner_options") or {},
                           job.evaluator.framework, feeds, steps=Steps(), layer_names=job.layer_names)
    ranked = sorted((r for r in table["rows"] if r["rank"] is not None), key=lambda r: r["rank"])
    if job.profile.backend in ("tflite", "coral", "ethos-u"):
        ranked = [r for r in ranked if r["artifact_names"]]  # the denylist takes TFLite tensor names
    return [{"layer": r["layer"], "source": r["source"], "op": r["op"], "nodes": r["nodes"],
             "artifact_names": r["artifact_names"], "snr_db": r["snr_db"], "added_snr_db": r["added_snr_db"]}
            for r in ranked]


def _ranked(g: Guard, base: Attempt) -> list[dict[str, Any]]:
    """``rank_by_snr`` of an attempt, once per guard run (the packed-outputs and float-layers levers both read it)."""
    if base.dir not in g.rankings:
        with g.job.steps.step("int8 guard: ranking the layers by the error each adds (edgeconv debug)"):
            g.rankings[base.dir] = rank_by_snr(g.job, base.dir, base)
    return g.rankings[base.dir]


def _sensitivity(g: Guard, base: Attempt, ranked: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Attempt | None]]:
    """Each of the debugger's worst SENSITIVITY_CANDIDATES layers kept in float alone: the drop on --data that leaves
    (the metric itself, not the layer's own SNR). Past the time cap the rest keep their SNR order, unmeasured."""
    measured: list[tuple[dict[str, Any], Attempt | None]] = []
    start = time.monotonic()
    for layer in ranked[:SENSITIVITY_CANDIDATES]:
        if time.monotonic() - start > SENSITIVITY_SECONDS:
            measured.append((layer, None))
            continue
        label = f"sensitivity: {layer['source'] or layer['layer']} alone in float"
        measured.append((layer, g.attempt("float-layers", label, base.settings, [*base.float_layers, layer], record=False)))
    done = sorted((m for m in measured if m[1] is not None), key=lambda m: m[1].score)
    return [*done, *(m for m in measured if m[1] is None)]


def float_layers(g: Guard) -> dict[str, Any]:
    """Layers kept in float, one more at a time up to --max-float-layers, in the order of what each alone does to the
    drop; the first is the best single layer's attempt itself."""
    job = g.job
    base = g.best
    ranked = _ranked(g, base)
    if not ranked:
        return {"name": "float-layers", "skipped": "the debugger found no layer of this artifact to keep in float"}
    measured = _sensitivity(g, base, ranked)
    order = [layer for layer, _ in measured] + [r for r in ranked if r["layer"] not in {m[0]["layer"] for m in measured}]
    first_single = measured[0][1]
    chosen: list[dict[str, Any]] = []
    for k in range(1, job.max_float_layers + 1):
        if k > len(order):
            break
        chosen = [*chosen, order[k - 1]]
        if k == 1 and first_single is not None:
            g.attempts.append(first_single)
            a = first_single
        else:
            label = f"{k} layer(s) in float ({', '.join(c['source'] or c['layer'] for c in chosen)})"
            a = g.attempt("float-layers", label, base.settings, [*base.float_layers, *chosen])
        if a.ok:
            break
    return {"name": "float-layers", "ranking": _ranking(ranked, measured),
            "ranked_by": f"the guard's metric ({base.score_name}) with each layer alone in float (measured for the debugger's "
                         f"{SENSITIVITY_CANDIDATES} worst by added SNR on {RANK_SAMPLES} samples, "
                         f"{SENSITIVITY_SECONDS:.0f} s cap); the rest by added SNR"}


def _ranking(ranked: list[dict[str, Any]], measured: list[tuple[dict[str, Any], Attempt | None]]) -> list[dict[str, Any]]:
    drops = {layer["layer"]: (a.score if a is not None else None) for layer, a in measured}
    order = [layer for layer, _ in measured] + [r for r in ranked if r["layer"] not in drops]
    return [{"layer": r["layer"], "source": r["source"], "added_snr_db": r["added_snr_db"],
             "alone_in_float": drops.get(r["layer"])} for r in order[:10]]


def packed(reference: np.ndarray) -> bool:
    """Whether an output packs quantities of very different ranges along its channel axis (axis 1): a detector's box
    coordinates in pixels beside its class scores in [0, 1]. One per-tensor int8 scale then rounds the small ones away."""
    if reference.ndim < 2 or reference.shape[1] < 2 or not np.issubdtype(reference.dtype, np.floating):
        return False
    per_channel = np.abs(np.moveaxis(reference, 1, 0).reshape(reference.shape[1], -1)).max(axis=1)
    per_channel = per_channel[per_channel > 0]
    return per_channel.size >= 2 and float(per_channel.max() / per_channel.min()) > PACKED_RANGE_RATIO


def _producers(onnx_path: Path, outputs: list[str]) -> set[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {n.name for n in graph.node if set(n.output) & set(outputs)}


def packed_outputs(g: Guard) -> dict[str, Any]:
    """An output that packs quantities of very different ranges (``packed``) computed in float at its last layer, so
    each part keeps the int8 scale of its own range up to there."""
    note: dict[str, Any] = {"name": "packed-outputs"}
    ev, job = g.job.evaluator, g.job
    names = [n for n, ref in zip(ev.names, ev.expected) if packed(ref)]
    if not names:
        return {**note, "skipped": f"no output's channel ranges differ more than {PACKED_RANGE_RATIO:g}×"}
    base = g.best
    producers = _producers(job.onnx_path, names)
    layers = [r for r in _ranked(g, base) if set(r["nodes"]) & producers]
    if not layers:
        return {**note, "outputs": names, "skipped": "the artifact exposes no layer that writes them"}
    label = f"packed output(s) {', '.join(names)} written in float ({', '.join(r['source'] or r['layer'] for r in layers)})"
    a = g.attempt("packed-outputs", label, base.settings, [*base.float_layers, *layers])
    return {**note, "outputs": names, "layers": [r["source"] or r["layer"] for r in layers], a.score_name: a.score,
            "ok": a.ok}


def int16_activations(g: Guard) -> dict[str, Any]:
    """Every activation in 16 bits with int8 weights, where the backend has it (ONNX Runtime QDQ 16-bit, TFLite 16x8),
    from the best calibration and without float layers."""
    note: dict[str, Any] = {"name": "int16-activations"}
    if not getattr(g.job.target, "int16_activations", False):
        return {**note, "skipped": f"{g.job.profile.backend} has no 16-bit activations with int8 weights here"}
    base = g.best
    a = g.attempt("int16-activations", "16-bit activations, int8 weights", replace(base.settings, activations="int16"), [])
    return {**note, a.score_name: a.score, "ok": a.ok}


def qat(g: Guard) -> dict[str, Any]:
    """Quantization-aware fine-tuning on ``--finetune`` (edgeconv/convert/qat.py), then the backend's int8 of the
    fine-tuned graph with the best calibration so far: alone, then with the best attempt's float layers."""
    from edgeconv.errors import ConversionFailed, MissingDependency

    note: dict[str, Any] = {"name": "qat"}
    job = g.job
    if job.tune is None:
        return {**note, "skipped": "no --finetune TRAIN.npz (a labelled training set for a PyTorch source) was given"}
    if job.goal != "accuracy":
        return {**note, "skipped": "fine-tuning changes the model's outputs: it is judged by --max-accuracy-drop on "
                                   "labelled --data, not by agreement or parity with the source"}
    base = g.best
    try:
        tuned = job.tune(g.scratch / "qat")
    except (ConversionFailed, MissingDependency) as exc:
        return {**note, "failed": exc.message}
    settings = replace(base.settings, activations="int8")
    a = g.attempt("qat", "fine-tuned with quantization in the loop, full int8", settings, [], tuned=tuned)
    tried = [{"float_layers": 0, a.score_name: a.score, "ok": a.ok}]
    if not a.ok and base.float_layers:
        label = f"fine-tuned, {len(base.float_layers)} layer(s) in float as before"
        b = g.attempt("qat", label, settings, base.float_layers, tuned=tuned)
        tried.append({"float_layers": len(base.float_layers), b.score_name: b.score, "ok": b.ok})
    return {**note, **tuned.record, "tried": tried}


LEVERS = {"calibration": calibration, "packed-outputs": packed_outputs, "float-layers": float_layers,
          "int16-activations": int16_activations, "qat": qat}
