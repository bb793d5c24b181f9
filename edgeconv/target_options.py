"""The options each target backend takes, declared once: name, type, help, default, and which backends own it.

The CLI builds ``convert``'s options and their help panels from this table (as Polygraphy's argument groups do), and
``build``'s from the rows that name it; an option given for a target that does not take it is refused, naming the
targets that do. Kept as plain data in a module of its own so that ``edgeconv --help`` does not import the target
modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeconv.errors import BadInput


@dataclass(frozen=True)
class TargetOption:
    key: str  # the name the target reads (TargetOptions.extra[key]) and the CLI parameter's name
    flag: str
    type: type
    help: str
    backends: tuple[str, ...]
    panel: str
    default: Any = None
    multiple: bool = False
    choices: tuple[str, ...] = ()
    commands: tuple[str, ...] = ("convert",)  # the commands that take it (build: what is built on or for the device)


TFLITE_FAMILY = ("tflite", "coral", "ethos-u")

TARGET_OPTIONS: tuple[TargetOption, ...] = (
    TargetOption("quant_preset", "--quant-preset", str, "int8: performance (symmetric) or mixed (asymmetric activations).",
                 ("openvino",), "OpenVINO", choices=("performance", "mixed")),
    TargetOption("ignored_nodes", "--ignore-node", str, "int8: keep this node in float (repeatable).", ("openvino",), "OpenVINO",
                 multiple=True),
    TargetOption("io_dtype", "--io-dtype", str, "int8: input/output tensors float, int8 or uint8 (default: the profile's; "
                 "float for LiteRT, int8 for Coral/Ethos-U).", TFLITE_FAMILY, "TFLite, Coral, Ethos-U",
                 choices=("float", "int8", "uint8")),
    TargetOption("allow_float_ops", "--allow-float-ops", bool, "int8: keep ops that have no int8 kernel in float instead of "
                 "failing (listed in the manifest).", ("tflite",), "TFLite, Coral, Ethos-U", default=False),
    TargetOption("min_tpu_share", "--min-tpu-share", float, "Fail (exit 1) when less than this share of ops is predicted to "
                 "run on the Edge TPU (default: fail only when none does).", ("coral",), "TFLite, Coral, Ethos-U"),
    TargetOption("compiler", "--compiler", str, "Coral: path to edgetpu_compiler (default: found on PATH).", ("coral",),
                 "TFLite, Coral, Ethos-U", commands=("convert", "build")),
    TargetOption("min_npu_share", "--min-npu-share", float, "Ethos-U: fail (exit 1) when Vela puts less than this share of "
                 "ops on the NPU (default: fail only when none).", ("ethos-u",), "TFLite, Coral, Ethos-U"),
    TargetOption("dla_core", "--dla-core", int, "Build the engine for this DLA core.", ("jetson",), "Jetson",
                 commands=("convert", "build")),
    TargetOption("max_batch", "--max-batch", int, "With --dynamic-batch: the largest batch of the engine's profile "
                 "(default 8).", ("jetson",), "Jetson"),
    TargetOption("workspace_mb", "--workspace", int, "TensorRT builder workspace in MB (default 1024).", ("jetson",), "Jetson",
                 commands=("convert", "build")),
    TargetOption("et_backend", "--et-backend", str, "xnnpack (default) or portable (no delegate).", ("executorch",),
                 "ExecuTorch", choices=("xnnpack", "portable")),
)


def options_of(command: str) -> tuple[TargetOption, ...]:
    """The target options ``command`` takes."""
    return tuple(o for o in TARGET_OPTIONS if command in o.commands)


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The target options the user actually set (a default is not a choice)."""
    out = {}
    for opt in TARGET_OPTIONS:
        v = values.get(opt.key)
        if v is None or v == opt.default or (opt.multiple and not v):
            continue
        out[opt.key] = list(v) if opt.multiple else v
    return out


def as_arguments(values: dict[str, Any]) -> list[str]:
    """The target options the user set, as command-line arguments again (for edgeconv on a device)."""
    by_key = {o.key: o for o in TARGET_OPTIONS}
    args: list[str] = []
    for key, value in given(values).items():
        flag = by_key[key].flag
        if value is True:
            args.append(flag)
        else:
            args += [a for item in (value if by_key[key].multiple else [value]) for a in (flag, str(item))]
    return args


def check_for(backend: str, profile_name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Refuse options that ``backend`` does not take (naming the targets that do) or values outside their choices;
    return the options for the target."""
    chosen = given(values)
    by_key = {o.key: o for o in TARGET_OPTIONS}
    problems = []
    for key, value in chosen.items():
        opt = by_key[key]
        if backend not in opt.backends:
            problems.append(f"{opt.flag} is an option of {', '.join(opt.backends)}; target {profile_name} ({backend}) "
                            "does not take it")
        elif opt.choices and value not in opt.choices:
            problems.append(f"{opt.flag} must be one of {', '.join(opt.choices)}, not {value!r}")
    if problems:
        raise BadInput("; ".join(problems), hint="`edgeconv convert --help` lists each target's options in its own panel")
    return chosen
