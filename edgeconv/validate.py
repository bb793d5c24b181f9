"""``edgeconv validate``: run a bundle's artifact on this machine's runtime and report parity, accuracy and
latency, with budgets that fail the run (exit 1) when missed."""

from __future__ import annotations

import platform
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.bundle import Bundle, write_json
from edgeconv.data import accuracy, classifier_output, data_record, load_inputs, run_batched
from edgeconv.errors import BadInput
from edgeconv.frontends import LoadOptions, load_source
from edgeconv.parity import compare, tolerance_from_dict
from edgeconv.progress import Steps
from edgeconv.runners import open_runner, runner_class
from edgeconv.stats import cold_start, summarize_latency, time_runner


@dataclass
class ValidateRequest:
    bundle: Path
    data: Path | None = None
    source: Path | None = None
    trust_pickle: bool = False
    runs: int = 100
    warmup: int = 10
    threads: int | None = None
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    report: Path | None = None
    atol: dict[str | None, float] = field(default_factory=dict)
    device: str | None = None  # runtimes with devices (OpenVINO): CPU, GPU, NPU, AUTO
    inference_precision: str | None = None  # OpenVINO: f32 (default, honest parity) or native
    performance_hint: str | None = None  # OpenVINO: latency (default) or throughput (adds an async-queue figure)
    io_layout: str = "source"  # "nhwc": --data is in the artifact's own layout (TFLite NHWC), fed as it is


def _source_accuracy(req: ValidateRequest, bundle: Bundle, feed, labels, batch) -> dict[str, Any] | None:
    record = data_record(req.data, len(labels))
    if req.source is not None:
        lo = bundle.manifest["source"].get("load_options", {})
        source = load_source(req.source, LoadOptions(lo.get("model_class"), lo.get("model_kwargs") or {}, req.trust_pickle))
        out = run_batched(source.run, feed, batch)
        idx = classifier_output(out)
        return {**record, **accuracy(out[idx], labels), "measured_with": f"{source.framework} (at validate time)"}
    recorded = bundle.manifest.get("source_accuracy")
    if recorded and recorded.get("sha256") == record["sha256"]:
        return {**recorded, "measured_with": f"{recorded.get('measured_with')} (recorded at convert time)"}
    return None


def validate(req: ValidateRequest, steps: Steps | None = None) -> dict[str, Any]:
    steps = steps or Steps()
    if req.runs < 1 or req.warmup < 0:
        raise BadInput("--runs must be ≥ 1 and --warmup ≥ 0")
    if req.max_accuracy_drop is not None and req.data is None:
        raise BadInput("--max-accuracy-drop needs --data (a labelled .npz)")
    bundle = Bundle.open(req.bundle)
    m = bundle.manifest
    art = bundle.artifact_to_run()
    artifact = bundle.path / art["file"]
    runner_name = art["runner"]
    # The artifact's own runner options (device, layouts, ...) with the command line's on top.
    if req.io_layout not in ("source", "nhwc"):
        raise BadInput(f"--io-layout must be source or nhwc, not {req.io_layout!r}")
    if req.io_layout == "nhwc" and art["runner"] != "litert":
        raise BadInput(f"--io-layout nhwc applies to TFLite artifacts; {art['file']} takes the source layout")
    options = {**art.get("runner_options", {}), **({"io_layout": "artifact"} if req.io_layout == "nhwc" else {}),
               **{k: v for k, v in {"device": req.device, "inference_precision": req.inference_precision,
                                    "performance_hint": req.performance_hint}.items() if v is not None}}
    with steps.step(f"Loading {art['file']} on {runner_name}"):
        runner = open_runner(runner_name, artifact, threads=req.threads, options=options)
    report: dict[str, Any] = {
        "bundle": str(bundle.path),
        "target": m["target"]["profile"],
        "precision": m["precision"],
        "artifact": art["file"],
        "measured_on": {"host": socket.gethostname(), "machine": platform.machine(), "platform": platform.platform(),
                        "kind": "host emulation, not device" if art.get("host_emulation") else "host", **runner.info()},
        "checks": [],
        "budgets": [],
        "calibration": m.get("calibration"),
        "io_layout": req.io_layout,
    }
    if art.get("host_emulation"):
        report["measured_on"]["note"] = art.get("host_emulation_note")
    with runner:
        batch = runner.fixed_batch()
        ref_in, ref_out = bundle.reference()
        if req.io_layout == "nhwc":  # the reference is in the source layout: bring it to the artifact's
            perms = art.get("runner_options", {}).get("permutations") or {}
            ref_in = {k: v.transpose(perms[k]) if perms.get(k) else v for k, v in ref_in.items()}
            ref_out = [v.transpose(perms[s.name]) if perms.get(s.name) else v for s, v in zip(bundle.outputs, ref_out)]
        names = [s.name for s in bundle.outputs]
        with steps.step("Parity against reference.npz"):
            tol = tolerance_from_dict(m["tolerances"][m["precision"]])
            overrides = {None if k == "None" else k: v for k, v in m["tolerances"].get("overrides", {}).items()}
            actual = run_batched(runner.infer, ref_in, batch)
            parity = compare(f"{art['file']} ({runner_name}) vs {m['source']['framework']} reference", names, ref_out,
                             actual, tol, overrides | req.atol)
            report["parity"] = parity.to_dict()
            report["checks"].append({"name": "parity", "ok": parity.ok})
        if req.data is not None:
            with steps.step(f"Accuracy on {req.data.name}"):
                feed, labels = load_inputs(req.data, runner.inputs if req.io_layout == "nhwc" else bundle.inputs, need_labels=True)
                out = run_batched(runner.infer, feed, batch)
                idx = classifier_output(out)
                if idx is None:
                    raise BadInput("--data needs a classifier output of shape (N, classes); this model has none")
                acc = {"artifact": accuracy(out[idx], labels), "data": data_record(req.data, len(labels))}
                src = _source_accuracy(req, bundle, feed, labels, batch)
                acc["source"] = src
                acc["drop_points"] = None if src is None else (src["top1"] - acc["artifact"]["top1"]) * 100
                report["accuracy"] = acc
                if req.max_accuracy_drop is not None:
                    if src is None:
                        raise BadInput("--max-accuracy-drop needs the source model's accuracy on this data: pass "
                                       "--source MODEL, or convert with --data on the same file")
                    ok = acc["drop_points"] <= req.max_accuracy_drop
                    report["budgets"].append({"name": "max_accuracy_drop_points", "limit": req.max_accuracy_drop,
                                              "value": acc["drop_points"], "ok": ok})
        lat_batch = batch or 1
        feed = {k: v[:lat_batch] for k, v in ref_in.items()}
        with steps.step(f"Latency: {req.warmup} warm-up + {req.runs} timed runs, batch {lat_batch}"):
            samples = time_runner(runner, feed, warmup=req.warmup, runs=req.runs)
            lat = summarize_latency(samples, lat_batch)
            lat.update({"batch": lat_batch, "warmup": req.warmup,
                        "method": "runtime call only, inputs prepared once, time.perf_counter"})
            report["latency"] = lat
        if hasattr(runner, "async_throughput"):
            with steps.step("Throughput (async queue)"):
                tput = runner.async_throughput(feed)
                if tput:
                    report["throughput_async"] = tput
        with steps.step("Cold start (load + first inference)"):
            cls = runner_class(runner_name)
            report["cold_start"] = cold_start(lambda: cls(artifact, threads=req.threads, options=options), feed)
    if req.max_latency_ms is not None:
        report["budgets"].append({"name": "max_latency_ms_p50", "limit": req.max_latency_ms, "value": lat["p50_ms"],
                                  "ok": lat["p50_ms"] <= req.max_latency_ms})
    report["ok"] = parity.ok and all(b["ok"] for b in report["budgets"])
    dest = req.report or bundle.path / "validation.json"
    write_json(dest, report)
    report["report_file"] = str(dest)
    return report
