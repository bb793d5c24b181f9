"""The bundle: a directory holding artifacts, ``manifest.json`` and ``reference.npz``, written atomically.

A bundle is built in a temporary sibling directory and renamed into place at the end, so a failed or
interrupted convert leaves nothing at ``-o``. The exception is a conversion that worked but whose artifact misses a
check (an accuracy budget; for int8, parity too): that bundle is written whole, with ``"status": "failed-check"``
and the failing check in its manifest, so ``edgeconv debug`` and ``validate`` can open what was built.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.artifact import artifact_to_run
from edgeconv.errors import BadInput, CheckFailed
from edgeconv.specs import TensorSpec, sha256_of

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
DEVICE_RUNNER_SOURCE = Path(__file__).resolve().parent / "core"  # the package the device runner is built from
DEVICE_RUNNER_NAME = "edgeconv_runner.pyz"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every entry's timestamp: the same edgeconv gives the same bytes, the same sha256
_RUNNER_MAIN = b'''"""edgeconv device runner: ``python3 edgeconv_runner.pyz [BUNDLE] ...`` runs the bundle this file travels
with, with only numpy and the device's runtime (edgeconv.core, Python 3.6+; see docs/architecture.md)."""
import os
import sys

from edgeconv.core.cli import main

sys.exit(main(default_bundle=os.path.dirname(os.path.abspath(sys.argv[0]))))
'''
_RUNNER_PACKAGE = b'"""Only edgeconv.core travels in a device runner: the host and the device share it."""\n'


def device_runner_bytes() -> bytes:
    """``edgeconv_runner.pyz``: the package ``edgeconv/core`` as a zipapp (a ``__main__.py`` that calls its command line),
    stored with sorted entries and fixed timestamps and modes, so that it is byte-identical wherever it is built from
    the same sources."""
    entries = {"__main__.py": _RUNNER_MAIN, "edgeconv/__init__.py": _RUNNER_PACKAGE}
    for path in DEVICE_RUNNER_SOURCE.rglob("*.py"):
        rel = path.relative_to(DEVICE_RUNNER_SOURCE)
        if "__pycache__" not in rel.parts:
            entries["edgeconv/core/" + rel.as_posix()] = path.read_bytes()
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.create_system = 3  # unix, whatever builds it
            info.external_attr = 0o644 << 16
            z.writestr(info, entries[name])
    return buf.getvalue()


def write_device_runner(work: Path) -> str:
    """Put the device runner (numpy + the runtime only; one file) into the bundle being written; return its file name."""
    dest = work / DEVICE_RUNNER_NAME
    dest.write_bytes(device_runner_bytes())
    return dest.name


class BundleWriter:
    """``with BundleWriter(out, force) as work:`` — write into ``work``; on success it becomes ``out``."""

    def __init__(self, out: Path, force: bool = False):
        self.out = out
        self.force = force
        self.work: Path | None = None

    def __enter__(self) -> Path:
        if self.out.exists() and not self.force:
            raise BadInput(f"{self.out} already exists", hint="choose another -o or pass --force to replace it")
        if self.out.exists() and not (self.out / MANIFEST).exists() and any(self.out.iterdir()):
            raise BadInput(f"{self.out} exists and is not an edgeconv bundle; refusing to replace it, even with --force")
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"cannot create the output folder {parent}: {exc.strerror}") from exc
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BadInput(f"cannot write into {parent} (permission denied)", hint="choose a writable -o")
        self.work = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=parent))
        return self.work

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.work is not None
        if exc_type is not None:  # includes KeyboardInterrupt: leave nothing behind
            shutil.rmtree(self.work, ignore_errors=True)
            return
        if self.out.exists():
            trash = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, trash)
            os.replace(self.work, self.out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.work, self.out)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temporary file + rename) for regular files; a device or pipe (``--report /dev/stdout``) is
    written in place, never replaced."""
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    if path.exists() and not path.is_file():
        with open(path, "w") as f:
            f.write(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_reference(path: Path, inputs: dict[str, np.ndarray], outputs: list[np.ndarray], output_names: list[str]) -> None:
    arrays = {f"input:{k}": v for k, v in inputs.items()}
    arrays.update({f"output:{n}": v for n, v in zip(output_names, outputs)})
    np.savez(path, **arrays)


@dataclass
class Bundle:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path, *, verify: bool = True) -> Bundle:
        if not path.exists():
            raise BadInput(f"bundle {path} does not exist")
        mf = path / MANIFEST
        if not path.is_dir() or not mf.is_file():
            raise BadInput(f"{path} is not an edgeconv bundle (no {MANIFEST})", hint="make one with `edgeconv convert`")
        try:
            manifest = json.loads(mf.read_text())
        except json.JSONDecodeError as exc:
            raise BadInput(f"{mf} is not valid JSON: {exc}") from exc
        version = manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BadInput(f"{path} has manifest schema {version}; this edgeconv reads schema {SCHEMA_VERSION}")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Every artifact is present with the recorded sha256."""
        bad = []
        for art in self.manifest["artifacts"]:
            p = self.path / art["file"]
            if not p.exists():
                bad.append(f"{art['file']} is missing")
            elif sha256_of(p) != art["sha256"]:
                bad.append(f"{art['file']} changed since conversion (sha256 differs)")
        if bad:
            raise CheckFailed(f"bundle {self.path} is damaged: " + "; ".join(bad), hint="convert again")

    @property
    def model_artifact(self) -> dict[str, Any]:
        return next(a for a in self.manifest["artifacts"] if a["role"] == "model")

    def artifact(self, role: str) -> dict[str, Any] | None:
        return next((a for a in self.manifest["artifacts"] if a["role"] == role), None)

    def artifact_to_run(self) -> dict[str, Any]:
        """What this machine runs: the device runner's one rule (a TensorRT engine where TensorRT is installed, the
        Edge TPU model where its library loads, else the main model)."""
        return artifact_to_run(self.manifest)[0]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.manifest["outputs"]]

    def reference(self) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        with np.load(self.path / REFERENCE) as z:
            inputs = {s.name: z[f"input:{s.name}"] for s in self.inputs}
            outputs = [z[f"output:{s.name}"] for s in self.outputs]
        return inputs, outputs
