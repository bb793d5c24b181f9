"""What ``edgeconv convert`` is asked (``ConvertRequest``), what it returns (``ConvertResult``), and the refusals that need
nothing but the request, the device profile and the target's declared capabilities (see docs/architecture.md)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.calibration import CalibrationRequest
from edgeconv.errors import BadInput, PreflightError
from edgeconv.frontends import LoadOptions
from edgeconv.profiles import Profile
from edgeconv.specs import Dim
from edgeconv.targets import Target

FALLBACK_MODES = ("none", "auto")


@dataclass
class ConvertRequest:
    model: Path
    target: str = "onnx"
    precision: str | None = None  # None: the profile's default_precision (fp32 unless the device says otherwise)
    output: Path | None = None
    force: bool = False
    input_shapes: dict[str | None, list[Dim]] = field(default_factory=dict)
    input_dtypes: dict[str | None, str] = field(default_factory=dict)  # for sources that keep none (TorchScript)
    dynamic_batch: bool = False
    opset: int | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    sample: Path | None = None
    atol: dict[str | None, float] = field(default_factory=dict)
    data: Path | None = None
    max_accuracy_drop: float | None = None
    score_output: str | None = None  # --score-output: the output accuracy is computed on (core.accuracy.score_output)
    calib: CalibrationRequest | None = None
    fallback: str = "none"  # "auto": the int8 guard (edgeconv/convert/guard.py) until --max-accuracy-drop holds
    max_float_layers: int = 3
    levers: list[str] | None = None  # the guard's levers to pull, in order (None: all, edgeconv/convert/levers.py)
    finetune: Path | None = None  # a labelled training set: the guard's quantization-aware fine-tuning (qat lever)
    epochs: int | None = None
    lr: float | None = None
    target_extra: dict[str, Any] = field(default_factory=dict)  # the target's own options (edgeconv/target_options.py)
    cache_dir: Path | None = None  # --cache (else $EDGECONV_CACHE_DIR): edgeconv/export_cache.py
    command_line: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class ConvertResult:
    bundle: Path
    manifest: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.manifest["status"] == "ok"


def default_output(req: ConvertRequest, profile: Profile) -> Path:
    return Path(f"{req.model.stem}-{profile.name}-{req.precision}")


def check_request(req: ConvertRequest, target: Target, profile: Profile) -> bool:
    """Refuse what the request cannot mean for this target before any work; returns whether it calibrates."""
    needs_calib = req.precision in getattr(target, "needs_calibration", ())
    if needs_calib and req.calib is None:
        raise BadInput(
            f"--precision {req.precision} for {profile.name} needs calibration data: pass --calib FILE.npz "
            "(or a folder of images)",
            hint="--calib random exists to try the pipeline; the result is then flagged as uncalibrated everywhere",
        )
    if req.calib is not None and not needs_calib:
        raise BadInput(f"--calib applies to int8 conversions; {profile.name} {req.precision} does not calibrate")
    if req.max_accuracy_drop is not None and req.data is None:
        raise BadInput("--max-accuracy-drop needs --data (a labelled .npz) to measure accuracy on")
    if req.score_output is not None and req.data is None:
        raise BadInput("--score-output names the output accuracy is computed on: pass --data too")
    check_fallback(req, target, profile)
    return needs_calib


def check_fallback(req: ConvertRequest, target: Target, profile: Profile) -> None:
    """``--fallback auto`` needs an int8 conversion on a backend that can keep layers in float."""
    if req.fallback not in FALLBACK_MODES:
        raise BadInput(f"--fallback must be none or auto, not {req.fallback!r}")
    _check_levers(req)
    if req.fallback == "none":
        return
    if req.precision not in ("int8", "fp16"):
        raise BadInput(f"--fallback auto keeps layers of an int8 or fp16 conversion in float; this conversion is {req.precision}")
    # its goal: --max-accuracy-drop on labelled --data; else agreement on --data; else parity on the reference samples
    if req.max_float_layers < 1:
        raise BadInput("--max-float-layers must be at least 1")
    if not getattr(target, "float_fallback", False):
        raise PreflightError(f"--fallback auto: target {profile.name} ({profile.backend}) has no way to keep layers in float",
                             hint="targets with a float fallback: onnx, jetson, openvino, tflite, coral, ethos-u")


def _check_levers(req: ConvertRequest) -> None:
    """``--levers``, ``--finetune``, ``--epochs`` and ``--lr`` belong to the int8 guard."""
    from edgeconv.convert.levers import LEVERS

    guard_only = [flag for flag, v in (("--levers", req.levers), ("--finetune", req.finetune)) if v is not None]
    if guard_only and req.fallback != "auto":
        raise BadInput(f"{', '.join(guard_only)} set(s) the int8 guard's levers: add --fallback auto")
    if (req.epochs is not None or req.lr is not None) and req.finetune is None:
        raise BadInput("--epochs and --lr are for --finetune TRAIN.npz", hint="add --finetune TRAIN.npz (x and labels y)")
    if req.epochs is not None and req.epochs < 1 or req.lr is not None and req.lr <= 0:
        raise BadInput("--epochs must be at least 1 and --lr above 0")
    unknown = [n for n in req.levers or [] if n not in LEVERS]
    if unknown or req.levers == []:
        raise BadInput(f"--levers: unknown {', '.join(unknown) or '(none given)'}", hint=f"levers: {', '.join(LEVERS)}")
    if req.finetune is not None and req.levers is not None and "qat" not in req.levers:
        raise BadInput("--finetune is the qat lever's training set, and --levers leaves qat out")
    if req.finetune is not None and req.max_accuracy_drop is None:
        raise BadInput("--finetune is judged by --max-accuracy-drop on labelled --data: give both",
                       hint="fine-tuning changes the outputs, so agreement or parity with the source cannot judge it")
