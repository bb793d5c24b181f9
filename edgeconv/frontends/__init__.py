"""Frontends: a source file → a loaded :class:`SourceModel` (explicit table, imported on demand)."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

from edgeconv.errors import BadInput
from edgeconv.frontends.base import ExportRecord, LoadOptions, SourceModel

# format family -> "module:Class"
FRONTENDS = {
    "torch": "edgeconv.frontends.torch:TorchSource",
    "keras": "edgeconv.frontends.keras:KerasSource",
    "onnx": "edgeconv.frontends.onnx:OnnxSource",
    "tflite": "edgeconv.frontends.tflite:TfliteSource",  # a reference, and the TFLite-family targets' input as it is
}

SUFFIXES = {
    ".pt": "torch", ".pth": "torch", ".pt2": "torch", ".ts": "torch",
    ".keras": "keras", ".h5": "keras", ".hdf5": "keras",
    ".onnx": "onnx",
    ".tflite": "tflite",
}

__all__ = ["ExportRecord", "LoadOptions", "SourceModel", "detect_family", "load_source"]


def detect_family(path: Path) -> str:
    """Which frontend reads ``path``; checks existence, kind and the obvious corruptions first."""
    if not path.exists():
        raise BadInput(f"{path} does not exist", hint="check the path")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "keras"
        raise BadInput(
            f"{path} is a directory; edgeconv expects a model file (.pt, .pt2, .keras, .h5, .onnx) or a "
            "TensorFlow SavedModel directory (with saved_model.pb)"
        )
    family = SUFFIXES.get(path.suffix.lower())
    if family is None:
        raise BadInput(
            f"{path} has an unknown extension {path.suffix!r}",
            hint="edgeconv reads .pt/.pth (TorchScript or state_dict), .pt2, .keras, .h5, .onnx and SavedModel directories",
        )
    size = path.stat().st_size
    if size == 0:
        raise BadInput(f"{path} is empty (0 bytes)", hint="re-save the model; the file may not have been written")
    if path.suffix in (".pt2", ".keras") and not zipfile.is_zipfile(path):
        raise BadInput(
            f"{path} is not a valid {path.suffix} archive (a {path.suffix} file is a zip archive; this one is "
            "truncated or of another kind)",
            hint="re-save the model",
        )
    return family


def load_source(path: Path, options: LoadOptions | None = None) -> SourceModel:
    family = detect_family(path)
    mod_name, cls_name = FRONTENDS[family].split(":")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    return cls(path, options or LoadOptions())
