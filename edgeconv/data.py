"""Labelled and sample data files (``.npz``/``.npy``), checked against a model's inputs; batched evaluation."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeconv.device import edgeconv_runner as device
from edgeconv.errors import BadInput
from edgeconv.specs import TensorSpec, sha256_of

DATA_FORMS = (".npz with 'x' (or one array per input name) and 'y' for labels, or .npy (one input, no labels); "
              "first axis = samples")


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a data file: an ``.npz`` by its keys, an ``.npy`` as ``{"x": array}`` (one input)."""
    if not path.exists():
        raise BadInput(f"data file {path} does not exist")
    if path.is_dir():
        raise BadInput(f"{path} is a directory; expected a data file", hint=DATA_FORMS)
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise BadInput(f"{path} holds Python objects (a pickled array), which edgeconv does not load",
                           hint="save plain numeric arrays: numpy.save(path, np.asarray(x, dtype=np.float32))") from exc
        raise BadInput(f"{path} is not a readable .npy/.npz file: {exc}", hint=DATA_FORMS) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInput(f"{path} is not a readable .npy/.npz file: {exc}", hint=DATA_FORMS) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return {"x": loaded}
    try:
        with loaded as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:  # an array inside the .npz is a pickle
        raise BadInput(f"{path}: {exc}", hint="save plain numeric arrays with numpy.savez") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise BadInput(f"{path} is not a readable .npz file: {exc}", hint=DATA_FORMS) from exc


def _check_input(path: Path, key: str, arr: np.ndarray, spec: TensorSpec) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if arr.dtype.kind not in "fiub":
        raise BadInput(f"{path}: array {key!r} has dtype {arr.dtype}; the model's input {spec.name!r} takes {want}")
    if arr.dtype.kind != want.kind and not (want.kind in "iu" and arr.dtype.kind in "iu"):
        raise BadInput(
            f"{path}: array {key!r} has dtype {arr.dtype}, the model's input {spec.name!r} takes {want}",
            hint=f"save it as {want} (e.g. x.astype(np.{want}))"
            + (" after the model's own preprocessing (scaling, normalisation)" if want.kind == "f" else ""),
        )
    if arr.ndim == 0:
        raise BadInput(f"{path}: array {key!r} is a scalar; the model's input {spec.name!r} is {spec.shape_str()}",
                       hint=DATA_FORMS)
    if spec.shape and (arr.ndim != len(spec.shape) or any(
        isinstance(d, int) and d != a for i, (d, a) in enumerate(zip(spec.shape, arr.shape)) if i > 0
    )):
        expected = "x".join(["N"] + [str(d) if isinstance(d, int) else "?" for d in spec.shape[1:]])
        raise BadInput(
            f"{path}: array {key!r} has shape {'x'.join(map(str, arr.shape))} ({arr.dtype}), the model's input "
            f"{spec.name!r} expects {expected} ({want}; first axis = samples)",
            hint="a single sample needs its batch axis: x[None]" if arr.ndim == len(spec.shape) - 1 else None,
        )
    if want.kind in "iu" and arr.dtype != want:
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise BadInput(f"{path}: array {key!r} has values outside {want}'s range for input {spec.name!r}")
    return arr.astype(want, copy=False)


def pick_inputs(path: Path, arrays: dict[str, np.ndarray], specs: list[TensorSpec], *, labels: bool = False) -> dict[str, np.ndarray]:
    """The arrays that feed ``specs``: by input name, or ``x`` for a one-input model (unchecked)."""
    feed = {}
    for spec in specs:
        key = spec.name if spec.name in arrays else ("x" if len(specs) == 1 and "x" in arrays else None)
        if key is None:
            want = "'x'" if len(specs) == 1 else ", ".join(repr(s.name) for s in specs)
            single = path.suffix == ".npy"
            raise BadInput(
                f"{path} " + (f"is one array, but the model has {len(specs)} inputs ({want})" if single
                              else f"has arrays {sorted(arrays)}; expected {want}" + (" and 'y'" if labels else "")),
                hint="save an .npz with one array per input name: numpy.savez(path, "
                     + ", ".join(f"{s.name}=..." for s in specs) + (", y=...)" if labels else ")"),
            )
        feed[spec.name] = arrays[key]
    return feed


def load_inputs(path: Path, specs: list[TensorSpec], *, need_labels: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs keyed ``x`` (one-input models) or by input name, from an .npz or an .npy; labels ``y``
    (integer class ids, .npz only) when the file has them, required with ``need_labels``."""
    arrays = read_arrays(path)
    if need_labels and path.suffix == ".npy":
        raise BadInput(f"{path} is a single array (inputs only); labels need an .npz", hint="numpy.savez(path, x=..., y=...)")
    picked = pick_inputs(path, arrays, specs, labels=need_labels)
    feed = {s.name: _check_input(path, s.name if s.name in arrays else "x", picked[s.name], s) for s in specs}
    counts = {len(v) for v in feed.values()}
    if len(counts) != 1:
        raise BadInput(f"{path}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise BadInput(f"{path} holds no samples")
    y = arrays.get("y") if path.suffix == ".npz" else None
    if y is None and need_labels:
        raise BadInput(f"{path} has no labels 'y' (arrays: {sorted(arrays)})", hint="save it with numpy.savez(path, x=..., y=...)")
    if y is not None and (y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n):
        raise BadInput(f"{path}: 'y' must be {n} integer class ids, got dtype {y.dtype} shape {list(y.shape)}")
    return feed, y


def data_record(path: Path, n: int) -> dict:
    return {"path": str(path), "sha256": sha256_of(path), "count": int(n)}


class _Call:
    """A plain function as the device runner's backend interface (prepare, run), so batching is written once."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]]):
        self.run = fn

    @staticmethod
    def prepare(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feed


def run_batched(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feed: dict[str, np.ndarray],
                batch: int | None, chunk: int = 64) -> list[np.ndarray]:
    """Run ``feed`` through in slices of the model's fixed batch (or ``chunk`` when batch is dynamic)."""
    try:
        return device.run_batched(_Call(run), feed, batch, chunk)
    except device.BadRequest as exc:
        raise BadInput(str(exc)) from None


def accuracy(scores: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Top-1 (and top-5) against integer labels: the device runner's rule."""
    try:
        return device.topk_accuracy(scores, y)
    except device.BadRequest as exc:
        raise BadInput(str(exc)) from None


classifier_output = device.classifier_output
