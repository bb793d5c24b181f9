"""``edgeconv profile BUNDLE``: latency and throughput per batch size, the knee, the best batch under a latency
budget, and whether outputs change with the batch. Same statistics as ``validate``; talks only to runners."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.bundle import Bundle, write_json
from edgeconv.device.edgeconv_runner import SWEEP_METHOD, sweep
from edgeconv.errors import BadInput
from edgeconv.parity import tolerance_from_dict
from edgeconv.progress import Steps
from edgeconv.runners import open_runner

KNEE_GAIN = 0.10  # a doubling that adds less throughput than this is past the knee
DEFAULT_MAX_BATCH = 32


@dataclass
class ProfileRequest:
    bundle: Path
    batch_sizes: list[int] | None = None
    threads: int | None = None
    runs: int = 50
    warmup: int = 5
    min_time_s: float | None = None
    budget_ms: float | None = None
    plot: Path | None = None
    csv: Path | None = None
    report: Path | None = None


def knee(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest batch from which no larger batch gains KNEE_GAIN or more throughput per doubling.

    Comparing with every larger batch, not just the next one, keeps one noisy point from ending the sweep early;
    the gain is per doubling so that batches 1, 2, 4 … and uneven lists are judged alike.
    """
    ok = [r for r in rows if r.get("throughput_items_s")]
    if not ok:
        return None
    for i, a in enumerate(ok):
        later = ok[i + 1 :]
        if not later:
            return {"batch": a["batch"], "why": f"throughput grows ≥ {KNEE_GAIN:.0%} per doubling up to batch {a['batch']}, "
                                                "the largest measured"}
        gains = [((b["throughput_items_s"] / a["throughput_items_s"]) ** (1 / np.log2(b["batch"] / a["batch"])) - 1, b) for b in later]
        gain, top = max(gains, key=lambda g: g[0])
        if gain < KNEE_GAIN:
            return {"batch": a["batch"], "why": f"no larger batch gains {KNEE_GAIN:.0%} throughput per doubling (at most "
                                              f"{gain:+.0%}, batch {top['batch']})"}
    return None


def best_under_budget(rows: list[dict[str, Any]], budget_ms: float | None) -> dict[str, Any] | None:
    if budget_ms is None:
        return None
    fits = [r for r in rows if r.get("p99_ms") is not None and r["p99_ms"] <= budget_ms]
    if not fits:
        fastest = min((r for r in rows if r.get("p99_ms") is not None), key=lambda r: r["p99_ms"], default=None)
        return {"batch": None, "why": f"no batch size keeps p99 within {budget_ms} ms"
                + (f" (batch {fastest['batch']} is closest at {fastest['p99_ms']:.2f} ms)" if fastest else "")}
    best = max(fits, key=lambda r: r["throughput_items_s"])
    return {"batch": best["batch"], "why": f"batch {best['batch']} gives the most throughput ({best['throughput_items_s']:.0f} items/s) "
                                           f"with p99 {best['p99_ms']:.2f} ms ≤ {budget_ms} ms"}


def profile(req: ProfileRequest, steps: Steps | None = None) -> dict[str, Any]:
    steps = steps or Steps()
    if req.runs < 1:
        raise BadInput("--runs must be ≥ 1")
    bundle = Bundle.open(req.bundle)
    m = bundle.manifest
    art = bundle.artifact_to_run()
    artifact = bundle.path / art["file"]
    options = art.get("runner_options", {})
    runner = open_runner(art["runner"], artifact, threads=req.threads, options=options)
    ref, _ = bundle.reference()
    fixed = runner.fixed_batch()
    resizable = fixed is None or runner.resizes_batch
    sizes = req.batch_sizes or (default_batch_sizes(m) if resizable else [fixed or 1])
    notes = []
    if not resizable and any(b != fixed for b in sizes):
        why = ("the Edge TPU compiler fixes every shape" if m["target"]["backend"] == "coral"
               else "static export; re-convert with --dynamic-batch to sweep")
        notes.append(f"the artifact has a fixed batch of {fixed}, so only batch {fixed} is profiled ({why})")
        sizes = [fixed]
    tol = tolerance_from_dict(m["tolerances"][m["precision"]]) if m["precision"] in m["tolerances"] else None
    with runner, steps.step(f"Profiling batch sizes {', '.join(map(str, sizes))} on {art['runner']}"):
        rows = sweep(runner.prepare, runner.run_prepared, lambda: runner.last_inference_s, ref, sizes, req.runs, req.warmup,
                     req.min_time_s, tol.atol if tol else None, can_single=resizable or fixed == 1)
    measured_on = {**runner.info(), "kind": "host emulation, not device" if art.get("host_emulation") else "host"}
    report = profile_report(bundle, art, measured_on, rows, notes, req.budget_ms,
                            f"per batch: {req.warmup} warm-up, ≥ {req.runs} timed runs"
                            + (f" and ≥ {req.min_time_s} s" if req.min_time_s else "") + "; " + SWEEP_METHOD)
    dest = req.report or bundle.path / "profile.json"
    write_json(dest, report)
    report["report_file"] = str(dest)
    if req.csv:
        _write_csv(req.csv, rows)
    if req.plot:
        plot(report, req.plot)
    return report


def profile_report(bundle: Bundle, art: dict[str, Any], measured_on: dict[str, Any], rows: list[dict[str, Any]],
                   notes: list[str], budget_ms: float | None, method: str) -> dict[str, Any]:
    """The profile report from a sweep's rows, measured here or on a device: the knee and the best batch under
    the budget are worked out where the report is made."""
    m = bundle.manifest
    return {
        "bundle": str(bundle.path), "target": m["target"]["profile"], "precision": m["precision"], "artifact": art["file"],
        "measured_on": measured_on, "method": method, "rows": rows, "knee": knee(rows), "budget_ms": budget_ms,
        "best_under_budget": best_under_budget(rows, budget_ms), "notes": notes,
        "divergent_batches": [r["batch"] for r in rows if r.get("diverges")],
    }


def default_batch_sizes(manifest: dict[str, Any]) -> list[int]:
    return [2**i for i in range(6) if 2**i <= _max_batch(manifest)]


def _max_batch(manifest: dict[str, Any]) -> int:
    for a in manifest["artifacts"]:
        shapes = (a.get("device_build") or {}).get("shapes")
        if shapes:
            return max(s["max"][0] for s in shapes.values())
    return DEFAULT_MAX_BATCH


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "per_item_ms", "throughput_items_s", "rss_delta_mb",
            "max_abs_vs_batch1", "top1_agreement_vs_batch1", "diverges", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot(report: dict[str, Any], path: Path) -> None:
    from edgeconv.lazy import require

    matplotlib = require("matplotlib", why="to draw --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "p50_ms" in r]
    b = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot(b, [r["throughput_items_s"] for r in rows], "o-", color="tab:blue", label="throughput (items/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(b, [str(x) for x in b])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (items/s)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(b, [r["p50_ms"] for r in rows], "s--", color="tab:orange", label="p50 latency per batch (ms)")
    ax2.plot(b, [r["p99_ms"] for r in rows], "^:", color="tab:red", label="p99 latency per batch (ms)")
    ax2.set_ylabel("latency per batch (ms)", color="tab:red")
    if report["knee"]:
        kb = report["knee"]["batch"]
        ax.axvline(kb, color="gray", linestyle="--", linewidth=1)
        lo, hi = ax.get_ylim()
        ax.annotate(f"knee: batch {kb} ", (kb, lo + 0.5 * (hi - lo)), ha="right" if kb == b[-1] else "left", fontsize=8, color="gray")
    if report["budget_ms"] is not None:
        ax2.axhline(report["budget_ms"], color="tab:red", linewidth=0.8, alpha=0.6)
        ax2.annotate(f"budget {report['budget_ms']} ms (p99)", (b[-1], report["budget_ms"]), fontsize=8, va="bottom", ha="right",
                     color="tab:red")
    mo = report["measured_on"]
    ax.set_title(f"{Path(report['bundle']).name}: {report['target']} {report['precision']} · {mo.get('runtime')} "
                 f"{mo.get('version') or ''} · threads {mo.get('threads')} · {mo.get('kind')}", fontsize=9)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
