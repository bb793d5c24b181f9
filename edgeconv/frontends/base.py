"""What every frontend gives: a loaded source model that can run itself and export the canonical ONNX graph."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeconv.specs import TensorSpec


def default_output_names(n: int) -> list[str]:
    """Stable output names for exported graphs (exporters invent ``Identity:0``, ``linear_1`` …)."""
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def source_output_names(names: list[str] | None, n: int, inputs: list[str]) -> list[str]:
    """The source's own output names (dict keys, Keras output names) for the exported graph when they can name every
    target's tensors: ``n`` distinct identifiers (letters, digits, ``_``), none an input's name; else the defaults."""
    names = [str(k) for k in names or ()]
    if (len(names) == n and len(set(names)) == n and not set(names) & set(inputs)
            and all(re.fullmatch(r"[A-Za-z_]\w*", k, re.ASCII) for k in names)):
        return names
    return default_output_names(n)


@dataclass
class ExportRecord:
    """How the ONNX graph was made: which exporter ran, and why a fallback was taken."""

    exporter: str
    opset: int
    fallback_reason: str | None = None
    notes: list[str] = field(default_factory=list)
    # graph inputs the exporter lifted out of constants (tf2onnx: a Keras Normalization's mean and variance), with
    # their values: the canonical ONNX step folds them back (not written to the manifest)
    constant_inputs: dict[str, np.ndarray] = field(default_factory=dict)


def import_user_module(ref: str, option: str = "--model-class"):
    """The user's own code, which ``option`` names: ``pkg.module`` or ``path/to/file.py`` (its code runs: the user
    asked for it). Import failures are the user's input, said with the reason."""
    import importlib
    import importlib.util
    import sys

    from edgeconv.errors import BadInput

    try:
        if ref.endswith(".py"):
            path = Path(ref)
            if not path.is_file():
                raise BadInput(f"{option} file {path} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(ref)
    except BadInput:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why
        raise BadInput(f"cannot import {ref!r} for {option}: {type(exc).__name__}: {exc}") from exc


@dataclass
class LoadOptions:
    model_class: str | None = None  # "pkg.module:Class" for a state_dict
    model_kwargs: dict = field(default_factory=dict)
    trust_pickle: bool = False


class SourceModel(ABC):
    """A source model loaded by its own framework.

    ``inputs`` may hold unknown dimensions until ``--input-shape`` fills them. ``run`` is the source
    framework's own inference: the reference every artifact is checked against.
    """

    framework: str = ""  # "torch", "keras", "onnx"
    format: str = ""  # "torchscript", "torch.export", "torch-state-dict", "keras", ...
    frontend: str = ""  # class name that says the flow, e.g. "OnnxFromTorch"
    layout_default: str | None = None  # layout this framework's 4-D image inputs usually have
    # True when the fixed dimensions the model records are baked in (a torch.export program): they can't be
    # overridden with --input-shape, and a fixed batch can't become dynamic.
    shapes_baked: bool = False
    default_opset: int | None = None  # what export_onnx writes when no opset is asked for
    max_export_opset: int | None = None  # the newest opset every exporter of this frontend writes (None: keep the default)

    def __init__(self, path: Path):
        self.path = path
        self.inputs: list[TensorSpec] = []
        self.notes: list[str] = []  # what loading had to do (recorded in the manifest)

    @property
    def declared_scalars(self) -> list[str]:
        """The inputs the model declares 0-d (a sample rate ``sr``): an ONNX graph input with a shape of no dims (one
        without a shape keeps its rank open), a torch.export program's input of shape ``()``. A fact the export cache
        keeps (edgeconv/shapes.py reads it before the model is loaded)."""
        proto = self.__dict__.get("proto")
        if proto is not None:
            return [v.name for v in proto.graph.input if v.type.HasField("tensor_type")
                    and v.type.tensor_type.HasField("shape") and not v.type.tensor_type.shape.dim]
        return [s.name for s in self.inputs if s.shape == [] and self.shapes_baked]

    @abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of the source framework, in the model's output order."""

    @abstractmethod
    def export_onnx(
        self, dest: Path, *, inputs: list[TensorSpec], opset: int | None, dynamic_batch: bool
    ) -> ExportRecord:
        """Write the ONNX graph to ``dest`` (a single file, weights inline when under 2 GB)."""

    def input_hint(self, name: str) -> str:
        """A shape to suggest for ``--input-shape NAME=…`` when the model records none: what the model's own
        layers say, else a placeholder of the right rank."""
        spec = next((s for s in self.inputs if s.name == name), None)
        if spec is None or not spec.shape:
            return "SHAPE (e.g. 1xN for token ids or audio, 1x3xHxW for images)"
        return "x".join(str(d) if isinstance(d, int) else ("1" if i == 0 else "N") for i, d in enumerate(spec.shape))

    def versions(self) -> dict[str, str | None]:
        return {}
