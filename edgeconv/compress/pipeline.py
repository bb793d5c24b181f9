"""``compress`` itself: check, load, compress (prune channels, factorise, sparsify, fine-tune), write the .pt2 and read it
back, measure both, report. Each step is a function below; the result is written only when every step worked."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.compress.checks import check_request, refuse_family
from edgeconv.compress.load import Loaded, load, outputs
from edgeconv.compress.measure import graph_metrics, latency, source_pt2, top1
from edgeconv.compress.channels import prune_channels
from edgeconv.compress.methods import MagnitudePruning, count_parameters, low_rank
from edgeconv.compress.pays import keep_where_it_pays
from edgeconv.compress.report import build_report
from edgeconv.compress.request import PARITY_ATOL, PARITY_RTOL, CompressRequest
from edgeconv.compress.training import finetune
from edgeconv.core.text import first_line
from edgeconv.errors import ConversionFailed
from edgeconv.frontends.base import LoadOptions
from edgeconv.lazy import require
from edgeconv.progress import Steps, TrainingProgress

Counts = dict[str, tuple[int, int]]  # "before"/"after" -> (parameters, non-zero parameters)


def compress(req: CompressRequest, steps: Steps | None = None, progress: TrainingProgress | None = None) -> dict[str, Any]:
    """Compress ``req.model`` into ``req.output`` (written only when every step worked) and report before/after."""
    from edgeconv.frontends import detect_family

    steps = steps or Steps()
    progress = progress or TrainingProgress()
    check_request(req)
    refuse_family(req.model, detect_family(req.model))
    torch = require("torch", why="to compress PyTorch models")
    with steps.step(f"loading {req.model.name}"):
        loaded = load(torch, req)
    counts = {"before": count_parameters(loaded.model)}
    methods, history = _apply(torch, req, loaded, steps, progress)
    counts["after"] = count_parameters(loaded.model)
    with torch.no_grad():
        shapes = [list(o.shape) for o in outputs(torch, loaded.model(*loaded.args))]
    if shapes != [list(o.shape) for o in loaded.ref]:
        raise ConversionFailed(f"the compressed model's outputs are {shapes}, the source's {[list(o.shape) for o in loaded.ref]}")
    before, after, lat = _write_and_measure(torch, req, loaded, counts, steps)
    return build_report(req, loaded, methods, history, before, after, lat)


def _apply(torch, req: CompressRequest, loaded: Loaded, steps: Steps,
           progress: TrainingProgress) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The methods asked for, in their order, on ``loaded.model`` in place; fine-tuning when there is a training set.
    Returns each method's record and the fine-tuning history (None without ``--finetune``)."""
    model = loaded.model
    methods: list[dict[str, Any]] = []
    if req.prune_channels is not None:
        with steps.step(f"pruning {req.prune_channels:.0%} of channels (Torch-Pruning DepGraph)"):
            model, record = prune_channels(torch, model, loaded.args, req.prune_channels, loaded.functional, req.round_to)
            loaded.model = model
            methods.append(record)
    if req.low_rank is not None:
        originals: dict[str, Any] = {}
        with steps.step("low-rank factorisation (truncated SVD)"):
            record = low_rank(torch, model, req.low_rank, originals)
        with steps.step("timing each factorised layer against its original (ONNX Runtime)"), \
                tempfile.TemporaryDirectory(prefix="edgeconv-lowrank-") as tmpdir:
            keep_where_it_pays(torch, model, loaded, record, originals, Path(tmpdir), runs=req.runs, warmup=req.warmup,
                               threads=req.threads, keep_slower=req.keep_slower)
        methods.append(record)
    magnitude = MagnitudePruning(torch, model, req.sparsity) if req.sparsity is not None else None
    history = None
    if loaded.train is not None:
        history = finetune(torch, model, loaded.specs, loaded.train[0], loaded.train[1], epochs=req.epochs_or_default,
                           lr=req.lr_or_default, batch_size=req.batch_size_or_default, seed=req.seed, magnitude=magnitude,
                           progress=progress)
    elif magnitude is not None:
        magnitude.step(req.sparsity)
    if magnitude is not None:
        methods.append(magnitude.finish())
    return methods, history


def _write_and_measure(torch, req: CompressRequest, loaded: Loaded, counts: Counts,
                       steps: Steps) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The compressed model written next to ``req.output``, checked and measured against the source, then moved into
    place. Returns the before and after figures and the latency record."""
    req.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = req.output.with_name(f".{req.output.name}.{os.getpid()}.tmp.pt2")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeconv-compress-") as tmpdir:
            tmp = Path(tmpdir)
            with steps.step(f"writing {req.output.name} (torch.export) and reading it back"):
                written = _write_checked(torch, req.output.name, loaded, tmp_out)
                original_pt2, pt2_note = source_pt2(torch, loaded.source, req.model, loaded.args, tmp / "source.pt2")
            before, after, lat = _measure(req, loaded, written, tmp, steps)
            before |= {"parameters": counts["before"][0], "nonzero_parameters": counts["before"][1],
                       "file_bytes": req.model.stat().st_size,
                       "pt2_bytes": None if original_pt2 is None else original_pt2.stat().st_size,
                       "p50_ms": lat["stats"]["before"]["p50_ms"]}
            if pt2_note:
                before["pt2_note"] = pt2_note
            after |= {"parameters": counts["after"][0], "nonzero_parameters": counts["after"][1],
                      "file_bytes": tmp_out.stat().st_size, "pt2_bytes": tmp_out.stat().st_size,
                      "p50_ms": lat["stats"]["after"]["p50_ms"]}
        os.replace(tmp_out, req.output)
    finally:
        tmp_out.unlink(missing_ok=True)
    return before, after, lat


def _write_checked(torch, name: str, loaded: Loaded, dest: Path):
    """The compressed model exported with torch.export to ``dest``, read back through the frontend and checked against
    the module in memory. Returns the written model as a frontend source."""
    from edgeconv.frontends import load_source

    with torch.no_grad():
        ours = [o.numpy() for o in outputs(torch, loaded.model(*loaded.args))]
    try:
        program = torch.export.export(loaded.model.eval(), loaded.args)
        torch.export.save(program, str(dest))
    except Exception as exc:
        raise ConversionFailed(f"torch.export could not export the compressed model: {type(exc).__name__}: "
                               f"{first_line(exc)}") from exc
    written = load_source(dest, LoadOptions())
    theirs = [np.asarray(o) for o in written.run(loaded.example)]
    ours_shapes, theirs_shapes = [list(o.shape) for o in ours], [list(o.shape) for o in theirs]
    if ours_shapes != theirs_shapes:  # before any arithmetic: mismatched arrays would not subtract
        raise ConversionFailed(f"the written {name} returns outputs of shapes {theirs_shapes}; the "
                               f"compressed model returns {ours_shapes}")
    worst = max((float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs, strict=True) if a.size), default=0.0)
    if not all(np.allclose(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL) for a, b in zip(ours, theirs, strict=True)):
        raise ConversionFailed(f"the written {name} does not compute what the compressed model computes "
                               f"(max abs difference {worst:.3g})")
    return written


def _measure(req: CompressRequest, loaded: Loaded, written, tmp: Path,
             steps: Steps) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Both models exported to ONNX in ``tmp``: MACs and int8 size, ONNX Runtime latency, top-1 on ``--data``."""
    with steps.step("exporting both to ONNX: MACs, int8 size"):
        before = graph_metrics(loaded.source, loaded.specs, tmp / "before.onnx")
        after = graph_metrics(written, loaded.specs, tmp / "after.onnx")
    with steps.step("timing both on ONNX Runtime (fp32, interleaved)"):
        lat = latency({"before": tmp / "before.onnx", "after": tmp / "after.onnx"}, loaded.example,
                      runs=req.runs, warmup=req.warmup, threads=req.threads)
    if loaded.val is not None:
        with steps.step(f"top-1 on {req.data.name}"):
            before["top1"] = top1(tmp / "before.onnx", loaded.val[0], loaded.val[1])
            after["top1"] = top1(tmp / "after.onnx", loaded.val[0], loaded.val[1])
    return before, after, lat
