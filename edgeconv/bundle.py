"""The bundle: a directory holding artifacts, ``manifest.json`` and ``reference.npz``, written atomically.

A bundle is built in a temporary sibling directory and renamed into place at the end, so a failed, interrupted or
killed convert leaves nothing at ``-o`` (the next run on that ``-o`` removes the temporary folder a killed one left;
two runs on one ``-o`` never mix: the second to finish is refused, or with ``--force`` replaces the first's whole).
The exception is a conversion that worked but whose artifact misses a check (an accuracy budget; for int8, parity
too): that bundle is written whole, with ``"status": "failed-check"`` and the failing check in its
manifest, so ``edgeconv debug`` and ``validate`` can open what was built.

Opening a bundle trusts nothing in it: every path its manifest names must stay inside the bundle (checked before any
file is opened) and every artifact must have its recorded sha256; a bundle that fails is bad input (exit 2).
"""

from __future__ import annotations

import glob
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

from edgeconv.atomic import hold, locked, no_space, remove_abandoned, swap_in, write_text_atomic
from edgeconv.core.artifact import artifact_to_run
from edgeconv.errors import BadInput, ConversionFailed
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
        self._lock: int | None = None

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
        with locked(parent):  # no other run creates or removes a temporary folder here meanwhile
            remove_abandoned(parent, f".{glob.escape(self.out.name)}.tmp-*")  # what a killed run on this -o left
            try:
                self.work = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.tmp-", dir=parent))
            except OSError as exc:
                raise BadInput(f"cannot create the bundle's temporary folder in {parent}: {exc.strerror}") from exc
            self._lock = hold(self.work)  # ours while this process lives
        return self.work

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.work is not None and self._lock is not None
        try:
            if exc_type is not None:  # includes KeyboardInterrupt: leave nothing behind
                written = _size(self.work)
                shutil.rmtree(self.work, ignore_errors=True)
                if exc is not None and no_space(exc):
                    raise _no_space_error(self.out, written) from exc
                return
            with locked(self.out.parent):
                if self.out.exists() and not self.force:  # another conversion to this -o finished first
                    shutil.rmtree(self.work, ignore_errors=True)
                    raise BadInput(f"{self.out} was written by another conversion while this one ran; this one's bundle "
                                   "is discarded", hint="pass --force to replace it, or choose another -o")
                old = swap_in(self.work, self.out)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            os.close(self._lock)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _no_space_error(out: Path, written: int) -> ConversionFailed:
    free = shutil.disk_usage(out.parent).free if out.parent.exists() else 0
    return ConversionFailed(
        f"no space left on the device holding {out.parent}: the bundle for {out} needs more than the {written / 1e6:.1f} MB "
        f"written when the disk filled ({free / 1e6:.1f} MB free now); nothing was left at {out}",
        hint=f"free more than {written / 1e6:.1f} MB there, or choose an -o on another filesystem")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temporary file + rename) for regular files; a device or pipe (``--report /dev/stdout``) is
    written in place, never replaced."""
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    if path.exists() and not path.is_file():
        with open(path, "w") as f:
            f.write(text)
        return
    write_text_atomic(path, text)


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
        """The bundle at ``path``, its manifest checked: schema, every path it names inside the bundle (before any file
        is opened), and with ``verify`` every artifact's sha256. A bundle that fails is BadInput naming what is wrong."""
        if not path.exists():
            raise BadInput(f"bundle {path} does not exist")
        mf = path / MANIFEST
        if not path.is_dir() or not (mf.is_file() or mf.is_symlink()):
            raise BadInput(f"{path} is not an edgeconv bundle (no {MANIFEST})", hint="make one with `edgeconv convert`")
        if inside(path, MANIFEST) is None or not mf.is_file():
            raise BadInput(f"{mf} is not a file inside the bundle (a link to {mf.resolve()})", hint="convert again")
        try:
            manifest = json.loads(mf.read_bytes())
        except ValueError as exc:
            raise BadInput(f"{mf} is not valid JSON: {exc}") from exc
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if version != SCHEMA_VERSION:
            raise BadInput(f"{mf}: manifest schema {version}; this edgeconv reads schema {SCHEMA_VERSION}")
        problems = manifest_problems(path, manifest)
        if problems:
            raise BadInput(f"{mf} is not a valid bundle manifest: " + "; ".join(problems[:4]), hint="convert again")
        bundle = cls(path, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Every artifact is a file in the bundle with the recorded sha256, and so is reference.npz when it is recorded."""
        bad = []
        for art in self.manifest["artifacts"]:
            p = self.path / art["file"]
            if not p.is_file():
                bad.append(f"{art['file']} is missing" if not p.exists() else f"{art['file']} is not a regular file")
            elif sha256_of(p) != art["sha256"]:
                bad.append(f"{art['file']} changed since conversion (sha256 differs)")
        ref = self._reference_problem()
        if bad or ref:
            raise BadInput(f"bundle {self.path} is damaged: " + "; ".join(bad + ([ref] if ref else [])), hint="convert again")

    def _reference_problem(self) -> str | None:
        """What is wrong with reference.npz: missing, outside the bundle, or not the file the manifest recorded (bundles
        from before the manifest recorded its sha256 are taken as they are)."""
        ref = self.path / REFERENCE
        if inside(self.path, REFERENCE) is None or not ref.is_file():
            return f"{REFERENCE} is missing or not a file inside the bundle"
        recorded = (self.manifest.get("reference") or {}).get("sha256")
        if recorded and sha256_of(ref) != recorded:
            return f"{REFERENCE} changed since conversion (sha256 differs)"
        return None

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
        """reference.npz's inputs and outputs, checked first (see ``_reference_problem``)."""
        problem = self._reference_problem()
        if problem:
            raise BadInput(f"bundle {self.path} is damaged: {problem}", hint="convert again")
        with np.load(self.path / REFERENCE) as z:
            inputs = {s.name: z[f"input:{s.name}"] for s in self.inputs}
            outputs = [z[f"output:{s.name}"] for s in self.outputs]
        return inputs, outputs


# the fields of an artifact's device build that name a file of the bundle
_BUILD_FILES = ("onnx", "engine", "timing_cache", "tflite", "file", "log")


def inside(root: Path, rel: Any) -> Path | None:
    """``root / rel`` when ``rel`` is a plain relative path that stays inside ``root`` once symbolic links are
    followed, else None. Nothing is opened (``resolve`` only reads links)."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return None
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or p.parts[:1] == ("~",):
        return None
    base = root.resolve()
    target = (base / p).resolve()
    return target if target != base and target.is_relative_to(base) else None


def manifest_problems(root: Path, m: dict[str, Any]) -> list[str]:
    """What makes ``m`` unusable as the manifest of the bundle at ``root``: missing sections, and paths that leave the
    bundle (checked before any of them is opened)."""
    arts = m.get("artifacts")
    if not isinstance(arts, list) or not arts:
        return ["it lists no artifacts"]
    problems = [f"{key} is not a list" for key in ("inputs", "outputs") if not isinstance(m.get(key), list)]
    for i, art in enumerate(arts):
        if not isinstance(art, dict) or not all(isinstance(art.get(k), str) for k in ("file", "role", "sha256")):
            problems.append(f"artifacts[{i}] has no file, role and sha256")
            continue
        build = art.get("device_build") if isinstance(art.get("device_build"), dict) else {}
        named = [("file", art["file"])] + [(f"device_build.{k}", build[k]) for k in _BUILD_FILES if k in build]
        problems += [f"artifacts[{i}].{key} {rel!r} points outside the bundle" for key, rel in named
                     if inside(root, rel) is None]
    if not any(isinstance(a, dict) and a.get("role") == "model" for a in arts):
        problems.append("no artifact has the role 'model'")
    return problems
