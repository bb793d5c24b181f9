"""Labelled and sample data files (``.npz``), checked against a model's inputs; batched evaluation."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeconv.errors import BadInput
from edgeconv.specs import TensorSpec, sha256_of


def _open_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise BadInput(f"data file {path} does not exist")
    if path.is_dir():
        raise BadInput(f"{path} is a directory; expected an .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise BadInput(f"{path} is a single .npy array; edgeconv expects an .npz with named arrays")
            return {k: z[k] for k in z.files}
    except BadInput:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInput(f"{path} is not a readable .npz file: {exc}", hint="write it with numpy.savez(path, x=..., y=...)") from exc


def _check_input(path: Path, key: str, arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if arr.dtype.kind != want.kind and not (want.kind == "f" and arr.dtype.kind == "f"):
        raise BadInput(
            f"{path}: array {key!r} has dtype {arr.dtype}, the model's input {spec.name!r} takes {want}",
            hint=f"save it as {want} (e.g. x.astype(np.{want}))",
        )
    if spec.shape and (arr.ndim != len(spec.shape) or any(
        isinstance(d, int) and d != a for i, (d, a) in enumerate(zip(spec.shape, arr.shape)) if i > 0
    )):
        raise BadInput(
            f"{path}: array {key!r} has shape {list(arr.shape)}, the model's input {spec.name!r} is "
            f"{spec.shape_str()} (first axis = samples)",
        )
    return arr.astype(want, copy=False)


def load_inputs(path: Path, specs: list[TensorSpec], *, need_labels: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs keyed ``x`` (one-input models) or by input name; labels ``y`` (integer class ids)."""
    arrays = _open_npz(path)
    feed = {}
    for spec in specs:
        key = spec.name if spec.name in arrays else ("x" if len(specs) == 1 and "x" in arrays else None)
        if key is None:
            want = "'x'" if len(specs) == 1 else ", ".join(repr(s.name) for s in specs)
            raise BadInput(f"{path} has arrays {sorted(arrays)}; expected {want}" + (" and 'y'" if need_labels else ""))
        feed[spec.name] = _check_input(path, key, arrays[key], spec)
    counts = {len(v) for v in feed.values()}
    if len(counts) != 1:
        raise BadInput(f"{path}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise BadInput(f"{path} holds no samples")
    y = None
    if need_labels:
        if "y" not in arrays:
            raise BadInput(f"{path} has no labels 'y' (arrays: {sorted(arrays)})", hint="save it with numpy.savez(path, x=..., y=...)")
        y = arrays["y"]
        if y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n:
            raise BadInput(f"{path}: 'y' must be {n} integer class ids, got dtype {y.dtype} shape {list(y.shape)}")
    return feed, y


def data_record(path: Path, n: int) -> dict:
    return {"path": str(path), "sha256": sha256_of(path), "count": int(n)}


def run_batched(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feed: dict[str, np.ndarray],
                batch: int | None, chunk: int = 64) -> list[np.ndarray]:
    """Run ``feed`` through in slices of the model's fixed batch (or ``chunk`` when batch is dynamic)."""
    n = len(next(iter(feed.values())))
    step = batch or chunk
    if batch and n % batch:
        raise BadInput(f"{n} samples do not split into batches of {batch} (the model's fixed batch)")
    parts: list[list[np.ndarray]] = []
    for i in range(0, n, step):
        parts.append(run({k: v[i : i + step] for k, v in feed.items()}))
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def classifier_output(outputs: list[np.ndarray]) -> int | None:
    """Index of the first output that looks like class scores: shape (N, C) with C > 1."""
    for i, o in enumerate(outputs):
        if o.ndim == 2 and o.shape[1] > 1:
            return i
    return None


def accuracy(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if scores.shape[1] <= int(y.max()):
        raise BadInput(f"labels go up to {int(y.max())} but the model has {scores.shape[1]} classes")
    order = np.argsort(-scores, axis=1)
    out = {"top1": float((order[:, 0] == y).mean())}
    if scores.shape[1] >= 5:
        out["top5"] = float((order[:, :5] == y[:, None]).any(axis=1).mean())
    return out
