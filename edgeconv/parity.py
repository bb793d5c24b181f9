"""Output agreement between a reference (the source framework) and an artifact, with tolerances as data.

The rule itself (every output checked for name, shape and values; per-output ``atol`` overrides; one cosine
rule, where a zero output against a non-zero reference scores 0) lives once, in ``edgeconv.core.parity``, which the
device runner carries, so the device and this host judge alike (docs/architecture.md). This module gives it typed
results for the host: the caller raises once with the tolerance each failing output would have needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgeconv.core.parity import compare_outputs, tolerance_of
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
    allowed_abs: float | None = None  # atol, times the output's magnitude beyond 1 unless it is an --atol override


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

    @classmethod
    def from_dict(cls, d: dict) -> ParityReport:
        return cls(d["label"], [OutputCheck(**o) for o in d["outputs"]], d["samples"])

    def failure_text(self) -> str:
        lines = [f"{'output':<20} {'max abs':>11} {'allowed':>10} {'cosine':>9} {'needs':>8}  reason"]
        for o in self.failures:
            needed = "n/a" if o.max_abs is None else f"{o.max_abs:.2e}"
            mx = "n/a" if o.max_abs is None else f"{o.max_abs:.3e}"
            cs = "n/a" if o.cosine is None else f"{o.cosine:.6f}"
            allowed = "—" if o.allowed_abs is None else f"{o.allowed_abs:.1e}"
            lines.append(f"{o.name:<20} {mx:>11} {allowed:>10} {cs:>9} {needed:>8}  {o.reason}")
        return "\n".join(lines)


def tolerance_from_dict(d: dict) -> Tolerance:
    """From profile TOML or a manifest: ``{atol = 1e-4, min_cosine = 0.9999, max_rel = 0.1}``."""
    return Tolerance(**tolerance_of(d))


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


def compare(
    label: str,
    names: list[str],
    expected: list[np.ndarray],
    actual: list[np.ndarray],
    default: Tolerance,
    overrides: dict[str | None, float] | None = None,
) -> ParityReport:
    """The core's ``compare_outputs`` (the one parity rule), as a typed report."""
    return ParityReport.from_dict(compare_outputs(label, names, expected, actual, vars(default), overrides))
