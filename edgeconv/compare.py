"""``edgeconv compare MODEL``: every requested target × precision that can be built here, converted, validated,
and put in one table with the source framework's own speed on this machine as the baseline."""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.calibration import CalibrationRequest
from edgeconv.core.text import first_line
from edgeconv.errors import CheckFailed, EdgeconvError
from edgeconv.frontends import LoadOptions, load_source
from edgeconv.progress import Steps
from edgeconv.specs import Dim

DEFAULT_TARGETS = ("onnx", "tflite", "openvino", "jetson", "coral", "ethos-u", "ncnn", "executorch")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")


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


def source_latency(model: Path, load: LoadOptions, feed: dict[str, np.ndarray], runs: int) -> dict[str, Any]:
    """The source framework running the model itself, batch 1, on this machine: the baseline for speed-up."""
    source = load_source(model, load)
    for _ in range(5):
        source.run(feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        source.run(feed)
        times.append(time.perf_counter() - t0)
    return {"framework": source.framework, "format": source.format, "p50_ms": float(np.median(times) * 1e3),
            "versions": source.versions()}


def compare(req: CompareRequest, steps: Steps | None = None) -> dict[str, Any]:
    from edgeconv.bundle import Bundle
    from edgeconv.convert import ConvertRequest, convert
    from edgeconv.profiles import resolve_profile
    from edgeconv.validate import ValidateRequest, validate

    steps = steps or Steps()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgeconv-compare-") as tmp:
        base = req.out_dir or Path(tmp)
        for target in req.targets:
            try:
                profile = resolve_profile(target)
            except EdgeconvError as exc:
                rows.append({"target": target, "precision": "—", "status": "failed", "reason": exc.message})
                continue
            for precision in req.precisions:
                if precision not in profile.precisions:
                    continue
                row: dict[str, Any] = {"target": profile.name, "precision": precision}
                rows.append(row)
                if precision == "int8" and req.calib is None:
                    row.update(status="failed", reason="int8 needs --calib")
                    continue
                out = base / f"{profile.name}-{precision}"
                with steps.step(f"{profile.name} {precision}"):
                    try:
                        convert(ConvertRequest(model=req.model, target=profile.name, precision=precision, output=out, force=True,
                                               input_shapes=req.input_shapes, load=req.load, data=req.data,
                                               calib=req.calib if precision == "int8" else None,
                                               command_line=["edgeconv", "compare", str(req.model)]))
                    except CheckFailed as exc:
                        row.update(status="check-failed", reason=exc.message)
                    except EdgeconvError as exc:
                        row.update(status="failed", reason=first_line(exc.message, 200))
                        continue
                    try:
                        report = validate(ValidateRequest(bundle=out, data=req.data, runs=req.runs, threads=req.threads))
                    except EdgeconvError as exc:
                        row.update(status="failed", reason=f"validate: {first_line(exc.message, 200)}")
                        continue
                row.setdefault("status", "ok" if report["ok"] else "check-failed")
                row.update(_row_fields(report, Bundle.open(out, verify=False).manifest), bundle=str(out) if req.out_dir else None)
        baseline = None
        ok_row = next((r for r in rows if "p50_ms" in r), None)
        if ok_row is not None:
            ref_in, _ = Bundle.open(base / f"{ok_row['target']}-{ok_row['precision']}", verify=False).reference()
            batch = Bundle.open(base / f"{ok_row['target']}-{ok_row['precision']}", verify=False).inputs[0].shape[0]
            feed = {k: v[: batch if isinstance(batch, int) else 1] for k, v in ref_in.items()}
            with steps.step("Source framework baseline"):
                baseline = source_latency(req.model, req.load, feed, req.runs)
            for r in rows:
                if "p50_ms" in r:
                    r["speedup_vs_source"] = baseline["p50_ms"] / r["p50_ms"]
    return {"model": str(req.model), "source_baseline": baseline, "rows": rows,
            "note": "targets that cannot run here (TensorRT engine, Edge TPU) show host-emulation figures, labelled"}


def _row_fields(report: dict[str, Any], m: dict[str, Any]) -> dict[str, Any]:
    """A compare row's figures from the artifact's validation report: size, parity, accuracy, latency with its stability
    verdict, and memory: the peak RSS from the model's load on, above the process's RSS before it (compare runs every
    target in one process, so the runtime's import and edgeconv's own memory are left out: the figure compares the
    artifacts; 0 when a small model fits in memory the process had already)."""
    art = next(a for a in m["artifacts"] if a["file"] == report["artifact"])
    mem = report["memory"]
    load = next((p for p in mem["phases"] if p["phase"] == "model_load"), None)
    after = [p["peak_mb"] for p in mem["phases"][mem["phases"].index(load):]] if load else []
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
        "runtime": report["measured_on"]["runtime"], "measured": report["measured_on"]["kind"],
    }


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["target", "precision", "status", "reason", "artifact", "bytes", "parity_max_abs", "top1", "drop_points", "p50_ms",
            "latency_stability", "throughput_items_s", "speedup_vs_source", "memory_mb", "peak_rss_mb", "runtime", "measured"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
