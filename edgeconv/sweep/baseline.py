"""``sweep --baseline OLD/results.json``: what changed since an earlier sweep, and whether any of it is a regression
(exit 1, so a CI job can gate on it).

- status: a cell that passed and no longer does is a regression; the reverse is listed as fixed.
- accuracy: top-1 lower by more than ``accuracy_tolerance`` points is a regression.
- latency: compared only when both runs were measured on the same machine. Slower is a regression when the new p50's
  interval lies wholly above the old one's *and* the p50 grew by more than ``latency_tolerance`` (a share); when
  either run states no interval, the share alone decides. Faster is listed the same way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Change:
    cell_id: str
    kind: str  # status, accuracy, latency, missing, new
    old: Any
    new: Any
    regression: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _status(cid: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    was, now = old.get("status"), new.get("status")
    if was == now:
        return []
    if was == "passed":
        return [Change(cid, "status", was, now, True, f"{now} at {new.get('stage')}: {new.get('reason')}")]
    return [Change(cid, "status", was, now, False, "fixed" if now == "passed" else "")]


def _accuracy(cid: str, old: dict[str, Any], new: dict[str, Any], tol: float) -> list[Change]:
    a, b = (old.get("accuracy") or {}).get("top1"), (new.get("accuracy") or {}).get("top1")
    if a is None or b is None or abs(a - b) * 100 <= tol:
        return []
    drop = (a - b) * 100
    return [Change(cid, "accuracy", a, b, drop > tol, f"top-1 {'-' if drop > 0 else '+'}{abs(drop):.2f} points")]


def _latency(cid: str, old: dict[str, Any], new: dict[str, Any], tol: float) -> list[Change]:
    lo, ln = old.get("latency") or {}, new.get("latency") or {}
    a, b = lo.get("p50_ms"), ln.get("p50_ms")
    if not a or not b or abs(b / a - 1) <= tol:
        return []
    bounds = (lo.get("p50_low_ms"), lo.get("p50_high_ms"), ln.get("p50_low_ms"), ln.get("p50_high_ms"))
    if None not in bounds:
        outside = bounds[2] > bounds[1] if b > a else bounds[3] < bounds[0]
        if not outside:
            return []
        how = "outside both runs' p50 intervals"
    else:
        how = "no interval stated: by the share alone"
    return [Change(cid, "latency", a, b, b > a, f"p50 {b / a:.2f}× ({how})")]


def compare_results(old_doc: dict[str, Any], new_doc: dict[str, Any], *, accuracy_tolerance: float = 0.5,
                    latency_tolerance: float = 0.10) -> dict[str, Any]:
    """The changes from ``old_doc`` to ``new_doc`` (two results.json documents)."""
    old = {r["cell_id"]: r for r in old_doc["cells"]}
    new = {r["cell_id"]: r for r in new_doc["cells"]}
    same_machine = old_doc.get("machine", {}).get("cpu") == new_doc.get("machine", {}).get("cpu")
    changes: list[Change] = []
    for cid, rec in new.items():
        if cid not in old:
            changes.append(Change(cid, "new", None, rec.get("status"), False))
            continue
        changes += _status(cid, old[cid], rec)
        if old[cid].get("status") == rec.get("status") == "passed":
            changes += _accuracy(cid, old[cid], rec, accuracy_tolerance)
            if same_machine:
                changes += _latency(cid, old[cid], rec, latency_tolerance)
    changes += [Change(cid, "missing", r.get("status"), None, False, "not in this run") for cid, r in old.items()
                if cid not in new]
    machines = None if same_machine else {"old": old_doc.get("machine", {}).get("cpu"),
                                          "new": new_doc.get("machine", {}).get("cpu")}
    return {"changes": [c.to_dict() for c in changes], "regressions": sum(c.regression for c in changes),
            "machines_differ": machines, "latency_compared": same_machine,
            "tolerances": {"accuracy_points": accuracy_tolerance, "latency_share": latency_tolerance}}
