"""Tensor specs: what a model takes and gives, with layout; and the parsing of ``--input-shape``."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import BadInput

Dim = int | str | None  # a fixed size, a named dynamic dimension, or unknown


@dataclass
class TensorSpec:
    name: str
    shape: list[Dim]
    dtype: str | None  # numpy dtype name: "float32", "int64", ...; None until resolved when the source keeps none
    layout: str | None = None  # "NCHW", "NHWC", ... for 4-D image tensors, else None
    # the axis that counts the batch: the first, unless the graph names it elsewhere (``state [2, batch, 128]``);
    # None for a 0-d input (``sr``) or one whose batch is not known (docs/architecture.md, "shapes come from your data")
    batch_axis: int | None = 0

    @property
    def dynamic_dims(self) -> list[int]:
        return [i for i, d in enumerate(self.shape) if not isinstance(d, int)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["batch_axis"] == 0:  # the usual case stays out of manifests
            del d["batch_axis"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=d["name"], shape=list(d["shape"]), dtype=d["dtype"], layout=d.get("layout"),
                   batch_axis=d.get("batch_axis", 0))

    def shape_str(self) -> str:
        return "x".join("?" if d is None else str(d) for d in self.shape)


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of every file below a directory (sorted, names included)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode())
            h.update(sha256_of(p).encode())
        return h.hexdigest()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_shape(text: str) -> list[Dim]:
    """``1x3x224x224`` or ``1,3,224,224``; a non-numeric token (``batch``, ``?``) stays dynamic; ``scalar`` (or ``()``)
    is a 0-d input's shape (a sample rate)."""
    if text.strip() in ("scalar", "()"):
        return []
    parts = [p.strip() for p in text.replace(",", "x").split("x") if p.strip()]
    if not parts:
        raise BadInput(f"empty shape {text!r}", hint="write shapes like 1x3x224x224")
    dims: list[Dim] = []
    for p in parts:
        if p.isdigit():
            if int(p) <= 0:
                raise BadInput(f"shape {text!r} has a non-positive dimension")
            dims.append(int(p))
        elif p in ("?", "-1"):
            dims.append(None)
        elif p.isidentifier():
            dims.append(p)
        else:
            raise BadInput(f"cannot read shape {text!r}", hint="write shapes like 1x3x224x224 or NAME=1x3x224x224")
    return dims


def _split_dtype(value: str) -> tuple[str, str, str | None]:
    """``NAME=1x16:int64`` → (name or "", shape text, dtype or None)."""
    name, sep, rest = value.rpartition("=")
    shape, colon, dtype = rest.partition(":")
    if colon:
        try:
            dtype = np.dtype(dtype.strip()).name
        except TypeError:
            raise BadInput(f"--input-shape {value!r}: {dtype!r} is not a dtype", hint="e.g. ids=1x16:int64") from None
    return (name if sep else ""), shape, (dtype if colon else None)


def parse_input_shapes(values: list[str]) -> dict[str | None, list[Dim]]:
    """``--input-shape NAME=1x3x8x8`` (repeatable; ``:DTYPE`` may follow); a bare shape means the only input."""
    out: dict[str | None, list[Dim]] = {}
    for v in values:
        name, shape, _ = _split_dtype(v)
        out[name or None] = parse_shape(shape)
    if None in out and len(out) > 1:
        raise BadInput("mix of named and unnamed --input-shape values", hint="name every input: NAME=1x3x8x8")
    return out


def parse_input_dtypes(values: list[str]) -> dict[str | None, str]:
    """The ``:DTYPE`` parts of ``--input-shape`` values (``ids=1x16:int64``), for sources that keep no dtype."""
    out = {}
    for v in values:
        name, _, dtype = _split_dtype(v)
        if dtype:
            out[name or None] = dtype
    return out


def guess_layout(shape: list[Dim], framework_default: str | None) -> str | None:
    """Layout of a 4-D image tensor: channels are the small axis (1, 3 or 4); else the framework's habit."""
    if len(shape) != 4:
        return None
    small = (1, 2, 3, 4)
    c_first, c_last = shape[1], shape[3]
    if isinstance(c_first, int) and c_first in small and not (isinstance(c_last, int) and c_last in small):
        return "NCHW"
    if isinstance(c_last, int) and c_last in small and not (isinstance(c_first, int) and c_first in small):
        return "NHWC"
    return framework_default


def apply_input_shapes(specs: list[TensorSpec], shapes: dict[str | None, list[Dim]], *, baked: bool = False) -> list[TensorSpec]:
    """Fill or override input shapes from ``--input-shape``; unknown names are an error.

    A fixed dimension may change only when it is a batch of 1 (often a placeholder) and ``baked`` is False.
    """
    if not shapes:
        return specs
    names = [s.name for s in specs]
    if None in shapes:
        if len(specs) != 1:
            raise BadInput(
                f"the model has {len(specs)} inputs ({', '.join(names)}); --input-shape needs NAME=SHAPE"
            )
        shapes = {names[0]: shapes[None]}
    unknown = [n for n in shapes if n not in names]
    if unknown:
        raise BadInput(f"--input-shape names unknown input(s) {unknown}; the model's inputs are {names}")
    out = []
    for s in specs:
        if s.name in shapes:
            new = shapes[s.name]
            if s.shape and len(s.shape) != len(new):
                raise BadInput(
                    f"--input-shape for {s.name!r} has rank {len(new)}, the model's input has rank {len(s.shape)}"
                    f" ({s.shape_str()})"
                )
            for old, want in zip(s.shape, new):
                if isinstance(old, int) and old != want and (baked or old != 1):
                    # A fixed model dimension can't be changed by asking (batch 1 is often a placeholder).
                    raise BadInput(
                        f"--input-shape {s.name}={'x'.join(map(str, new))} contradicts the model's fixed shape"
                        f" {s.shape_str()}"
                    )
            s = TensorSpec(s.name, list(new), s.dtype, s.layout or guess_layout(list(new), None))
        out.append(s)
    return out


def random_inputs(specs: list[TensorSpec], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs of the right shape and dtype with ``batch`` samples on the first axis; dynamic
    dimensions other than the batch must be resolved first. A model with an input whose batch is not its first axis
    (or a 0-d input) gets one feed as it takes it: ``batch`` fills only the batch axes left open."""
    rng = np.random.default_rng(seed)
    samples_first = all(s.batch_axis == 0 for s in specs)
    feed = {}
    for s in specs:
        shape = list(s.shape)
        ax = s.batch_axis
        if ax is not None and ax < len(shape) and (samples_first or not isinstance(shape[ax], int)):
            shape[ax] = batch
        if any(not isinstance(d, int) for d in shape):
            raise BadInput(
                f"input {s.name!r} has dynamic dimensions {s.shape_str()}; give a concrete shape",
                hint=f"--input-shape {s.name}=1x3x224x224 (your model's sizes)",
            )
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            feed[s.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            feed[s.name] = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            feed[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise BadInput(f"cannot make random data for input {s.name!r} of dtype {s.dtype}")
    return feed
