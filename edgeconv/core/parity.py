"""Parity: every output against its reference, per-output tolerances, one cosine rule; and the same artifact's
outputs from two machines compared. The one implementation, for the host and the device. See docs/architecture.md."""

import numpy as np


def tolerance_of(d):
    """``{atol, min_cosine, max_rel}`` from a profile or manifest, defaults filled."""
    atol, max_rel = d.get("atol"), d.get("max_rel")
    return {"atol": None if atol is None else float(atol), "min_cosine": float(d.get("min_cosine", 0.999)),
            "max_rel": None if max_rel is None else float(max_rel)}


def tolerance_for(name, default, overrides):
    """The output's own ``atol`` override, else the every-output one (key None, "None" or "*"), else the default."""
    overrides = overrides or {}
    for key in (name, None, "None", "*"):
        if key in overrides:
            return dict(default, atol=float(overrides[key]), atol_scaled=False)  # what the user asked: absolute
    return default


def _row(name, expected_shape, actual_shape, tol, reason):
    return {"name": name, "expected_shape": expected_shape, "actual_shape": actual_shape, "max_abs": None, "max_rel": None,
            "cosine": None, "atol": tol["atol"], "allowed_abs": tol["atol"], "min_cosine": tol["min_cosine"], "ok": False,
            "reason": reason, "allowed_rel": tol["max_rel"]}


def check_output(name, ref, got, tol):
    """One output against its reference: shape, finiteness, max abs/rel error, cosine. A zero output against a
    non-zero reference (or the reverse) has cosine 0; two zero outputs agree (cosine 1).

    A profile's ``atol`` holds at unit scale: float error grows with magnitude, so an output whose reference
    reaches beyond 1 in absolute value is allowed ``atol`` times that magnitude (``allowed_abs``). An ``--atol``
    override is absolute, as given."""
    ref, got = np.asarray(ref), np.asarray(got)
    row = _row(name, list(ref.shape), list(got.shape), tol, "")
    if ref.shape != got.shape:
        row["reason"] = "shape differs"
        return row
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    if not np.all(np.isfinite(g)) and np.all(np.isfinite(r)):
        row["reason"] = "artifact output has NaN/Inf"
        return row
    diff = np.abs(r - g)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    nr, ng = np.linalg.norm(r), np.linalg.norm(g)
    cosine = float(r.dot(g) / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if nr == ng else 0.0)
    reasons = []
    allowed = tol["atol"]
    if allowed is not None and tol.get("atol_scaled", True) and scale > 1.0:
        allowed = allowed * scale
    row["allowed_abs"] = allowed
    if allowed is not None and max_abs > allowed:
        reasons.append("max abs %.3e > %.1e" % (max_abs, allowed))
    if tol["max_rel"] is not None and max_rel > tol["max_rel"]:
        reasons.append("max rel %.3e > %.1e" % (max_rel, tol["max_rel"]))
    if cosine < tol["min_cosine"]:
        reasons.append("cosine %.6f < %s" % (cosine, tol["min_cosine"]))
    row.update(max_abs=max_abs, max_rel=max_rel, cosine=cosine, ok=not reasons, reason="; ".join(reasons))
    return row


def compare_outputs(label, names, expected, actual, default, overrides=None):
    """The parity report: ``{label, ok, samples, outputs: [one row per output]}``; every output is checked."""
    samples = int(expected[0].shape[0]) if expected and np.ndim(expected[0]) else 1
    if len(expected) != len(actual):
        row = _row("(outputs)", [len(expected)], [len(actual)], dict(default, max_rel=None),
                   "%d outputs where %d were expected" % (len(actual), len(expected)))
        return {"label": label, "ok": False, "samples": samples, "outputs": [row]}
    rows = [check_output(n, r, g, tolerance_for(n, default, overrides)) for n, r, g in zip(names, expected, actual)]
    return {"label": label, "ok": all(r["ok"] for r in rows), "samples": samples, "outputs": rows}


def compare_machines(here, there):
    """The same artifact's outputs from two machines (``outputs_file`` contents: ``{"reference:NAME" or "data:NAME":
    array}``) compared on the data set where both ran it, else on reference.npz's inputs: per output the max abs
    difference and, for class scores (N, C), how often the top-1 class agrees."""
    kind = "data" if any(k.startswith("data:") for k in here) and any(k.startswith("data:") for k in there) else "reference"
    names = sorted(k for k in here if k.startswith(kind + ":") and k in there)
    rows = []
    for key in names:
        a, b = np.asarray(here[key]).astype(np.float64), np.asarray(there[key]).astype(np.float64)
        row = {"name": key.split(":", 1)[1], "shape": list(a.shape), "max_abs": None, "top1_agreement": None}
        if a.shape != b.shape:
            row["reason"] = "shape differs: %s vs %s" % (list(a.shape), list(b.shape))
        else:
            row["max_abs"] = float(np.abs(a - b).max()) if a.size else 0.0
            if a.ndim == 2 and a.shape[1] > 1:
                row["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
                row["top1_disagreements"] = int((a.argmax(1) != b.argmax(1)).sum())
        rows.append(row)
    diffs = [r["max_abs"] for r in rows if r["max_abs"] is not None]
    agree = [r["top1_agreement"] for r in rows if r["top1_agreement"] is not None]
    return {"compared_on": kind, "samples": int(np.shape(here[names[0]])[0]) if names and np.ndim(here[names[0]]) else 0,
            "outputs": rows, "max_abs": max(diffs) if diffs else None, "top1_agreement": min(agree) if agree else None}
