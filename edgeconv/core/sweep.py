"""A profile request: latency, throughput and memory per batch size (the sweep), or per-layer times. Which batch
sizes an artifact can be swept over is decided here, once, for edgeconv's profile and the device runner alike; the
knee and the best batch under a budget are worked out by edgeconv, wherever the rows were measured.
See docs/architecture.md."""

import time

import numpy as np

from .data import reference, tile
from .layers import execute_layers
from .machine import measured_on
from .memory import peak_since_reset, reset_peak
from .parity import tolerance_of
from .stats import rss_bytes, summarize_latency
from .steps import no_step
from .text import first_line

DEFAULT_MAX_BATCH = 32
SWEEP_METHOD = ("runtime call only (validate's timing); throughput and per-item time from the median latency; RSS delta: "
                "peak (sampled after each warm-up run and after the timed runs) minus RSS before the batch size's first run; "
                "peak RSS: the process's high-water mark (VmHWM) reset before each batch size where /proc/self/clear_refs "
                "allows, else that sampled peak")


def default_batch_sizes(manifest):
    """1, 2, 4 … up to the largest batch the artifact was built for (a TensorRT profile's max), else 32."""
    return [2 ** i for i in range(6) if 2 ** i <= _max_batch(manifest)]


def _max_batch(manifest):
    for a in manifest["artifacts"]:
        shapes = (a.get("device_build") or {}).get("shapes")
        if shapes:
            return max(s["max"][0] for s in shapes.values())
    return DEFAULT_MAX_BATCH


def sweep_plan(manifest, backend, requested):
    """``(sizes, notes, can_single)``: the batch sizes to sweep (those asked for, else every default one the artifact
    can take), a note where a fixed batch overrides them, and whether batch-1 outputs can be had for the agreement."""
    fixed = backend.fixed_batch()
    resizable = fixed is None or backend.resizes_batch
    sizes = sorted(set(int(b) for b in requested)) if requested else (
        default_batch_sizes(manifest) if resizable else [fixed or 1])
    notes = []
    if not resizable and any(b != fixed for b in sizes):
        why = ("the Edge TPU compiler fixes every shape" if manifest["target"]["backend"] == "coral"
               else "static export; re-convert with --dynamic-batch to sweep")
        notes.append("the artifact has a fixed batch of %d, so only batch %d is profiled (%s)" % (fixed, fixed, why))
        sizes = [fixed]
    return sizes, notes, resizable or fixed == 1


def agreement(batched, singles, atol):
    """Outputs of one batch against the same items run one at a time."""
    max_abs = max(float(np.abs(b.astype(np.float64) - s.astype(np.float64)).max()) if b.size else 0.0
                  for b, s in zip(batched, singles))
    top1 = [float((b.argmax(-1) == s.argmax(-1)).mean()) for b, s in zip(batched, singles) if b.ndim >= 2 and b.shape[-1] > 1]
    agree = min(top1) if top1 else None
    diverges = (atol is not None and max_abs > atol) or (agree is not None and agree < 1.0)
    return {"max_abs_vs_batch1": max_abs, "top1_agreement_vs_batch1": agree, "diverges": bool(diverges)}


def _timed(backend, prepared, runs, warmup, min_time_s, peak):
    """Warm-up and timed runs of one batch size: the runtime's own times and the RSS peak (sampled after each warm-up
    run and after the timed runs: nothing but the runtime between timed runs)."""
    for _ in range(warmup):
        backend.run(prepared)
        peak = max(peak, rss_bytes())
    samples = []
    t_end = time.perf_counter() + (min_time_s or 0)
    while len(samples) < runs or time.perf_counter() < t_end:
        backend.run(prepared)
        samples.append(backend.last_s)
    return samples, max(peak, rss_bytes())


def sweep(backend, ref, sizes, runs, warmup, min_time_s=None, atol=None, can_single=True):
    """One row per batch size: latency percentiles of the runtime call, per-item time, throughput (from the median),
    RSS delta (peak, sampled after the first and every warm-up run and after the timed runs, minus RSS before the
    batch size's first run: reading /proc between timed runs would slow the next one) and agreement with
    batch-1 outputs."""
    items = tile(ref, max(sizes))
    singles = None
    if can_single:
        singles = [backend.run(backend.prepare(dict((k, v[i:i + 1]) for k, v in items.items()))) for i in range(max(sizes))]
    rows = []
    for b in sizes:
        row = {"batch": b}
        base = rss_bytes()  # before this batch size's buffers and workspaces exist
        resettable = reset_peak()
        try:
            prepared = backend.prepare(dict((k, v[:b]) for k, v in items.items()))
            outs = backend.run(prepared)
        except Exception as exc:  # noqa: BLE001  the runtime refuses this batch (its batch baked in): the row says why
            row["error"] = "%s: %s" % (type(exc).__name__, first_line(exc, 200))
            rows.append(row)
            continue
        samples, peak = _timed(backend, prepared, runs, warmup, min_time_s, rss_bytes())
        row["peak_rss_mb"] = max(peak, (peak_since_reset() or 0) if resettable else 0) / 2.0 ** 20
        lat = summarize_latency(samples, b)
        row["stability"] = lat["stability"]
        for k in ("runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_items_s"):
            row[k] = lat[k]
        row["per_item_ms"] = lat["p50_ms"] / b
        row["rss_delta_mb"] = (peak - base) / 2.0 ** 20
        if singles is not None:
            row.update(agreement(outs, [np.concatenate([s[j] for s in singles[:b]]) for j in range(len(outs))], atol))
        rows.append(row)
    return rows


def execute_profile(request, bundle_dir, manifest, art, backend, step=None):
    """A profile request's sweep on an open backend: the rows, and a note where the batch is fixed (a profile has no
    budget of its own to miss: ``ok`` is always true). A request with
    ``layers`` is a per-layer profile instead (:func:`edgeconv.core.layers.execute_layers`)."""
    step = step or no_step
    if request.get("layers"):
        return execute_layers(request, bundle_dir, manifest, art, backend, step)
    sizes, notes, can_single = sweep_plan(manifest, backend, request["batch_sizes"])
    ref_in, _ = reference(bundle_dir, manifest, art, "source")
    tol = tolerance_of(manifest["tolerances"].get(manifest["precision"]) or {})
    with step("Profiling batch sizes %s on %s" % (", ".join(map(str, sizes)), art["runner"])):
        rows = sweep(backend, ref_in, sizes, request["runs"], request["warmup"], request["min_time_s"], tol["atol"],
                     can_single=can_single)
    return {"artifact": art["file"], "measured_on": measured_on(art, backend, request["where"], manifest["target"]),
            "sweep": {"rows": rows, "notes": notes, "method": SWEEP_METHOD}, "request": request, "ok": True}
