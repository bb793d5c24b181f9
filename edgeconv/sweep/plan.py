"""What a sweep runs: cells (model × target × precision, on this machine or a named device), read from the command
line or from a plan file (TOML). Each cell is one `convert` and one `validate`, run as the commands themselves; its
key hashes everything its result depends on, so a rerun skips the cells already done. See docs/architecture.md,
"Sweeps".

A plan file::

    targets = ["onnx", "tflite", "raspberry-pi-5@board"]   # every model's, unless a model lists its own
    precisions = ["fp32"]                                    # default: each profile's own

    [[models]]
    path = "models/kws.pt2"
    name = "kws"                     # default: the file's stem
    data = "data/kws_test.npz"       # validate --data (and convert --data)
    calib = "data/kws_calib.npz"     # convert --calib (int8 cells)
    sample = "data/kws_sample.npz"   # convert --sample
    convert_args = ["--opset", "17"]
    validate_args = ["--runs", "50"]
    targets = ["onnx", "openvino"]   # this model's own list (optional)

    [devices.board]                  # a target written T@board is validated on this device over SSH
    remote = "pi@192.168.1.20"
    identity = "~/.ssh/id_ed25519"
    ssh_options = ["StrictHostKeyChecking=accept-new"]
    remote_python = "python3"
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.errors import BadInput

FILE_ROLES = ("model", "data", "calib", "sample")


@dataclass(frozen=True)
class Device:
    """A device reached over SSH: what `validate --remote` needs, and the name cells use for it."""

    name: str
    remote: str
    identity: str | None = None
    ssh_options: tuple[str, ...] = ()
    remote_python: str = "python3"
    timeout: float | None = None

    def validate_args(self) -> list[str]:
        args = ["--remote", self.remote, "--remote-python", self.remote_python]
        if self.identity:
            args += ["--identity", str(Path(self.identity).expanduser())]
        for opt in self.ssh_options:
            args += ["--ssh-option", opt]
        if self.timeout is not None:
            args += ["--timeout", str(self.timeout)]
        return args


@dataclass
class Cell:
    """One convert + validate. ``files`` maps a role (model, data, calib, sample) to a path on the driver."""

    model_name: str
    target: str
    precision: str | None
    files: dict[str, str]
    convert_args: list[str] = field(default_factory=list)
    validate_args: list[str] = field(default_factory=list)
    device: Device | None = None
    key: str = ""

    @property
    def cell_id(self) -> str:
        at = f"@{self.device.name}" if self.device else ""
        return f"{self.model_name}|{self.target}{at}|{self.precision or 'default'}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cell_id"] = self.cell_id
        return d


def cell_key(cell: Cell, code: str) -> str:
    """sha256 of what the cell's result depends on: its files' bytes, its options and edgeconv's code."""
    from edgeconv.specs import sha256_of

    parts = {role: sha256_of(Path(p)) for role, p in sorted(cell.files.items())}  # a SavedModel folder too
    parts.update(target=cell.target, precision=cell.precision, convert=cell.convert_args, validate=cell.validate_args,
                 device=asdict(cell.device) if cell.device else None, code=code)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def split_target(text: str, devices: dict[str, Device]) -> tuple[str, Device | None]:
    """``T`` or ``T@DEVICE`` (a device of the plan's)."""
    target, _, dev = text.strip().partition("@")
    if not target:
        raise BadInput(f"an empty target in {text!r}")
    if not dev:
        return target, None
    if dev not in devices:
        known = ", ".join(sorted(devices)) or "none: declare them in a plan file's [devices.NAME]"
        raise BadInput(f"target {text!r} names device {dev!r}, which the plan does not declare (devices: {known})")
    return target, devices[dev]


def _existing(path: str | Path, what: str, base: Path) -> str:
    p = (base / Path(path).expanduser()).resolve() if not Path(path).expanduser().is_absolute() else Path(path).expanduser()
    if not p.exists():
        raise BadInput(f"{what} {path} does not exist")
    return str(p)


def _model_cells(model: dict[str, Any], targets: list[str], precisions: list[str | None], devices: dict[str, Device],
                 base: Path) -> list[Cell]:
    if "path" not in model:
        raise BadInput(f"a plan model has no path: {model}")
    files = {role: _existing(model[role] if role != "model" else model["path"], role, base)
             for role in FILE_ROLES if model.get("path" if role == "model" else role)}
    name = str(model.get("name") or Path(model["path"]).stem)
    cells = []
    for text in model.get("targets") or targets:
        target, device = split_target(text, devices)
        for precision in model.get("precisions") or precisions:
            cells.append(Cell(name, target, precision, dict(files), list(model.get("convert_args", [])),
                              list(model.get("validate_args", [])), device))
    return cells


def _devices(table: dict[str, Any]) -> dict[str, Device]:
    out = {}
    for name, d in table.items():
        if not isinstance(d, dict) or "remote" not in d:
            raise BadInput(f"plan device {name!r} needs remote = \"user@host[:port]\"")
        out[name] = Device(name, str(d["remote"]), d.get("identity"), tuple(d.get("ssh_options", [])),
                           str(d.get("remote_python", "python3")), d.get("timeout"))
    return out


def read_plan(path: Path) -> list[Cell]:
    """The cells of a TOML plan; file paths are relative to the plan's folder."""
    import tomllib

    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BadInput(f"plan {path} cannot be read: {exc}") from None
    devices = _devices(doc.get("devices", {}))
    targets = list(doc.get("targets", []))
    precisions = list(doc.get("precisions", [])) or [None]
    models = doc.get("models", [])
    if not models:
        raise BadInput(f"plan {path} lists no [[models]]")
    cells = [c for m in models for c in _model_cells(m, targets, precisions, devices, path.parent.resolve())]
    return _checked(cells)


def cells_from_args(models: list[Path], targets: list[str], precisions: list[str], *, data: Path | None,
                    calib: Path | None, sample: Path | None) -> list[Cell]:
    """The cells of ``sweep MODEL... --targets … [--precisions …]``: every model on every target."""
    extra = {"data": data, "calib": calib, "sample": sample}
    cells = []
    for m in models:
        spec = {"path": str(m), **{k: str(v) for k, v in extra.items() if v is not None}}
        cells += _model_cells(spec, targets, list(precisions) or [None], {}, Path.cwd())
    return _checked(cells)


def _checked(cells: list[Cell]) -> list[Cell]:
    if not cells:
        raise BadInput("the sweep has no cells: give models and --targets (or a plan with both)")
    seen: dict[str, Cell] = {}
    for c in cells:
        if c.cell_id in seen:
            raise BadInput(f"two cells are both {c.cell_id!r}: give the models different names")
        seen[c.cell_id] = c
    return cells
