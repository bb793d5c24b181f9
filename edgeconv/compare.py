"""``edgeconv compare MODEL``: every requested target × precision that can be built here, converted, validated,
and put in one table with the source framework's own eager run on this machine as the baseline.

The model is exported once for the run: every row converts through one export cache (the user's ``--cache`` /
``EDGECONV_CACHE_DIR``, else a temporary one for the run) at one opset (:func:`run_opset`), so the export and the
canonical step happen once and each target builds from that graph. Rows are announced as they finish ("k/N", with an
estimate of the time left); Ctrl-C stops the run and the rows finished so far are the result (``interrupted``).
The baseline is timed in a clean child process (no other runtime loaded there) with the core's timing
(``edgeconv.core.stats.measure``: the same warm-up, timed runs and stability verdict as every artifact's latency).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.calibration import CalibrationRequest
from edgeconv.core.data import head
from edgeconv.core.text import first_line, shorten
from edgeconv.data import fixed_batch
from edgeconv.errors import CheckFailed, EdgeconvError
from edgeconv.frontends import LoadOptions, detect_family, load_source
from edgeconv.progress import Steps
from edgeconv.specs import Dim

DEFAULT_TARGETS = ("onnx", "tflite", "openvino", "jetson", "coral", "ethos-u", "ncnn", "executorch")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")
BASELINE_TIMEOUT_S = 600
BASELINE_HOW = ("the source framework's own eager run ({framework}, {format}), batch {batch}, in a clean child process "
                "(no other runtime loaded), timed as every artifact is: {method}")


@dataclass
class CompareRequest:
    model: Path
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    precisions: list[str] = field(default_factory=lambda: list(DEFAULT_PRECISIONS))
    calib: CalibrationRequest | None = None
    data: Path | None = None
    input_shapes: dict[str | None, list[Dim]] = field(default_factory=dict)
    load: LoadOptions = field(default_factory=LoadOptions)
    runs: int = 50
    threads: int | None = None
    out_dir: Path | None = None
    cache_dir: Path | None = None  # the export cache (else $EDGECONV_CACHE_DIR, else one for this run)


@dataclass
class Row:
    """One target × precision of the plan; ``fields`` is the row as reported."""

    fields: dict[str, Any]
    profile: Any = None  # the device profile, when the row has work to do
    opset: int | None = None


def plan(req: CompareRequest) -> list[Row]:
    """The rows: each target's requested precisions that it offers; unknown targets and int8 without --calib are rows
    that failed before any work."""
    from edgeconv.profiles import resolve_profile

    rows: list[Row] = []
    for target in req.targets:
        try:
            profile = resolve_profile(target)
        except EdgeconvError as exc:
            rows.append(Row({"target": target, "precision": "—", "status": "failed", "reason": exc.message}))
            continue
        for precision in req.precisions:
            if precision not in profile.precisions:
                continue
            row = Row({"target": profile.name, "precision": precision}, profile)
            if precision.startswith("int8") and req.calib is None:
                row.fields.update(status="failed", reason="int8 needs --calib")
                row.profile = None
            rows.append(row)
    opset = run_opset(req.model, [r.profile for r in rows if r.profile is not None])
    for r in rows:
        if r.profile is not None and opset is not None:
            r.opset = min(opset, r.profile.max_opset or opset)
    return rows


def run_opset(model: Path, profiles: list) -> int | None:
    """The one opset the run exports at, so that every row shares one export: the exporter's default, raised to the
    highest opset a requested target prefers and the exporter writes (tflite's 20, for ONNX Gelu); a profile whose
    parser stops below it gets it lowered (its own export). None for an ONNX source (nothing to export)."""
    import importlib

    from edgeconv.frontends import FRONTENDS
    from edgeconv.targets import backend

    try:
        family = detect_family(model)
    except EdgeconvError:
        return None  # the first row's convert says what is wrong with the file
    if family not in ("torch", "keras"):
        return None
    mod_name, cls_name = FRONTENDS[family].split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    want = cls.default_opset
    for prof in profiles:
        pref = backend(prof.backend).preferred_opset
        if pref and cls.max_export_opset and want < pref <= cls.max_export_opset:
            want = pref
    return want


def compare(req: CompareRequest, steps: Steps | None = None) -> dict[str, Any]:
    steps = steps or Steps()
    rows = plan(req)
    work = [r for r in rows if r.profile is not None]
    interrupted = False
    baseline: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="edgeconv-compare-") as tmp:
        base = req.out_dir or Path(tmp)
        cache_dir = req.cache_dir or (Path(os.environ["EDGECONV_CACHE_DIR"]) if os.environ.get("EDGECONV_CACHE_DIR")
                                      else Path(tmp) / "export-cache")
        t0 = time.perf_counter()
        try:
            for k, row in enumerate(work, 1):
                with steps.step(f"{k}/{len(work)} {row.profile.name} {row.fields['precision']}"):
                    _build_row(req, row, base, cache_dir)
                left = (time.perf_counter() - t0) / k * (len(work) - k)
                steps.note(row_line(row.fields) + (f" · about {left:.0f} s left" if k < len(work) else ""))
            with steps.step("Source framework baseline (eager, clean process)"):
                baseline = _baseline_from(req, base, rows)
        except KeyboardInterrupt:
            interrupted = True
    fields = [r.fields for r in rows if interrupted is False or "status" in r.fields]
    if baseline and baseline.get("p50_ms"):
        for f in fields:
            if f.get("p50_ms"):
                f["speedup_vs_source"] = baseline["p50_ms"] / f["p50_ms"]
    return {"model": str(req.model), "source_baseline": baseline, "rows": fields, "interrupted": interrupted,
            "finished": f"{sum(1 for r in work if 'status' in r.fields)}/{len(work)}",
            "export": _export_summary(work), "seconds": round(time.perf_counter() - t0, 1),
            "note": "figures measured here for another device are labelled \"host emulation on <this machine>, not <device>\""}


def _build_row(req: CompareRequest, row: Row, base: Path, cache_dir: Path) -> None:
    """Convert and validate one row; its outcome (figures, or why it failed) goes into ``row.fields``."""
    from edgeconv.bundle import Bundle
    from edgeconv.convert import ConvertRequest, convert
    from edgeconv.validate import ValidateRequest, validate

    profile, precision, f = row.profile, row.fields["precision"], row.fields
    out = base / f"{profile.name}-{precision}"
    try:
        convert(ConvertRequest(model=req.model, target=profile.name, precision=precision, output=out, force=True,
                               input_shapes=req.input_shapes, load=req.load, data=req.data, opset=row.opset,
                               calib=req.calib if precision.startswith("int8") else None, cache_dir=cache_dir,
                               command_line=["edgeconv", "compare", str(req.model)]))
    except CheckFailed as exc:
        f.update(status="check-failed", reason=exc.message)
    except EdgeconvError as exc:
        f.update(status="failed", reason=first_line(exc.message, 200))
        return
    try:
        report = validate(ValidateRequest(bundle=out, data=req.data, runs=req.runs, threads=req.threads))
    except EdgeconvError as exc:
        f.update(status="failed", reason=f"validate: {first_line(exc.message, 200)}")
        return
    f.setdefault("status", "ok" if report["ok"] else "check-failed")
    manifest = Bundle.open(out, verify=False).manifest
    f.update(_row_fields(report, manifest), bundle=str(out) if req.out_dir else None,
             export_cache=(manifest["export"].get("cache") or {}).get("export"))


def row_line(f: dict[str, Any]) -> str:
    """One finished row, as it is announced."""
    if "p50_ms" not in f:
        return f"{f.get('status')}: {f.get('reason') or ''}"
    return (f"{f['status']} · p50 {f['p50_ms']:.3f} ms · parity max abs {f['parity_max_abs']:.1e} · "
            f"{f['runtime']} ({f['label']})")


def _export_summary(work: list[Row]) -> dict[str, Any]:
    """How many exports the run made (an export the cache had already is not one)."""
    events = [r.fields.get("export_cache") for r in work if "status" in r.fields]
    return {"exports": sum(1 for e in events if e == "stored"), "from_cache": sum(1 for e in events if e == "hit"),
            "opsets": sorted({r.opset for r in work if r.opset is not None})}


def _baseline_from(req: CompareRequest, base: Path, rows: list[Row]) -> dict[str, Any] | None:
    """The baseline on the first measured row's reference inputs (the batch its bundle was built for)."""
    from edgeconv.bundle import Bundle

    ok = next((r.fields for r in rows if "p50_ms" in r.fields), None)
    if ok is None:
        return None
    bundle = Bundle.open(base / f"{ok['target']}-{ok['precision']}", verify=False)
    ref_in, _ = bundle.reference()
    batch = fixed_batch(bundle.inputs) or 1  # a 0-d first input (a sample rate) has no batch
    feed = head(ref_in, batch)  # one feed as the model takes it (a state, a 0-d input): whole
    try:
        return source_baseline(req.model, req.load, feed, batch, req.runs, req.threads)
    except EdgeconvError as exc:
        return {"framework": None, "p50_ms": None, "error": exc.message}


def baseline_request(runs: int, threads: int | None) -> dict[str, Any]:
    """The timing request of every artifact's validate in compare, for the baseline to be timed the same way."""
    from edgeconv.core.request import complete_request
    from edgeconv.validate import ValidateRequest

    return complete_request(ValidateRequest(bundle=Path("."), runs=runs, threads=threads).to_request())


def source_baseline(model: Path, load: LoadOptions, feed: dict[str, np.ndarray], batch: int, runs: int,
                    threads: int | None = None) -> dict[str, Any]:
    """The source framework's eager run of ``model`` on ``feed`` in a clean child process (``python -m edgeconv.compare``),
    timed by :func:`edgeconv.core.stats.measure` with the validate request's timing; the latency and how it was taken."""
    from edgeconv.errors import ConversionFailed

    with tempfile.TemporaryDirectory(prefix="edgeconv-baseline-") as tmp:
        np.savez(Path(tmp) / "feed.npz", **feed)
        job = {"model": str(model), "load": asdict(load), "feed": str(Path(tmp) / "feed.npz"), "batch": batch,
               "request": baseline_request(runs, threads)}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        try:
            proc = subprocess.run([sys.executable, "-m", "edgeconv.compare", str(Path(tmp) / "job.json")],
                                  capture_output=True, text=True, check=True, timeout=BASELINE_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            why = shorten(exc.stderr or "", 600, keep="tail")
            raise ConversionFailed(f"the source baseline's process failed: {why}") from exc
        except subprocess.TimeoutExpired as exc:
            raise ConversionFailed(f"the source baseline took over {BASELINE_TIMEOUT_S} s") from exc
    return json.loads(proc.stdout.strip().splitlines()[-1])


class SourceBackend:
    """The source model as a core backend (``prepare``, ``run``, ``last_s``) for ``core.stats.measure``: a torch
    module called on tensors prepared once, in inference mode; any other framework through its own ``run``."""

    def __init__(self, source):
        self.source = source
        self.torch_module = getattr(source, "module", None) if source.framework == "torch" else None
        self.last_s = 0.0

    def prepare(self, feed):
        return self.source.call_args(feed) if self.torch_module is not None else feed

    def run(self, prepared):
        t0 = time.perf_counter()
        if self.torch_module is not None:
            args, kwargs = prepared
            self.torch_module(*args, **kwargs)
        else:
            self.source.run(prepared)
        self.last_s = time.perf_counter() - t0


def _baseline_job(job_file: str) -> dict[str, Any]:
    """The child process of :func:`source_baseline`: load, time, report (nothing else is imported here)."""
    import contextlib

    from edgeconv.core.stats import LATENCY_METHOD, measure

    job = json.loads(Path(job_file).read_text())
    source = load_source(Path(job["model"]), LoadOptions(**job["load"]))
    with np.load(job["feed"]) as z:
        feed = {k: z[k] for k in z.files}
    backend = SourceBackend(source)
    mode = contextlib.nullcontext()
    if backend.torch_module is not None:
        import torch

        if job["request"]["threads"]:
            torch.set_num_threads(int(job["request"]["threads"]))
        mode = torch.inference_mode()
    with mode:
        lat = measure(backend, feed, job["request"], job["batch"])
    how = BASELINE_HOW.format(framework=source.framework, format=source.format, batch=job["batch"], method=LATENCY_METHOD)
    return {"framework": source.framework, "format": source.format, "p50_ms": lat["p50_ms"], "batch": job["batch"],
            "latency": lat, "how": how, "versions": source.versions(), "modules_loaded": _runtimes_loaded()}


def _runtimes_loaded() -> list[str]:
    """The other runtimes in the baseline's process (none expected): the report shows it."""
    return sorted(m for m in ("onnxruntime", "openvino", "tensorflow", "ai_edge_litert", "executorch", "ncnn")
                  if m in sys.modules)


def _row_fields(report: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """A compare row's figures from the artifact's validation report: size, parity, accuracy, latency with its stability
    verdict, and memory: the peak RSS from the model's load on, above the process's RSS before it (compare runs every
    target in one process, so the runtime's import and edgeconv's own memory are left out: the figure compares the
    artifacts; 0 when a small model fits in memory the process had already)."""
    art = next(a for a in m["artifacts"] if a["file"] == report["artifact"])
    mem = report["memory"]
    load = next((p for p in mem["phases"] if p["phase"] == "model_load"), None)
    after = [p["peak_mb"] for p in mem["phases"][mem["phases"].index(load):]] if load else []
    mo = report["measured_on"]
    return {
        # what ships: the model file plus its weights file where the format splits them (OpenVINO .bin)
        "artifact": art["file"], "bytes": art["bytes"] + sum(a["bytes"] for a in m["artifacts"] if a["role"] == "weights"),
        "parity_max_abs": max((o["max_abs"] or 0.0) for o in report["parity"]["outputs"]), "parity_ok": report["parity"]["ok"],
        "top1": report.get("accuracy", {}).get("artifact", {}).get("top1"),
        "drop_points": report.get("accuracy", {}).get("drop_points"),
        "p50_ms": report["latency"]["p50_ms"], "throughput_items_s": report["latency"]["throughput_items_s"],
        "latency_stability": report["latency"]["stability"]["verdict"],
        "latency_unstable_why": "; ".join(report["latency"]["stability"]["reasons"]) or None,
        "memory_mb": max(0.0, max(after) - load["rss_before_mb"]) if after else None, "peak_rss_mb": mem["peak_mb"],
        "runtime": mo["runtime"], "measured": mo["kind"], "label": mo.get("label") or mo["kind"],
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["target", "precision", "status", "reason", "artifact", "bytes", "parity_max_abs", "top1", "drop_points", "p50_ms",
            "latency_stability", "throughput_items_s", "speedup_vs_source", "memory_mb", "peak_rss_mb", "runtime", "measured",
            "label"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":  # the baseline's clean child process (source_baseline)
    print(json.dumps(_baseline_job(sys.argv[1])))
