"""Device profiles: data in the top-level ``targets/`` folder (shipped inside the wheel as
``edgeconv/_profiles``), one TOML per device. ``--target NAME`` is a profile name, a family (its default
profile) or the path of a user's own ``.toml``.
"""

from __future__ import annotations

import importlib.util
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.errors import BadInput
from edgeconv.parity import Tolerance, tolerance_from_dict

REQUIRED = ("name", "family", "backend", "runner", "precisions")


def profile_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent
    return [d for d in (here / "_profiles", here.parent / "targets") if d.is_dir()]


@dataclass
class Profile:
    name: str
    family: str
    backend: str
    runner: str
    precisions: list[str]
    description: str = ""
    default_precision: str = "fp32"  # what convert builds without --precision: always one of ``precisions``
    default_for_family: bool = False
    max_opset: int | None = None
    dynamic_batch: bool = True
    device_python: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> Profile:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BadInput(f"device profile {path} is not readable TOML: {exc}") from exc
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise BadInput(f"device profile {path} lacks {', '.join(missing)}", hint=f"a profile needs {', '.join(REQUIRED)}")
        tols = {p: tolerance_from_dict(t) for p, t in data.get("tolerances", {}).items()}
        precisions = list(data["precisions"])
        default = data.get("default_precision") or ("fp32" if "fp32" in precisions or not precisions else precisions[0])
        if default not in precisions:
            raise BadInput(f"device profile {path}: default_precision {default!r} is not one of its precisions "
                           f"({', '.join(precisions)})", hint="set default_precision to one the device offers")
        return cls(
            name=data["name"], family=data["family"], backend=data["backend"], runner=data["runner"],
            precisions=precisions, description=data.get("description", ""), default_precision=default,
            default_for_family=bool(data.get("default_for_family", False)), max_opset=data.get("max_opset"),
            dynamic_batch=bool(data.get("dynamic_batch", True)), device_python=data.get("device_python"),
            runtime=data.get("runtime", {}), tolerances=tols, path=path, raw=data,
        )

    def tolerance(self, precision: str) -> Tolerance:
        if precision not in self.tolerances:
            raise BadInput(f"device profile {self.name} has no tolerance for precision {precision!r}")
        return self.tolerances[precision]

    def availability(self) -> dict[str, Any]:
        """Which of the host-side modules and tools this profile needs are present, and what to install."""
        missing_mods = {m: extra for m, extra in self.runtime.get("modules", {}).items() if not _importable(m)}
        missing_tools = [t for t in self.runtime.get("tools", []) if shutil.which(t) is None]
        install = sorted({f"pip install 'edgeconv[{e}]'" if not e.startswith("(") else f"pip install {m}"
                          for m, e in missing_mods.items()})
        toolchain = self._toolchain()
        if toolchain and toolchain["missing"]:
            install.append(toolchain["install"])
        return {"available": not missing_mods and not missing_tools and not (toolchain and toolchain["missing"]),
                "missing_modules": sorted(missing_mods), "missing_tools": missing_tools, "install": install,
                "toolchain": toolchain, "device_part": self.device_part(), "runs_here": self.runs_here()}

    def _toolchain(self) -> dict[str, Any] | None:
        """The toolchain environment this profile's target runs in (``[runtime] toolchain``), whether it verifies."""
        name = self.runtime.get("toolchain")
        if not name:
            return None
        from edgeconv import toolchains

        tc, why = toolchains.inspect(name)
        return {"name": name, "missing": tc is None, "why": why or None, "install": toolchains.install_command(name)}

    def runs_here(self) -> str:
        """"native" when this machine is the profile's device (its ``[native]`` table, judged as ``measured_on`` judges
        a figure), else "emulated": what validate, profile and compare measure here is labelled host emulation."""
        import ctypes.util

        from edgeconv.core.machine import is_the_device

        info = {"device": self.runtime.get("device", "CPU"), "delegate": ""}  # OpenVINO: the CPU unless told otherwise
        if self.backend == "jetson":
            info["device"] = "GPU" if _importable("tensorrt") else "CPU"
        if self.backend == "coral" and ctypes.util.find_library("edgetpu"):
            info["delegate"] = "edgetpu"
        if self.backend == "openvino":
            info["device"] = "CPU"  # an Intel GPU/NPU is only known by opening OpenVINO: validate --device says
        return "native" if is_the_device(self.raw.get("native"), info) else "emulated"

    def device_part(self) -> str:
        """Whether the device-side step (engine build, compile, accelerator run) can happen on this machine."""
        import ctypes.util

        if self.backend == "jetson":
            return "here" if _importable("tensorrt") else "on the Jetson (TensorRT); host emulation here"
        if self.backend == "coral":
            compiler = "compile here" if shutil.which("edgetpu_compiler") else "compile where edgetpu_compiler is installed"
            tpu = "Edge TPU here" if ctypes.util.find_library("edgetpu") else "run on the Edge TPU; host emulation here"
            return f"{compiler}; {tpu}"
        if self.backend == "ethos-u":
            return "the NPU binary runs on Ethos-U hardware or Arm's FVP; host emulation of the int8 graph here"
        device = self.runtime.get("device")
        if self.backend == "openvino" and device and device != "CPU":
            return f"runs on an Intel {device} (validate exits 3 here without one; --device CPU works)"
        if self.runs_here() == "emulated":
            from edgeconv.core.machine import arch_name

            return f"runs on the device itself; host emulation on {arch_name()} here"
        return "here"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or blocked package counts as missing
        return False


def all_profiles() -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    for d in profile_dirs():
        for p in sorted(d.glob("*.toml")):
            prof = Profile.from_file(p)
            out.setdefault(prof.name, prof)
    return out


def resolve_profile(target: str) -> Profile:
    if target.endswith(".toml"):
        path = Path(target)
        if not path.is_file():
            raise BadInput(f"device profile file {path} does not exist")
        return Profile.from_file(path)
    profiles = all_profiles()
    if target in profiles:
        return profiles[target]
    family = [p for p in profiles.values() if p.family == target]
    defaults = [p for p in family if p.default_for_family]
    if defaults:
        return defaults[0]
    if len(family) == 1:
        return family[0]
    known = sorted(set(profiles) | {p.family for p in profiles.values()})
    raise BadInput(f"unknown target {target!r}",
                   hint=f"known targets: {', '.join(known)} (or a path to your own .toml); see `edgeconv targets`")
