"""The int8 guard's attempts: what it needs from the conversion in progress (``GuardJob``), one artifact built and
measured (``Attempt``), and the scratch space they are built in (``Guard``). See edgeconv/convert/guard.py."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.convert.checks import Evaluator, score_of
from edgeconv.convert.failures import converter_step
from edgeconv.export_cache import ExportCache
from edgeconv.frontends import LoadOptions
from edgeconv.parity import ParityReport
from edgeconv.profiles import Profile
from edgeconv.progress import Steps
from edgeconv.targets import Artifact, Conversion, QuantSettings, Target, TargetContext, TargetOptions

LATENCY_RUNS = 30
LATENCY_WARMUP = 5


@dataclass
class GuardJob:
    """What the guard needs from the conversion in progress (built by ``guard_step`` from the convert state)."""

    target: Target
    profile: Profile
    topts: TargetOptions
    ctx: TargetContext
    onnx_path: Path
    work: Path  # the bundle being written: the kept artifact's files end up here
    evaluator: Evaluator
    runner_options: dict[str, Any]  # the target's overrides for convert-time runs on this host
    failed_dir: Path
    max_float_layers: int
    layer_names: list[str] | None = None  # a Keras source's layer names (edgeconv debug maps TF scopes back to them)
    steps: Steps = field(default_factory=Steps)
    goal: str = "accuracy"  # what the kept artifact must pass: "accuracy", "agreement" or "parity" (Evaluator.goal)
    model_path: Path | None = None  # the source model and its load options: the guard's own target cache is keyed by them
    load_options: LoadOptions | None = None
    levers: list[str] | None = None  # --levers: the levers to pull, in this order (None: all, in LEVERS order)
    tune: Callable[[Path], Tuned] | None = None  # --finetune: quantization-aware fine-tuning into a folder (guard.py)


@dataclass
class Tuned:
    """The source after quantization-aware fine-tuning (edgeconv/convert/qat.py): its canonical ONNX graph, its outputs
    on the reference feed (the fine-tuned artifacts' parity reference) and what the training did."""

    source: Any  # the fine-tuned model loaded by its frontend (a SourceModel)
    pt2: Path
    onnx_path: Path
    expected: list[np.ndarray]
    record: dict[str, Any]
    onnx_parity: dict[str, Any] = field(default_factory=dict)  # its ONNX graph against it (as check_onnx for the source)


@dataclass
class Attempt:
    """One artifact the guard built and measured."""

    lever: str  # "int8", "calibration", "float-layers", "int16-activations"
    label: str
    settings: QuantSettings
    dir: Path
    conversion: Conversion
    parity: ParityReport
    parity_check: dict[str, Any]
    goal_check: dict[str, Any]  # the check the guard must pass (Evaluator.goal): accuracy, agreement or parity
    float_layers: list[dict[str, Any]] = field(default_factory=list)
    p50_ms: float | None = None
    tuned: Tuned | None = None  # built from the fine-tuned source (the qat lever), not from the source itself

    @property
    def score(self) -> float:
        """The guard's metric, lower is better: accuracy drop in points, or the tolerance ratio (checks.score_of)."""
        return score_of(self.goal_check)

    @property
    def ok(self) -> bool:
        return bool(self.goal_check["ok"])

    @property
    def model(self) -> Artifact:
        return _model(self.conversion)

    def options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Runner options for running this attempt's artifact here: its own, then the target's check overrides."""
        return {**self.model.extra.get("runner_options", {}), **overrides}

    def row(self) -> dict[str, Any]:
        return {"lever": self.lever, "label": self.label, "settings": self.settings.to_dict(),
                "layers": [c["source"] or c["layer"] for c in self.float_layers], "float_layers": len(self.float_layers),
                self.score_name: self.score, "ok": self.ok, "parity_ok": self.parity_check["ok"], "p50_ms": self.p50_ms,
                "finetuned": self.tuned is not None}

    @property
    def score_name(self) -> str:
        return "drop_points" if self.goal_check["kind"] == "accuracy" else "tolerance_ratio"


def _model(conversion: Conversion) -> Artifact:
    return next(a for a in conversion.artifacts if a.role == "model")


def size_of(workdir: Path, conversion: Conversion) -> int:
    return sum((workdir / a.file).stat().st_size for a in conversion.artifacts if a.role in ("model", "weights"))


def p50_ms(workdir: Path, art: Artifact, options: dict[str, Any], feed: dict[str, np.ndarray]) -> float:
    """p50 by the one latency method (edgeconv.stats, i.e. the device runner's)."""
    from edgeconv.runners import open_runner
    from edgeconv.stats import summarize_latency, time_runner

    with open_runner(art.runner, workdir / art.file, options=options) as r:
        times = time_runner(r, feed, warmup=LATENCY_WARMUP, runs=LATENCY_RUNS)
    return float(summarize_latency(times, len(next(iter(feed.values()))))["p50_ms"])


def cost(full_size: int, size: int, full_p50: float, p50: float, runner: str | None, batch: int | None) -> dict[str, Any]:
    return {
        "bytes": {"full_int8": full_size, "with_float_layers": size, "delta": size - full_size},
        "p50_ms": {"full_int8": full_p50, "with_float_layers": p50, "delta": p50 - full_p50,
                   "ratio": p50 / full_p50 if full_p50 else None},
        "method": f"{runner} on this host, batch {batch or 1}, {LATENCY_WARMUP} warm-up + {LATENCY_RUNS} timed runs each, "
                  "median of the runtime call",
    }


class Guard:
    """The attempts of one guard run: each built in its own scratch folder by the target, measured by the evaluator."""

    def __init__(self, job: GuardJob, first: Attempt):
        self.job = job
        self.first = first
        self.attempts: list[Attempt] = []
        self.rankings: dict[Path, list[dict[str, Any]]] = {}  # the debugger's ranking of an attempt's artifact, by its folder
        self.scratch = Path(tempfile.mkdtemp(prefix=f".{job.work.name}.fallback-", dir=job.work.parent))
        feed = job.evaluator.data.feed if job.evaluator.data is not None else job.evaluator.feed
        self.sample = {k: v[: job.evaluator.batch or 1] for k, v in feed.items()}
        # what the attempts share: calibration ranges (ONNX Runtime) and, without convert --cache, a cache of the
        # targets' intermediates (onnx2tf's SavedModel) for this run only
        self.saved_cache = job.ctx.cache
        job.ctx.reuse_dir = self.scratch / "reuse"
        if job.ctx.cache is None and job.model_path is not None:
            job.ctx.cache = ExportCache(self.scratch / "cache", job.model_path, job.load_options or LoadOptions())

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.job.ctx.float_layers = []
        self.job.ctx.quant = self.first.settings
        self.job.ctx.reuse_dir = None
        self.job.ctx.cache = self.saved_cache

    @property
    def best(self) -> Attempt:
        return min([self.first, *self.attempts], key=lambda a: (not a.ok, a.score))

    def attempt(self, lever: str, label: str, settings: QuantSettings, float_layers: list[dict[str, Any]],
                record: bool = True, tuned: Tuned | None = None) -> Attempt:
        """One artifact built by the target (from the fine-tuned graph when ``tuned``) and measured: parity against its
        source's outputs, and the guard's goal (accuracy against the source's own)."""
        job = self.job
        workdir = self.scratch / f"attempt-{len(self.attempts) + 1}{'' if record else '-probe'}-{time.monotonic_ns()}"
        workdir.mkdir()
        job.ctx.float_layers, job.ctx.quant = float_layers, settings
        evaluator = job.evaluator if tuned is None else replace(job.evaluator, expected=tuned.expected)
        with job.steps.step(f"int8 guard: {label}"), self._building(tuned) as onnx_path:
            with converter_step(f"the {job.profile.backend} conversion ({label})", job.failed_dir):
                conversion = job.target.convert(onnx_path, workdir, job.profile, job.topts, job.ctx)
            art = _model(conversion)
            options = {**art.extra.get("runner_options", {}), **job.runner_options}  # as Attempt.options
            with converter_step(f"running {art.file} on {art.runner}", job.failed_dir):
                parity = evaluator.artifact_parity(workdir, art, options)
                goal = evaluator.goal(job.goal, workdir, art, options)
        found = Attempt(lever, label, settings, workdir, conversion, parity, {"kind": "parity", **parity.to_dict()}, goal,
                        list(float_layers), tuned=tuned)
        if record:
            self.attempts.append(found)
        return found

    @contextlib.contextmanager
    def _building(self, tuned: Tuned | None):
        """The graph the target converts: the source's, or the fine-tuned one with its own calibration ranges (the
        ranges ONNX Runtime keeps per method are the source's) and its own source model."""
        ctx = self.job.ctx
        if tuned is None:
            yield self.job.onnx_path
            return
        saved = ctx.reuse_dir, ctx.source_model
        ctx.reuse_dir, ctx.source_model = tuned.onnx_path.parent / "reuse", tuned.source
        try:
            yield tuned.onnx_path
        finally:
            ctx.reuse_dir, ctx.source_model = saved

    def within_budget(self) -> bool:
        return self.best.ok
