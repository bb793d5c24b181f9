"""The checks convert makes on what it built, in one place: parity against the source's reference outputs, accuracy on
labelled ``--data``, agreement on unlabelled ``--data``. The int8 guard measures its attempts with the same
``Evaluator`` (see docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.accuracy import drop_budget, scored
from edgeconv.data import accuracy, data_record, feed_count, run_batched
from edgeconv.parity import ParityReport, Tolerance, compare
from edgeconv.runners import open_runner
from edgeconv.targets import Artifact


@dataclass
class EvalData:
    """``--data``: its inputs, its labels (or None), the source's outputs on it, and which output holds class scores."""

    path: Path
    feed: dict[str, np.ndarray]
    labels: np.ndarray | None
    source_outputs: list[np.ndarray]
    score_index: int | None
    score_by: str | None = None  # why that output is scored (edgeconv.core.accuracy.score_output)

    @property
    def count(self) -> int:
        return feed_count(self.feed)


@dataclass
class Evaluator:
    """Runs an artifact and checks it against the source: what the convert steps and the int8 guard share."""

    framework: str
    names: list[str]
    expected: list[np.ndarray]  # the source's outputs on ``feed``
    feed: dict[str, np.ndarray]  # the reference inputs
    batch: int | None
    tolerance: Tolerance  # the artifact's precision's tolerance
    atol: dict[str | None, float]
    data: EvalData | None = None
    max_accuracy_drop: float | None = None

    def outputs(self, path: Path, runner: str, feed: dict[str, np.ndarray], options: dict[str, Any] | None) -> list[np.ndarray]:
        with open_runner(runner, path, options=options) as r:
            return run_batched(r.infer, feed, self.batch)

    def parity(self, label: str, path: Path, runner: str, tolerance: Tolerance | None = None,
               options: dict[str, Any] | None = None) -> ParityReport:
        actual = self.outputs(path, runner, self.feed, options)
        return compare(label, self.names, self.expected, actual, tolerance or self.tolerance, self.atol)

    def artifact_parity(self, workdir: Path, art: Artifact, options: dict[str, Any]) -> ParityReport:
        return self.parity(f"{art.file} ({art.runner}) vs {self.framework}", workdir / art.file, art.runner, options=options)

    def accuracy(self, workdir: Path, art: Artifact, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the source's accuracy record, the artifact's accuracy check) on the labelled ``--data``."""
        d = self.data
        assert d is not None and d.labels is not None and d.score_index is not None
        src_acc = accuracy(d.source_outputs[d.score_index], d.labels)
        art_acc = accuracy(self.outputs(workdir / art.file, art.runner, d.feed, options)[d.score_index], d.labels)
        budget = drop_budget(src_acc["top1"], art_acc["top1"], len(d.labels), self.max_accuracy_drop)
        record = data_record(d.path, len(d.labels))
        which = scored(self.names, d.score_index, d.score_by)
        source_accuracy = {**record, **src_acc, **which, "measured_with": self.framework}
        check = {"kind": "accuracy", "ok": budget["ok"], "data": record, **which, "source": src_acc, "artifact": art_acc,
                 "drop_points": budget["drop_points"], "max_drop_points": self.max_accuracy_drop, "compared": budget["compared"]}
        return source_accuracy, check

    def goal(self, kind: str, workdir: Path, art: Artifact, options: dict[str, Any]) -> dict[str, Any]:
        """The check the int8 guard must pass: ``accuracy`` (labelled --data and a budget), ``agreement`` (unlabelled
        --data) or ``parity`` (the reference samples)."""
        if kind == "accuracy":
            return self.accuracy(workdir, art, options)[1]
        if kind == "agreement":
            return self.agreement(workdir, art, options)
        return {"kind": "parity", **self.artifact_parity(workdir, art, options).to_dict()}

    def agreement(self, workdir: Path, art: Artifact, options: dict[str, Any]) -> dict[str, Any]:
        """Unlabelled --data: the artifact against the source on every item, with the artifact's parity tolerance, and
        how often their top-1 agrees when an output is class scores."""
        d = self.data
        assert d is not None
        art_out = self.outputs(workdir / art.file, art.runner, d.feed, options)
        rep = compare(f"{art.file} ({art.runner}) vs {self.framework} on {d.path.name}", self.names, d.source_outputs, art_out,
                      self.tolerance, self.atol)
        check = {"kind": "agreement", **rep.to_dict(), "data": data_record(d.path, d.count)}
        if d.score_index is not None:
            idx = d.score_index
            check["top1_agreement"] = float((d.source_outputs[idx].argmax(1) == art_out[idx].argmax(1)).mean())
        return check


def tolerance_ratio(check: dict[str, Any]) -> float:
    """How far a parity or agreement check's worst output is from its tolerance: max over outputs of error / allowed
    (relative error, absolute error, and 1 − cosine against 1 − the cosine required); ≤ 1 passes. A shape mismatch is
    infinitely far."""
    worst = 0.0
    for o in check["outputs"]:
        if o.get("max_abs") is None:
            return float("inf")
        ratios = [0.0]
        if o.get("allowed_rel") and o.get("max_rel") is not None:
            ratios.append(o["max_rel"] / o["allowed_rel"])
        if o.get("allowed_abs") and o.get("max_rel") is None:
            ratios.append(o["max_abs"] / o["allowed_abs"])
        if o.get("cosine") is not None and o.get("min_cosine", 1) < 1:
            ratios.append((1 - o["cosine"]) / (1 - o["min_cosine"]))
        worst = max(worst, *ratios)
    return float(worst)


def score_of(check: dict[str, Any]) -> float:
    """The int8 guard's metric of a check, lower is better: the accuracy drop in points for an accuracy check, the
    tolerance ratio for parity or agreement (``tolerance_ratio``)."""
    return float(check["drop_points"]) if check["kind"] == "accuracy" else tolerance_ratio(check)


def failure_reason(check: dict[str, Any], fallback: dict[str, Any] | None, max_accuracy_drop: float | None) -> str:
    """One sentence for a failed check, as the CLI prints it (``fallback``: the int8 guard's record, when it ran)."""
    compared = f" ({check['compared']})" if check.get("compared") else ""
    if check["kind"] == "accuracy" and fallback is not None:
        return (f"accuracy drop {check['drop_points']:.2f} points exceeds --max-accuracy-drop {max_accuracy_drop}{compared} "
                f"even after the int8 guard's levers ({levers_summary(fallback)}; the manifest's fallback lists every attempt)")
    if check["kind"] == "accuracy":
        return f"accuracy drop {check['drop_points']:.2f} points exceeds --max-accuracy-drop {max_accuracy_drop}{compared}"
    if check["kind"] == "agreement":
        return f"the artifact does not agree with the source on {check['data']['path']} within its tolerance"
    return check.get("reason") or f"check {check['kind']} failed"


def levers_summary(fallback: dict[str, Any]) -> str:
    """What the guard's levers did, in one line: those tried, those skipped and why."""
    notes = fallback.get("levers") or []
    limit = f" (up to {fallback.get('max_float_layers')}: --max-float-layers)"
    tried = [n["name"] + (limit if n["name"] == "float-layers" else "") for n in notes
             if not n.get("skipped") and not n.get("failed")]
    other = [f"{n['name']} ({n.get('skipped') or n.get('failed')})" for n in notes if n.get("skipped") or n.get("failed")]
    parts = ([f"tried {', '.join(tried)}"] if tried else []) + ([f"not {'; '.join(other)}"] if other else [])
    return "; ".join(parts) or "none pulled"
