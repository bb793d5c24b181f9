"""A validate request executed on an open backend: parity against reference.npz, accuracy (or what unlabelled data
can say), latency, budgets, the verdict and the report. ``edgeconv validate`` runs :func:`execute` in-process on its
runners; the bundle's device runner runs the same function on a device (Apache TVM's one ``run_module`` for local
and RPC sessions), so a budget missed on a device fails exactly as it does on the desk. See docs/architecture.md."""

import os

import numpy as np

from .accuracy import drop_budget, outputs_on_data, recorded_score_output, score_output, scored, source_accuracy, topk_accuracy
from .data import head, reference, run_batched
from .errors import BadInput
from .conditions import conditions, snapshot
from .machine import HOST_EMULATION, measured_on
from .memory import PhaseMemory, memory_budget
from .parity import compare_outputs, tolerance_of
from .stream import stream_check, without_arrays
from .stats import LATENCY_METHOD, cold_start, latency_budget, measure
from .steps import no_step


def execute(request, bundle_dir, manifest, art, backend, data=None, reopen=None, step=None, memory=None):
    """Run a complete validate request on an open backend and return the report.

    ``backend``: ``prepare(feed)``, ``run(prepared) -> outputs``, ``last_s``, ``info()``, ``fixed_batch()``
    (and ``async_throughput(feed)`` where the runtime has one). ``data``: ``(feed, labels, record)`` with
    ``record = {path, sha256, count}``. ``reopen()``: a fresh backend, for the cold-start figure. ``step(label)``:
    a context manager announcing each step. ``memory``: the :class:`PhaseMemory` the backend was opened under
    (``open_measured``), to which the first inference and the steady state are added."""
    step = step or no_step
    memory = memory or PhaseMemory()
    m = manifest
    report = {
        "bundle": str(bundle_dir), "target": m["target"]["profile"], "precision": m["precision"], "artifact": art["file"],
        "runner": art["runner"], "measured_on": measured_on(art, backend, request["where"], m["target"]),
        "checks": [], "budgets": [],
        "calibration": m.get("calibration"), "io_layout": request["io_layout"],
    }
    batch = backend.fixed_batch()
    ref_in, ref_out = reference(bundle_dir, m, art, request["io_layout"])
    with memory.phase("first_inference"):
        backend.run(backend.prepare(head(ref_in, batch or 1)))
    with step("Parity against reference.npz"):
        outputs = _parity(report, request, m, art, backend, ref_in, ref_out, batch)
    if data is not None and data[1] is None:
        outputs.update(_unlabelled(report, request, m, backend, data, batch, step))
    if data is not None and data[1] is not None:
        outputs.update(_accuracy(report, request, m, backend, data, batch, step))
    if request["stream"]:
        with step("Stream: %d consecutive chunks, state carried" % request["stream"]["steps"]):
            report["stream"] = stream_check(request, m, backend)
            report["checks"].append({"name": "stream parity", "ok": report["stream"]["ok"]})
    timing = _device_only_timing(request, art, report)
    _latency(report, timing, backend, ref_in, batch or 1, reopen, step, memory)
    if timing is not request:  # a few runs on the emulator, labelled: the device's latency is measured on it
        report["latency"]["device_only"] = art["latency_device_only"]
    _memory(report, request, m, art, bundle_dir, memory)
    report["ok"] = bool(all(c["ok"] for c in report["checks"]) and all(b["ok"] for b in report["budgets"]))
    report["request"] = without_arrays(request)
    if request.get("outputs_file"):
        np.savez(request["outputs_file"], **outputs)
        report["outputs_file"] = request["outputs_file"]
    return report


# latency a target says only its device gives (qnn: QNN's HTP emulator runs here, 50-120x slower): a few runs
EMULATOR_TIMING = {"runs": 3, "warmup": 1, "min_seconds": 0.0, "warmup_seconds": 0.0, "stable": False}


def _device_only_timing(request, art, report):
    """The request's timing, or EMULATOR_TIMING where the artifact says ``latency_device_only`` and this is not it."""
    if not art.get("latency_device_only") or report["measured_on"]["kind"] != HOST_EMULATION:
        return request
    return dict(request, **EMULATOR_TIMING)


def _named(prefix, manifest, arrays):
    return dict((prefix + s["name"], a) for s, a in zip(manifest["outputs"], arrays))


def _parity(report, request, m, art, backend, ref_in, ref_out, batch):
    """Every output on reference.npz's inputs against the source's outputs; returns the outputs by ``reference:NAME``."""
    overrides = dict(m["tolerances"].get("overrides") or {})
    overrides.update(request["atol"] or {})
    actual = run_batched(backend, ref_in, batch)
    parity = compare_outputs("%s (%s) vs %s reference" % (art["file"], art["runner"], m["source"]["framework"]),
                             [s["name"] for s in m["outputs"]], ref_out, actual,
                             tolerance_of(m["tolerances"].get(m["precision"]) or {}), overrides)
    report["parity"] = parity
    report["checks"].append({"name": "parity", "ok": parity["ok"]})
    return _named("reference:", m, actual)


def _unlabelled(report, request, m, backend, data, batch, step):
    """Unlabelled --data: every item run, outputs finite, agreement with the source's predictions where sent."""
    feed, _, record = data
    if request["max_accuracy_drop"] is not None:
        raise BadInput("--max-accuracy-drop needs labels: %s has no 'y' (save it with numpy.savez(path, x=..., y=...))"
                       % record["path"])
    with step("Outputs on %s (no labels)" % os.path.basename(record["path"])):
        out = run_batched(backend, feed, batch)
        report["outputs_on_data"] = outputs_on_data(out, record, request, [s["name"] for s in m["outputs"]],
                                                    recorded_score_output(m, request))
        report["checks"].append({"name": "finite outputs", "ok": report["outputs_on_data"]["finite"]})
    return _named("data:", m, out)


def _accuracy(report, request, m, backend, data, batch, step):
    """Labelled --data: top-1/top-5 of the scored output against the source's, and the accuracy budget."""
    feed, labels, record = data
    with step("Accuracy on %s" % os.path.basename(record["path"])):
        out = run_batched(backend, feed, batch)
        names = [s["name"] for s in m["outputs"]]
        idx, chosen_by = score_output(names, out, labels, *recorded_score_output(m, request))
        if idx is None:
            raise BadInput("--data needs a classifier output of shape (N, classes); this model has none")
        acc = dict(scored(names, idx, chosen_by), artifact=topk_accuracy(out[idx], labels), data=record)
        src = source_accuracy(m, record, request, acc["output"])
        acc["source"] = src
        limit = request["max_accuracy_drop"]
        budget = None if src is None else drop_budget(src["top1"], acc["artifact"]["top1"], len(labels), limit)
        acc["drop_points"] = None if budget is None else budget["drop_points"]
        report["accuracy"] = acc
        if limit is not None:
            if budget is None:
                raise BadInput("--max-accuracy-drop needs the source model's accuracy on this data and output (%s): pass "
                               "--source MODEL, or convert with --data on the same file" % acc["output"])
            report["budgets"].append({"name": "max_accuracy_drop_points", "limit": limit, "value": acc["drop_points"],
                                      "ok": budget["ok"], "compared": budget["compared"]})
    return _named("data:", m, out)


def _latency(report, request, backend, ref_in, lat_batch, reopen, step, memory):
    """Latency of one batch of reference inputs (warm-up and timed runs by count and time, their stability, the
    conditions before and after), the async throughput where the runtime has one, the cold start where the backend can
    be opened again, and the latency budget (never passed on an unstable measurement unless allowed)."""
    one = head(ref_in, lat_batch)
    with step("Latency: >= %d warm-up runs and %g s, >= %d timed runs and %g s%s, batch %d" % (
            request["warmup"], request["warmup_seconds"], request["runs"], request["min_seconds"],
            " (rounds until stable)" if request["stable"] else "", lat_batch)):
        before = snapshot()
        lat = measure(backend, one, request, lat_batch, around=lambda: memory.phase("steady_state"), reopen=reopen)
        lat.update({"batch": lat_batch, "method": LATENCY_METHOD,
                    "measured": report["measured_on"]["kind"]})  # under emulation: EMULATED_LABEL
        report["latency"] = lat
        report["conditions"] = conditions(before, snapshot(), report["measured_on"].get("threads"))
    if hasattr(backend, "async_throughput"):
        with step("Throughput (async queue)"):
            tput = backend.async_throughput(one)
            if tput:
                report["throughput_async"] = tput
    if reopen is not None:
        with step("Cold start (load + first inference)"):
            report["cold_start"] = cold_start(reopen, one)
    if request["max_latency_ms"] is not None:
        report["budgets"].append(latency_budget(lat, request["max_latency_ms"], request["allow_unstable"]))


def _memory(report, request, m, art, bundle_dir, memory):
    """Memory per phase, the model's size on disk (with its weights file where the format splits them) and the budget."""
    files = [os.path.join(str(bundle_dir), a["file"]) for a in m["artifacts"]
             if a["file"] == art["file"] or a.get("role") == "weights"]
    report["memory"] = memory.report(files, request["max_memory_mb"], m)
    report["load"] = memory.load_report(report.get("cold_start"))  # cold (first in this process) vs warm (a later one)
    if request["max_memory_mb"] is not None:
        report["budgets"].append(memory_budget(report["memory"], request["max_memory_mb"]))
