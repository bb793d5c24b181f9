"""Calibration data: one component for every int8 target.

``--calib`` names an ``.npz`` (``x`` or one array per input name), an ``.npy`` (one-input models), or a folder
of images (class subfolders or flat) with explicit preprocessing. ``--calib random`` is accepted only when
asked for by name, and then flagged in the manifest and every report. The set's sha256, count, seed and
preprocessing are recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import BadInput
from edgeconv.specs import TensorSpec, random_inputs, sha256_of

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Preprocess:
    """How images become model inputs: resize, scale, per-channel mean/std, channel order and layout."""

    size: tuple[int, int] | None = None  # (H, W); default: the model's input size
    scale: float = 1 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: str = "rgb"  # or "bgr"
    layout: str | None = None  # default: the model input's layout


@dataclass
class CalibrationRequest:
    source: str  # a path, or "random"
    count: int = 200
    seed: int = 0
    preprocess: Preprocess = field(default_factory=Preprocess)


def load_calibration(req: CalibrationRequest, inputs: list[TensorSpec]) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Samples (one feed per item, batch of 1) and the record the manifest keeps."""
    if req.count < 1:
        raise BadInput("--calib-count must be at least 1")
    if req.source == "random":
        feed = random_inputs(inputs, batch=req.count, seed=req.seed)
        record = {"source": "random", "random": True, "count": req.count, "seed": req.seed,
                  "warning": "random calibration data: int8 ranges do not reflect real inputs"}
        return _split(feed, req.count), record
    path = Path(req.source)
    if not path.exists():
        raise BadInput(f"calibration data {path} does not exist")
    preprocessing: dict[str, Any] | None = None
    if path.is_dir():
        feed = _images(path, inputs, req.preprocess)
        preprocessing = asdict(req.preprocess)
    elif path.suffix in (".npy", ".npz"):
        from edgeconv.data import load_inputs

        feed, _ = load_inputs(path, inputs, need_labels=False)
    else:
        raise BadInput(f"calibration data {path} is not an .npz, .npy or a folder of images")
    n = len(next(iter(feed.values())))
    rng = np.random.default_rng(req.seed)
    take = np.sort(rng.choice(n, req.count, replace=False)) if n > req.count else np.arange(n)
    feed = {k: v[take] for k, v in feed.items()}
    record = {"source": str(path), "random": False, "sha256": sha256_of(path), "available": int(n),
              "count": int(len(take)), "seed": req.seed, "selection": "all" if n <= req.count else "seeded random subset",
              "preprocessing": preprocessing}
    return _split(feed, len(take)), record


def _split(feed: dict[str, np.ndarray], n: int) -> list[dict[str, np.ndarray]]:
    return [{k: v[i : i + 1] for k, v in feed.items()} for i in range(n)]


def _images(folder: Path, inputs: list[TensorSpec], pp: Preprocess) -> dict[str, np.ndarray]:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise BadInput("an image folder calibrates one 4-D image input; use an .npz for other models")
    spec = inputs[0]
    layout = pp.layout or spec.layout
    if layout not in ("NCHW", "NHWC"):
        raise BadInput(f"cannot tell the layout of input {spec.name!r} ({spec.shape_str()}); pass --calib-layout NCHW|NHWC")
    c_axis, hw = (1, spec.shape[2:4]) if layout == "NCHW" else (3, spec.shape[1:3])
    channels = spec.shape[c_axis]
    size = pp.size or tuple(hw)
    if not all(isinstance(d, int) for d in size):
        raise BadInput("the model's image size is dynamic: pass --calib-size H,W")
    from edgeconv.lazy import require

    image_mod = require("PIL.Image", why="to read calibration images")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInput(f"{folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}), in it or in class subfolders")
    mean = np.asarray(pp.mean, np.float32)
    std = np.asarray(pp.std, np.float32)
    out = []
    for f in files:
        try:
            with image_mod.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]))
                a = np.asarray(im, np.float32)
        except OSError as exc:
            raise BadInput(f"cannot read calibration image {f}: {exc}") from exc
        if a.ndim == 2:
            a = a[:, :, None]
        if pp.channels == "bgr":
            a = a[:, :, ::-1]
        a = (a * pp.scale - mean) / std
        out.append(a.transpose(2, 0, 1) if layout == "NCHW" else a)
    return {spec.name: np.stack(out).astype(spec.dtype)}


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise BadInput(f"{what} {text!r} is not a comma-separated list of numbers") from None
