"""Per-layer times from the runtime's own profiler (``profile --layers``), against the end-to-end time measured with
the profiler off; and ONNX Runtime's profiling trace read as per-run kernel times. Source names are added by edgeconv
on the host (it reads the ONNX graph), wherever the times were measured. See docs/architecture.md."""

import numpy as np

from .data import reference, tile
from .errors import BadInput, NoLayerProfiler
from .machine import measured_on
from .stats import LATENCY_METHOD, summarize_latency
from .steps import no_step

# Where a runtime gives no per-layer times, the reason (and where such times can be had instead).
NO_LAYER_PROFILER = {
    "litert": "LiteRT's Python interpreter exposes no per-op times (its op profiler is in the C++ benchmark_model tool: "
              "benchmark_model --graph=model.tflite --enable_op_profiling=true)",
    "tensorrt": "per-layer times from TensorRT's IProfiler are not wired into edgeconv's TensorRT runner yet (on the Jetson, "
                "trtexec --loadEngine=model.engine --dumpProfile --separateProfileRun gives them)",
    "ncnn": "edgeconv's ncnn runner has no per-layer timing (ncnn's benchncnn times whole models only)",
    "executorch": "edgeconv's ExecuTorch runner has no per-operator timing (ExecuTorch's ETDump/Inspector is not wired in)",
}
LAYERS_WORK_ON = "ONNX Runtime (onnx, jetson host emulation) and OpenVINO bundles"
LAYER_ROUNDS = 10  # blocks of each kind, alternating, so that drift on a shared machine lands on both
LAYERS_METHOD = ("end-to-end: the runtime call timed as validate times it, with the profiler off; per-layer: the same "
                 "number of runs with the runtime's own profiler on (a second session or compiled model with the same "
                 "options); after the warm-up of each, the timed runs alternate between the two in %d blocks (order "
                 "alternating, one untimed run opening each block); per layer the p50 over its timed runs; share = p50 / "
                 "sum of the layers' p50s" % LAYER_ROUNDS)


def ort_trace_layers(events, keep=0):
    """ONNX Runtime's profiling trace (the JSON list ``enable_profiling`` writes) as per-run kernel times.

    ``keep``: one flag per ``model_run`` in order (False: a warm-up run, not counted), or a number of leading warm-up runs.
    Returns ``(runs, layers)``: ``runs`` one ``{node name: seconds}`` per kept ``model_run`` event, ``layers``
    ``{node name: {"op", "exec_type", "order"}}``. A node event (``cat`` "Node", name ``<node>_kernel_time``) counts for
    the ``model_run`` whose span holds its start; fence events, session loading and initialisation are not counted. A node
    that runs more than once in one run (inside a loop) adds up."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    kernels = sorted((e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
                     key=lambda e: e["ts"])
    if not isinstance(keep, list):
        keep = [i >= keep for i in range(len(runs))]
    if len(keep) != len(runs):
        raise BadInput("ONNX Runtime's profile has %d runs where %d were made" % (len(runs), len(keep)))
    per_run, layers = [], {}
    k = 0
    for i, r in enumerate(runs):
        start, end = r["ts"], r["ts"] + r["dur"]
        times = {}
        while k < len(kernels) and kernels[k]["ts"] < start:
            k += 1
        while k < len(kernels) and kernels[k]["ts"] <= end:
            e = kernels[k]
            k += 1
            if not keep[i]:
                continue
            name = e["name"][:-len("_kernel_time")]
            args = e.get("args") or {}
            if name not in layers:
                layers[name] = {"op": args.get("op_name"), "exec_type": args.get("provider"), "order": len(layers)}
            times[name] = times.get(name, 0.0) + e["dur"] * 1e-6
        if keep[i]:
            per_run.append(times)
    return per_run, layers


def _layer_rows(prof):
    rows = []
    for name, meta in prof["layers"].items():
        # a layer the runtime skipped in some runs (OpenVINO: status NOT_RUN that time) took no time in those runs
        ms = np.asarray([r.get(name, 0.0) for r in prof["runs"]], dtype=np.float64) * 1e3
        if not ms.size:
            continue
        rows.append({"name": name, "op": meta.get("op"), "exec_type": meta.get("exec_type"), "order": meta.get("order"),
                     "runs": sum(1 for r in prof["runs"] if name in r), "p50_ms": round(float(np.median(ms)), 6),
                     "mean_ms": round(float(ms.mean()), 6), "min_ms": round(float(ms.min()), 6),
                     "max_ms": round(float(ms.max()), 6)})
    total = sum(r["p50_ms"] for r in rows)
    for r in rows:
        r["share"] = r["p50_ms"] / total if total > 0 else 0.0
    rows.sort(key=lambda r: (-r["p50_ms"], r["order"]))
    return rows, total


def _counters_over_wall(per_run_sums, prof):
    """One inference's node times cannot add up to more than its wall time (a microsecond of timer rounding per node
    allowed); where they do, the runtime's counters are not a breakdown of that run (seen: OpenVINO 2026.4's brgemm
    FullyConnected reporting 4x the whole inference on a busy 2-core machine)."""
    over = [(s, w * 1e3, r) for s, w, r in zip(per_run_sums, prof["wall_s"], prof["runs"]) if s > w * 1e3 + 1e-3 * len(r)]
    over_wall = {"runs": len(over), "of": len(per_run_sums)}
    if over:
        worst = max(over, key=lambda o: o[0] / o[1])
        over_wall.update({"worst_ratio": worst[0] / worst[1],
                          "worst_layer": max(worst[2], key=worst[2].get) if worst[2] else None})
    return over_wall


def summarize_layers(prof, e2e):
    """The per-layer table from a layer profiler's ``finish()`` and the end-to-end latency (measured without the profiler).

    ``prof``: ``{"runs": [{layer: seconds} per timed run], "layers": {layer: {op, exec_type, order}}, "wall_s": [seconds
    of each profiled run], "not_executed", "profiler"}``. Rows sorted by p50, slowest first: p50/mean/min/max in ms over
    the runs (0 in a run the layer did not run in; ``runs``: how many it ran in) and the share of the sum of the p50s.
    ``sum_ms`` (that sum) against ``end_to_end.p50_ms`` says how much of the runtime call the layers account for;
    ``profiled`` is the end-to-end time of the profiled runs themselves, so the profiler's own overhead shows too."""
    rows, total = _layer_rows(prof)
    per_run_sums = [sum(r.values()) * 1e3 for r in prof["runs"]]
    profiled = summarize_latency(prof["wall_s"]) if prof["wall_s"] else None
    return {
        "statistic": "p50", "rows": rows, "count": len(rows), "not_executed": prof.get("not_executed", 0),
        "sum_ms": total, "per_run_sum_p50_ms": float(np.median(per_run_sums)) if per_run_sums else None,
        "counters_over_wall": _counters_over_wall(per_run_sums, prof),
        "end_to_end": e2e, "profiled": profiled,
        "sum_vs_end_to_end": total / e2e["p50_ms"] if e2e["p50_ms"] else None,
        "profiler_overhead": profiled["p50_ms"] / e2e["p50_ms"] - 1.0 if profiled and e2e["p50_ms"] else None,
        "profiler": prof["profiler"],
    }


def _layers_batch(request, backend):
    """The one batch size a per-layer profile times, and a note where the artifact's fixed batch overrides it."""
    fixed = backend.fixed_batch()
    sizes = request.get("batch_sizes") or [fixed or 1]
    if len(sizes) != 1:
        raise BadInput("--layers profiles one batch size; --batch-sizes gave %s" % ",".join(map(str, sizes)))
    batch = int(sizes[0])
    if fixed is not None and batch != fixed and not backend.resizes_batch:
        return fixed, ["the artifact has a fixed batch of %d, so batch %d is profiled" % (fixed, fixed)]
    return batch, []


def _interleaved(backend, prepared, profiler, warmup, runs):
    """The profiler's warm-up, then the timed runs of the runtime call (profiler off) and of the profiler in
    alternating blocks; returns the end-to-end seconds (the profiler keeps its own)."""
    rounds = min(LAYER_ROUNDS, runs)
    blocks = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    profiler.run(warmup, False)
    samples = []
    for i, n in enumerate(blocks):
        for kind in (("e2e", "layers") if i % 2 == 0 else ("layers", "e2e")):
            if kind == "e2e":
                backend.run(prepared)
                for _ in range(n):
                    backend.run(prepared)
                    samples.append(backend.last_s)
            else:
                profiler.run(1, False)
                profiler.run(n, True)
    return samples


def execute_layers(request, bundle_dir, manifest, art, backend, step=None):
    """A per-layer profile on an open backend, one batch size: the runtime's own per-layer profiler
    (``backend.layer_profiler(feed)``: ``run(n, keep)``, ``finish()``, and ``close()``, always called) against the
    end-to-end latency with the profiler off, their timed runs interleaved in blocks. A backend without a profiler is
    refused with the reason (:data:`NO_LAYER_PROFILER`)."""
    step = step or no_step
    make_profiler = getattr(backend, "layer_profiler", None)
    if make_profiler is None:
        why = NO_LAYER_PROFILER.get(art["runner"], "the %s runner has no per-layer profiler" % art["runner"])
        raise NoLayerProfiler("profile --layers cannot time layers of %s: %s" % (art["file"], why),
                              hint="--layers works on %s; `edgeconv profile BUNDLE` (without --layers) times the whole "
                                   "model on this runtime" % LAYERS_WORK_ON)
    batch, notes = _layers_batch(request, backend)
    feed = tile(reference(bundle_dir, manifest, art, "source")[0], batch)
    warmup, runs = int(request["warmup"]), int(request["runs"])
    with step("Per-layer times from %s's profiler against the end-to-end time: %d warm-up + %d timed runs each, batch %d"
              % (art["runner"], warmup, runs, batch)):
        prepared = backend.prepare(feed)
        for _ in range(warmup):
            backend.run(prepared)
        profiler = make_profiler(feed)
        try:
            e2e = summarize_latency(_interleaved(backend, prepared, profiler, warmup, runs), batch)
            e2e.update({"batch": batch, "warmup": warmup, "method": LATENCY_METHOD})
            layers = summarize_layers(profiler.finish(), e2e)
        finally:  # whatever failed in between: the profiler's session and trace do not outlive the run
            profiler.close()
    layers.update({"batch": batch, "warmup": warmup, "runs": runs, "method": LAYERS_METHOD})
    return {"artifact": art["file"], "runner": art["runner"],
            "measured_on": measured_on(art, backend, request["where"], manifest["target"]),
            "layers": layers, "notes": notes, "request": request, "ok": True}
