"""A validate request executed on an open backend: parity against reference.npz, accuracy (or what unlabelled data
can say), latency, budgets, the verdict and the report. ``edgeconv validate`` runs :func:`execute` in-process on its
runners; the bundle's device runner runs the same function on a device (Apache TVM's one ``run_module`` for local
and RPC sessions), so a budget missed on a device fails exactly as it does on the desk. See docs/architecture.md."""

import os

import numpy as np

from .accuracy import classifier_output, outputs_on_data, source_accuracy, topk_accuracy
from .data import reference, run_batched
from .errors import BadInput
from .machine import measured_on
from .parity import compare_outputs, tolerance_of
from .stats import LATENCY_METHOD, cold_start, summarize_latency, time_backend
from .steps import no_step


def execute(request, bundle_dir, manifest, art, backend, data=None, reopen=None, step=None):
    """Run a complete validate request on an open backend and return the report.

    ``backend``: ``prepare(feed)``, ``run(prepared) -> outputs``, ``last_s``, ``info()``, ``fixed_batch()``
    (and ``async_throughput(feed)`` where the runtime has one). ``data``: ``(feed, labels, record)`` with
    ``record = {path, sha256, count}``. ``reopen()``: a fresh backend, for the cold-start figure. ``step(label)``:
    a context manager announcing each step."""
    step = step or no_step
    m = manifest
    report = {
        "bundle": str(bundle_dir), "target": m["target"]["profile"], "precision": m["precision"], "artifact": art["file"],
        "runner": art["runner"], "measured_on": measured_on(art, backend, request["where"]), "checks": [], "budgets": [],
        "calibration": m.get("calibration"), "io_layout": request["io_layout"],
    }
    batch = backend.fixed_batch()
    ref_in, ref_out = reference(bundle_dir, m, art, request["io_layout"])
    with step("Parity against reference.npz"):
        outputs = _parity(report, request, m, art, backend, ref_in, ref_out, batch)
    if data is not None and data[1] is None:
        outputs.update(_unlabelled(report, request, m, backend, data, batch, step))
    if data is not None and data[1] is not None:
        outputs.update(_accuracy(report, request, m, backend, data, batch, step))
    _latency(report, request, backend, ref_in, batch or 1, reopen, step)
    report["ok"] = bool(all(c["ok"] for c in report["checks"]) and all(b["ok"] for b in report["budgets"]))
    report["request"] = request
    if request.get("outputs_file"):
        np.savez(request["outputs_file"], **outputs)
        report["outputs_file"] = request["outputs_file"]
    return report


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
        report["outputs_on_data"] = outputs_on_data(out, record, request)
        report["checks"].append({"name": "finite outputs", "ok": report["outputs_on_data"]["finite"]})
    return _named("data:", m, out)


def _accuracy(report, request, m, backend, data, batch, step):
    """Labelled --data: top-1/top-5 against the source's, and the accuracy budget."""
    feed, labels, record = data
    with step("Accuracy on %s" % os.path.basename(record["path"])):
        out = run_batched(backend, feed, batch)
        idx = classifier_output(out)
        if idx is None:
            raise BadInput("--data needs a classifier output of shape (N, classes); this model has none")
        acc = {"artifact": topk_accuracy(out[idx], labels), "data": record}
        src = source_accuracy(m, record, request)
        acc["source"] = src
        acc["drop_points"] = None if src is None else (src["top1"] - acc["artifact"]["top1"]) * 100
        report["accuracy"] = acc
        limit = request["max_accuracy_drop"]
        if limit is not None:
            if src is None:
                raise BadInput("--max-accuracy-drop needs the source model's accuracy on this data: pass --source MODEL, "
                               "or convert with --data on the same file")
            report["budgets"].append({"name": "max_accuracy_drop_points", "limit": limit, "value": acc["drop_points"],
                                      "ok": acc["drop_points"] <= limit})
    return _named("data:", m, out)


def _latency(report, request, backend, ref_in, lat_batch, reopen, step):
    """Latency of one batch of reference inputs (warm-up, timed runs), the async throughput where the runtime has one,
    the cold start where the backend can be opened again, and the latency budget."""
    one = dict((k, v[:lat_batch]) for k, v in ref_in.items())
    with step("Latency: %d warm-up + %d timed runs, batch %d" % (request["warmup"], request["runs"], lat_batch)):
        lat = summarize_latency(time_backend(backend, one, request["warmup"], request["runs"]), lat_batch)
        lat.update({"batch": lat_batch, "warmup": request["warmup"], "method": LATENCY_METHOD,
                    "measured": report["measured_on"]["kind"]})  # under emulation: EMULATED_LABEL
        report["latency"] = lat
    if hasattr(backend, "async_throughput"):
        with step("Throughput (async queue)"):
            tput = backend.async_throughput(one)
            if tput:
                report["throughput_async"] = tput
    if reopen is not None:
        with step("Cold start (load + first inference)"):
            report["cold_start"] = cold_start(reopen, one)
    if request["max_latency_ms"] is not None:
        report["budgets"].append({"name": "max_latency_ms_p50", "limit": request["max_latency_ms"], "value": lat["p50_ms"],
                                  "ok": lat["p50_ms"] <= request["max_latency_ms"]})
