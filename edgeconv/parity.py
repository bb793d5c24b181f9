"""Output agreement between a reference (the source framework) and an artifact, with tolerances as data.

Every output is checked (name, shape, values); every failure is collected; the caller raises once with the
tolerance each failing output would have needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgeconv.errors import BadInput


@dataclass(frozen=True)
class Tolerance:
    atol: float | None  # max abs error allowed (None: not checked)
    min_cosine: float  # cosine similarity of the flattened outputs must reach this
    max_rel: float | None = None  # max abs error / max abs reference value (for quantized artifacts)


@dataclass
class OutputCheck:
    name: str
    expected_shape: list[int]
    actual_shape: list[int]
    max_abs: float | None
    max_rel: float | None  # max abs error / max abs reference value (error relative to the output's scale)
    cosine: float | None
    atol: float | None
    min_cosine: float
    ok: bool
    reason: str = ""
    allowed_rel: float | None = None


@dataclass
class ParityReport:
    label: str  # what was compared with what, e.g. "onnx (onnxruntime) vs torch"
    outputs: list[OutputCheck] = field(default_factory=list)
    samples: int = 0

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    @property
    def failures(self) -> list[OutputCheck]:
        return [o for o in self.outputs if not o.ok]

    def to_dict(self) -> dict:
        return {"label": self.label, "ok": self.ok, "samples": self.samples, "outputs": [asdict(o) for o in self.outputs]}

    def failure_text(self) -> str:
        lines = [f"{'output':<20} {'max abs':>11} {'allowed':>10} {'cosine':>9} {'needs':>8}  reason"]
        for o in self.failures:
            needed = "n/a" if o.max_abs is None else f"{o.max_abs:.2e}"
            mx = "n/a" if o.max_abs is None else f"{o.max_abs:.3e}"
            cs = "n/a" if o.cosine is None else f"{o.cosine:.6f}"
            allowed = "—" if o.atol is None else f"{o.atol:.1e}"
            lines.append(f"{o.name:<20} {mx:>11} {allowed:>10} {cs:>9} {needed:>8}  {o.reason}")
        return "\n".join(lines)


def tolerance_from_dict(d: dict) -> Tolerance:
    """From profile TOML or a manifest: ``{atol = 1e-4, min_cosine = 0.9999, max_rel = 0.1}``."""
    atol = d.get("atol")
    max_rel = d.get("max_rel")
    return Tolerance(None if atol is None else float(atol), float(d.get("min_cosine", 0.999)),
                     None if max_rel is None else float(max_rel))


def parse_atol_overrides(values: list[str]) -> dict[str | None, float]:
    """``--atol 1e-3`` (every output) or ``--atol name=1e-3`` (one output); repeatable."""
    out: dict[str | None, float] = {}
    for v in values:
        name, sep, num = v.rpartition("=")
        try:
            out[name if sep else None] = float(num)
        except ValueError:
            raise BadInput(f"--atol {v!r} is not a number or NAME=NUMBER") from None
    return out


def tolerance_for(name: str, default: Tolerance, overrides: dict[str | None, float]) -> Tolerance:
    if name in overrides:
        return Tolerance(overrides[name], default.min_cosine, default.max_rel)
    if None in overrides:
        return Tolerance(overrides[None], default.min_cosine, default.max_rel)
    return default


def compare(
    label: str,
    names: list[str],
    expected: list[np.ndarray],
    actual: list[np.ndarray],
    default: Tolerance,
    overrides: dict[str | None, float] | None = None,
) -> ParityReport:
    overrides = overrides or {}
    report = ParityReport(label, samples=int(expected[0].shape[0]) if expected and expected[0].ndim else 1)
    if len(expected) != len(actual):
        report.outputs.append(
            OutputCheck("(outputs)", [len(expected)], [len(actual)], None, None, None, default.atol, default.min_cosine,
                        False, f"{len(actual)} outputs where {len(expected)} were expected")
        )
        return report
    for name, ref, got in zip(names, expected, actual):
        tol = tolerance_for(name, default, overrides)
        ref = np.asarray(ref)
        got = np.asarray(got)
        if ref.shape != got.shape:
            report.outputs.append(OutputCheck(name, list(ref.shape), list(got.shape), None, None, None, tol.atol,
                                              tol.min_cosine, False, "shape differs"))
            continue
        r = ref.astype(np.float64).ravel()
        g = got.astype(np.float64).ravel()
        if not np.all(np.isfinite(g)) and np.all(np.isfinite(r)):
            report.outputs.append(OutputCheck(name, list(ref.shape), list(got.shape), None, None, None, tol.atol,
                                              tol.min_cosine, False, "artifact output has NaN/Inf"))
            continue
        diff = np.abs(r - g)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 0.0
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        nr, ng = np.linalg.norm(r), np.linalg.norm(g)
        cosine = float(r @ g / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if nr == ng else 0.0)
        reasons = []
        if tol.atol is not None and max_abs > tol.atol:
            reasons.append(f"max abs {max_abs:.3e} > {tol.atol:.1e}")
        if tol.max_rel is not None and max_rel > tol.max_rel:
            reasons.append(f"max rel {max_rel:.3e} > {tol.max_rel:.1e}")
        if cosine < tol.min_cosine:
            reasons.append(f"cosine {cosine:.6f} < {tol.min_cosine}")
        report.outputs.append(OutputCheck(name, list(ref.shape), list(got.shape), max_abs, max_rel, cosine, tol.atol,
                                          tol.min_cosine, not reasons, "; ".join(reasons), tol.max_rel))
    return report
