"""The one typed state the convert steps read and fill, in pipeline order (see docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.canonical import CanonicalRecord
from edgeconv.convert.checks import EvalData, Evaluator
from edgeconv.convert.request import ConvertRequest
from edgeconv.data import fixed_batch
from edgeconv.export_cache import ExportCache
from edgeconv.frontends import SourceModel
from edgeconv.frontends.base import ExportRecord
from edgeconv.parity import ParityReport
from edgeconv.profiles import Profile
from edgeconv.progress import Steps
from edgeconv.shapes import ResolvedInputs
from edgeconv.specs import TensorSpec
from edgeconv.targets import Artifact, Conversion, Target, TargetContext, TargetOptions


@dataclass
class ConvertState:
    req: ConvertRequest
    steps: Steps
    profile: Profile
    target: Target
    topts: TargetOptions
    needs_calib: bool
    out: Path
    cache: ExportCache | None
    # load: the source, its inputs, calibration, the reference feed and the source's outputs on it
    source: SourceModel | None = None
    resolved: ResolvedInputs | None = None
    notes: list[str] = field(default_factory=list)
    calib_samples: list[dict[str, np.ndarray]] | None = None
    calib_record: dict[str, Any] | None = None
    feed: dict[str, np.ndarray] = field(default_factory=dict)
    feed_origin: str = ""
    expected: list[np.ndarray] = field(default_factory=list)
    data: EvalData | None = None
    train: Any = None  # --finetune: the training set of the guard's qat lever (edgeconv/convert/qat.py TrainSet)
    # export + canonical: the checked ONNX graph in the bundle being written
    work: Path | None = None
    export_opset: int | None = None  # the opset exported at (None: the exporter's default)
    record: ExportRecord | None = None
    canon: CanonicalRecord | None = None
    proto: Any = None
    onnx_inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    # build + checks
    ctx: TargetContext | None = None
    check_overrides: dict[str, Any] = field(default_factory=dict)
    conversion: Conversion | None = None
    evaluator: Evaluator | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)
    artifact_parity: ParityReport | None = None  # the artifact against the source (when it is not the ONNX graph)
    parity_miss: ParityReport | None = None
    source_accuracy: dict[str, Any] | None = None
    accuracy_check: dict[str, Any] | None = None
    fallback_record: dict[str, Any] | None = None
    # fp16 --fallback auto: the layers kept in fp32 (edgeconv/convert/fp16_range.py), handed to the target's build
    fp16_float_layers: list[dict[str, Any]] = field(default_factory=list)
    fp16_range: dict[str, Any] | None = None  # the fp16 range check, recorded after the artifact's own checks
    manifest: dict[str, Any] | None = None

    @property
    def inputs(self) -> list[TensorSpec]:
        assert self.resolved is not None
        return self.resolved.specs

    @property
    def batch(self) -> int | None:
        return fixed_batch(self.inputs)

    @property
    def onnx_path(self) -> Path:
        assert self.work is not None
        return self.work / "model.onnx"

    @property
    def failed_dir(self) -> Path:
        return self.out.with_name(self.out.name + ".failed-build")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @property
    def model_art(self) -> Artifact:
        assert self.conversion is not None
        return next(a for a in self.conversion.artifacts if a.role == "model")

    @property
    def check_options(self) -> dict[str, Any]:
        """Runner options for the convert-time checks on this host: the artifact's own, then the target's overrides."""
        return {**self.model_art.extra.get("runner_options", {}), **self.check_overrides}

    @property
    def is_onnx_itself(self) -> bool:
        return self.model_art.file == self.onnx_path.name
