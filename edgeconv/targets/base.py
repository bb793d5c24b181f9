"""What a target backend is: capabilities declared once, a preflight before any work, a conversion."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeconv.errors import PreflightError
from edgeconv.onnx_tools import opset_of

if TYPE_CHECKING:
    from edgeconv.profiles import Profile


@dataclass
class Artifact:
    file: str  # relative to the bundle
    role: str  # "model" (what the runner loads) or "canonical-onnx", "log", ...
    precision: str
    runner: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TargetOptions:
    """What the user asked of the target: the precision, a dynamic batch, and the target's own options (declared in
    edgeconv/target_options.py; ``extra`` holds only those)."""

    precision: str
    dynamic_batch: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QuantSettings:
    """How an int8 conversion quantizes, beyond the precision: what the int8 guard varies (edgeconv/convert/levers.py).
    The defaults are each backend's plain int8; a backend offers the rest in ``Target.calibration_methods`` and
    ``Target.int16_activations``."""

    calibration: str | None = None  # None: the backend's default calibration method
    activations: str = "int8"  # "int16": 16-bit activations with int8 weights

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration or "default", "activations": self.activations}


@dataclass
class TargetContext:
    """What the pipeline hands a target besides the user's options: the loaded source, its reference inputs, the
    canonical graph's I/O, calibration and accuracy data, where a failed build's logs go."""

    source_model: Any  # the frontend's SourceModel (ExecuTorch and Keras → TFLite build from it directly)
    reference_inputs: dict[str, np.ndarray]
    input_shapes: dict[str, list]
    output_shapes: dict[str, list]
    layouts: dict[str, str | None]
    failed_build_dir: Path
    calibration: list[dict[str, np.ndarray]] | None = None  # int8: one feed per sample
    accuracy_data: tuple | None = None  # (inputs, labels, index of the class-score output) for accuracy-aware int8
    max_accuracy_drop: float | None = None
    # the int8 guard (--fallback auto): layers to keep in float, most harmful first, as edgeconv debug ranked them:
    # {"layer", "source", "nodes": canonical ONNX node names, "tensors": their outputs, "artifact_names": the full-int8
    # artifact's names for those tensors}; each backend keeps them in float by its own mechanism
    float_layers: list[dict[str, Any]] = field(default_factory=list)
    # the int8 guard's other levers: the calibration method and the activations' width (QuantSettings)
    quant: QuantSettings = field(default_factory=QuantSettings)
    # a folder where a target keeps what later conversions of this same run reuse (the int8 guard's attempts: ONNX
    # Runtime's calibration ranges per method); None outside the guard
    reuse_dir: Path | None = None
    # convert --cache: the model's ExportCache entry, where a target keeps intermediates other targets reuse
    # (ExportCache.step; onnx2tf's SavedModel); None without a cache
    cache: Any = None

    @property
    def source(self) -> dict[str, str]:
        s = self.source_model
        return {"path": str(s.path), "format": s.format, "framework": s.framework}


@dataclass
class Conversion:
    """What a target returns: its artifacts, the checks it made (e.g. the Edge TPU mapping) and notes for the manifest."""

    artifacts: list[Artifact]
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # the target's own accuracy control kept layers in float (OpenVINO: NNCF): {"float_ops": the artifact's op names it
    # reverted, "mechanism", "ranked_by", "nncf": its own figures, "full_int8": the Conversion it started from or None
    # when nothing was reverted, "full_int8_dir": where those files are}; edgeconv/convert/accuracy_control.py turns it
    # into the fallback record
    accuracy_control: dict[str, Any] | None = None


class Target(ABC):
    """One backend (onnx, tflite, openvino, ...). A device profile picks the backend and narrows it."""

    name: str = ""
    precisions: tuple[str, ...] = ()
    dynamic_batch: bool = True
    # an opset this backend's converter handles better than the exporters' default, and why (used when the user
    # gives no --opset and the source's exporter can write it)
    preferred_opset: int | None = None
    preferred_opset_why: str = ""
    # honours TargetContext.float_layers (the int8 guard's float fallback)
    float_fallback: bool = False
    # the int8 guard's other levers (TargetContext.quant): calibration methods this backend offers, its default first,
    # and whether it can keep activations in 16 bits (with int8 weights)
    calibration_methods: tuple[str, ...] = ()
    int16_activations: bool = False

    def check_runner_options(self, precision: str, profile: Profile) -> dict[str, Any]:
        """Runner options for the convert-time checks on this host (recorded with the artifact)."""
        return {}

    def check_options(self, profile: Profile, opts: TargetOptions) -> None:
        """Refuse, before export, what this backend or device can't honour (never downgrade silently)."""
        problems = []
        allowed = [p for p in self.precisions if p in profile.precisions]
        if opts.precision not in allowed:
            problems.append(f"precision {opts.precision!r} is not offered for {profile.name} (offered: {', '.join(allowed)})")
        if opts.dynamic_batch and not (self.dynamic_batch and profile.dynamic_batch):
            problems.append(f"{profile.name} needs a static batch; drop --dynamic-batch")
        if problems:
            raise PreflightError(f"target {profile.name} refuses the options: " + "; ".join(problems))

    def check_source(self, source) -> None:
        """Refuse, right after loading, a source this backend cannot build from (most take any: they start from ONNX)."""

    def preflight(self, proto, profile: Profile, opts: TargetOptions) -> None:
        """Check the canonical ONNX graph against the profile; collect every problem, raise once."""
        problems = self.graph_problems(proto, profile, opts)
        if problems:
            raise PreflightError(
                f"the model cannot go to {profile.name}:\n  - " + "\n  - ".join(problems),
                hint="see `edgeconv inspect MODEL` for the model's ops and opset",
            )

    def graph_problems(self, proto, profile: Profile, opts: TargetOptions) -> list[str]:
        problems = []
        opset = opset_of(proto)
        if profile.max_opset and opset > profile.max_opset:
            problems.append(f"opset {opset} is newer than {profile.name} accepts ({profile.max_opset}); "
                            f"re-export with --opset {profile.max_opset}")
        return problems

    @abstractmethod
    def convert(self, onnx_path: Path, workdir: Path, profile: Profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        """Write the artifacts into ``workdir`` (the bundle being built); return them with the checks made."""
