"""``edgeconv sweep``: many models × many targets, each cell the `convert` and `validate` commands themselves, on this
machine (``--jobs N``) or a Ray cluster (``--ray ADDRESS``), into one results.json, matrix.md and results.html;
resumable, and gated on an earlier run with ``--baseline``. See docs/architecture.md, "Sweeps"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeconv.errors import BadInput


@dataclass
class SweepRequest:
    run_dir: Path
    models: list[Path]
    targets: list[str]
    precisions: list[str]
    plan: Path | None = None
    data: Path | None = None
    calib: Path | None = None
    sample: Path | None = None
    jobs: int = 1
    ray: str | None = None  # a Ray address, "auto" for the running cluster
    keep_bundles: bool = False
    timeout: float = 1800.0
    warm_workers: bool = True  # the local pool: a warm worker per job thread (False: a fresh process per command)
    recycle: int = 40  # commands per warm worker
    baseline: Path | None = None
    accuracy_tolerance: float = 0.5
    latency_tolerance: float = 0.10


def plan_cells(req: SweepRequest):
    """The request's cells, each with its key (what its result depends on, edgeconv's code included)."""
    from edgeconv.export_cache import code_fingerprint
    from edgeconv.sweep.plan import cell_key, cells_from_args, read_plan

    if req.plan is not None and (req.models or req.targets):
        raise BadInput("give a --plan or MODEL... with --targets, not both")
    if req.plan is None and not req.targets:
        raise BadInput("--targets is required without --plan (e.g. --targets onnx,tflite)")
    if req.plan is not None:
        cells = read_plan(req.plan)
    else:
        cells = cells_from_args(req.models, req.targets, req.precisions, data=req.data, calib=req.calib, sample=req.sample)
    code = code_fingerprint()
    for c in cells:
        c.key = cell_key(c, code)
    return cells, code


def _executor(req: SweepRequest):
    if req.ray is not None:
        from edgeconv.sweep.ray_exec import RayPool

        return RayPool(req.run_dir, req.ray, timeout=req.timeout, keep_bundles=req.keep_bundles)
    from edgeconv.sweep.local import LocalPool

    return LocalPool(req.run_dir, req.jobs, timeout=req.timeout, keep_bundles=req.keep_bundles, warm=req.warm_workers,
                     recycle=req.recycle)


def run_sweep(req: SweepRequest, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the cells not already done at the same key; results.json is rewritten after every cell."""
    progress = progress or (lambda line: None)
    from edgeconv.sweep.results import Results, read_results

    old = read_results(req.baseline) if req.baseline is not None else None  # a bad baseline: before any work
    cells, code = plan_cells(req)
    req.run_dir.mkdir(parents=True, exist_ok=True)
    results = Results(req.run_dir, code)
    order = [c.cell_id for c in cells]
    todo = [c for c in cells if not results.done(c.cell_id, c.key)]
    progress(f"{len(cells)} cells, {len(cells) - len(todo)} already done at the same inputs; running {len(todo)}")
    results.save(order)
    for k, rec in enumerate(_executor(req).run(todo), 1):
        results.add(rec)
        results.save(order)
        progress(f"[{k}/{len(todo)}] {rec['cell_id']}: {rec['status']}"
                 + (f" at {rec['stage']}: {rec['reason']}" if rec["status"] != "passed" else "")
                 + f" ({rec.get('seconds', 0):.0f} s)")
    return summarize(req, order, old)


def summarize(req: SweepRequest, order: list[str], old: dict[str, Any] | None) -> dict[str, Any]:
    from collections import Counter

    from edgeconv.sweep.baseline import compare_results
    from edgeconv.sweep.results import read_results

    doc = read_results(req.run_dir / "results.json")
    wanted = set(order)
    cells = [r for r in doc["cells"] if r["cell_id"] in wanted]
    out = {"run_dir": str(req.run_dir), "cells": len(cells), "by_status": dict(Counter(r["status"] for r in cells)),
           "results": str(req.run_dir / "results.json"), "matrix": str(req.run_dir / "matrix.md"),
           "html": str(req.run_dir / "results.html"), "baseline": None}
    if old is not None:
        out["baseline"] = {"file": str(req.baseline), **compare_results(old, doc, accuracy_tolerance=req.accuracy_tolerance,
                                                                        latency_tolerance=req.latency_tolerance)}
    return out
