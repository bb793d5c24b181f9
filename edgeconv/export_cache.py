"""``convert --cache DIR``: what a conversion computes before its target step, kept for the next target.

Converting one model for several targets repeats the same work each time: loading the source, running it on the
reference and ``--data`` inputs, exporting ONNX and the canonical step. With a cache directory (``--cache DIR`` or
``EDGECONV_CACHE_DIR``) the first conversion stores

- the source's facts (format, inputs, notes, library versions, Keras layer names),
- the canonical ONNX graph with its export and canonical records, per export setting (inputs, opset, dynamic
  batch, the profile's opset ceiling),
- the source's outputs, per input array set,
- a target's own intermediates that other targets build the same way (onnx2tf's SavedModel, which tflite, coral
  and ethos-u all convert from),

and the next conversion of the same model takes them instead of recomputing; the source itself is then loaded
only when something needs the model (a target that builds from it, an input hint).

Nothing read back is trusted: each entry holds ``entry.json`` (written last) with the layout version, the entry's own
name and model key, and the sha256 of each of its files, and is checked against it before use. An entry that does
not match (truncated, zero-filled or swapped files, a file missing, an unreadable record) is a miss: one warning line,
the entry removed and rebuilt, recorded in the manifest (``export.cache.damaged``).

An entry is keyed by the model's bytes (a SavedModel folder: every file), the load options, the file of a
``--model-class`` and a fingerprint of the code that computed it: every edgeconv module and the versions of the
libraries that load, run and export models. A change of any of them misses; nothing is ever invalidated by date.
The manifest records what came from the cache (``export.cache``). Entries are written to a temporary folder and
renamed into place, under a lock per entry, so parallel conversions of one model compute it once; the temporary
folder of a killed run is removed by the next run that takes that entry's lock.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.atomic import file_hashes, locked
from edgeconv.core.text import first_line
from edgeconv.errors import BadInput
from edgeconv.specs import TensorSpec, sha256_of

CACHE_ENV = "EDGECONV_CACHE_DIR"
FORMAT = 2  # the layout of an entry on disk (2: entry.json with the sha256 of every file)
ENTRY_FILE = "entry.json"  # an entry's record of itself, written last
# libraries whose version changes what loading, running or exporting a source gives
LIBS = ("numpy", "torch", "onnxscript", "onnx", "onnxruntime", "onnxslim", "tensorflow", "tensorflow-cpu", "keras",
        "tf_keras", "tf2onnx", "transformers")
# the source's attributes a cached conversion needs before (or instead of) loading the model
FACTS = ("framework", "format", "frontend", "layout_default", "shapes_baked", "default_opset", "max_export_opset",
         "declared_scalars")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of every edgeconv module and the versions of LIBS and Python."""
    from importlib import metadata

    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256(f"format {FORMAT} python {sys.version}".encode())
    for p in sorted(pkg.rglob("*.py")):
        h.update(str(p.relative_to(pkg)).encode())
        h.update(p.read_bytes())
    for lib in LIBS:
        try:
            h.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=-".encode())
    return h.hexdigest()


def model_class_file(ref: str | None) -> Path | None:
    """The source file of ``--model-class`` (``file.py:Class`` or ``pkg.module:Class``; for Keras custom layers the
    module alone), or None when there is none."""
    if not ref:
        return None
    mod = ref.rpartition(":")[0] or ref
    if mod.endswith(".py"):
        return Path(mod)
    import importlib.util

    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise BadInput(f"--model-class {ref}: cannot find the module's file to key the cache on",
                       hint="leave out --cache, or give the class as path/to/file.py:Class")
    return Path(spec.origin)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def feed_digest(feed: dict[str, np.ndarray], batch: int | None) -> str:
    h = hashlib.sha256(repr(batch).encode())
    for name in sorted(feed):
        a = np.ascontiguousarray(feed[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class CachedSource:
    """A source model whose facts come from the cache. The model itself is loaded the first time something needs more
    than the facts: running it, exporting it, a target that builds from it."""

    def __init__(self, path: Path, facts: dict[str, Any], load: Callable[[], Any]):
        self.__dict__.update({k: facts[k] for k in FACTS})
        self.path = path
        self.inputs = [TensorSpec.from_dict(d) for d in facts["inputs"]]
        self.notes = list(facts["notes"])
        self._facts, self._load, self._real = facts, load, None

    def loaded(self):
        if self._real is None:
            self._real = self._load()
        return self._real

    def versions(self) -> dict[str, str | None]:
        return dict(self._facts["versions"])

    def layer_names(self) -> list[str] | None:
        return self._facts["layer_names"]

    def run(self, feed):
        return self.loaded().run(feed)

    def export_onnx(self, dest, **kw):
        return self.loaded().export_onnx(dest, **kw)

    def input_hint(self, name: str) -> str:
        return self.loaded().input_hint(name)

    def __getattr__(self, name: str):  # what only the loaded model has (model, module, signature, proto, …)
        if name.startswith("__") or name in ("_facts", "_load", "_real"):
            raise AttributeError(name)
        return getattr(self.loaded(), name)


class ExportCache:
    """One model's entry in the cache directory ``root``; ``events`` says what was taken from it and what was stored."""

    def __init__(self, root: Path, model: Path, load_options) -> None:
        cls_file = model_class_file(load_options.model_class)
        key = _digest({"code": code_fingerprint(), "model": sha256_of(model), "load": asdict(load_options),
                       "model_class_file": sha256_of(cls_file) if cls_file and cls_file.is_file() else None})
        self.root = root
        self.key = key
        self.dir = root / key[:32]
        self.events: dict[str, str] = {}

    @classmethod
    def from_request(cls, cache_dir: Path | None, model: Path, load_options) -> ExportCache | None:
        cache_dir = cache_dir or (Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else None)
        if cache_dir is None:
            return None
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadInput(f"cache directory {cache_dir} cannot be created: {exc}") from exc
        return cls(cache_dir, model, load_options)

    def record(self) -> dict[str, Any]:
        return {"dir": str(self.root), "key": self.key[:16], **self.events}

    @contextlib.contextmanager
    def _locked(self, name: str):
        self.dir.mkdir(parents=True, exist_ok=True)
        with locked(self.dir / f"{name}.lock"):
            yield

    def _entry_id(self, name: str) -> str:
        return f"{self.key}/{name}"

    def _lookup(self, name: str) -> Path | None:
        """The entry ``name`` when it is whole, else None (call under its lock). A damaged entry is removed, with one
        warning line, and the caller rebuilds it; a killed run's temporary folders for it are removed too."""
        for tmp in self.dir.glob(f".{name}-tmp-*"):  # nobody else writes this entry while we hold its lock
            shutil.rmtree(tmp, ignore_errors=True)
        entry = self.dir / name
        if not entry.exists() and not entry.is_symlink():
            return None
        problem = entry_problem(entry, self._entry_id(name))
        if problem is None:
            return entry
        from edgeconv.quiet import terminal  # edgeconv's own line: not captured with the libraries' output of the step

        print(f"warning: the cache entry {entry} is damaged ({problem}); rebuilding it", file=terminal())
        self.events.setdefault("damaged", []).append(f"{name}: {problem}")
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
        return None

    def _store(self, name: str, write: Callable[[Path], None]) -> None:
        """Write the entry ``name`` into a temporary folder, record its files' sha256 last, then rename it into place."""
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-tmp-", dir=self.dir))
        try:
            write(tmp)
            doc = {"format": FORMAT, "entry": self._entry_id(name), "files": file_hashes(tmp)}
            (tmp / ENTRY_FILE).write_text(json.dumps(doc, indent=1))
            os.replace(tmp, self.dir / name)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk or a read-only cache: this run just doesn't store it

    # -- the source -------------------------------------------------------------------------------------------------

    def source(self, path: Path, load: Callable[[], Any]):
        """The source: its cached facts with the model loaded on demand, or loaded now (and its facts stored)."""
        with self._locked("source"):
            entry = self._lookup("source")
            if entry is not None:
                self.events["source"] = "hit"
                return CachedSource(path, json.loads((entry / "facts.json").read_text()), load)
            src = load()
            facts = {k: getattr(src, k) for k in FACTS} | {
                "inputs": [s.to_dict() for s in src.inputs], "notes": list(src.notes), "versions": src.versions(),
                "layer_names": layer_names(src)}
            self._store("source", lambda d: (d / "facts.json").write_text(json.dumps(facts, indent=1)))
            self.events["source"] = "stored"
            return src

    # -- the source's outputs ---------------------------------------------------------------------------------------

    def outputs(self, what: str, feed: dict[str, np.ndarray], batch: int | None,
                compute: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
        name = "outputs-" + feed_digest(feed, batch)[:32]
        with self._locked(name):
            entry = self._lookup(name)
            if entry is not None:
                with np.load(entry / "outputs.npz") as z:
                    self.events[what] = "hit"
                    return [z[f"o{i}"] for i in range(len(z.files))]
            outs = compute()
            self._store(name, lambda d: np.savez(d / "outputs.npz", **{f"o{i}": o for i, o in enumerate(outs)}))
            self.events[what] = "stored"
            return outs

    # -- the canonical ONNX graph -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def export(self, settings: dict[str, Any], onnx_path: Path):
        """``with cache.export(settings, path) as slot:`` — on a hit ``slot.hit`` is (ExportRecord, CanonicalRecord)
        and the graph is already at ``path``; on a miss the body exports and canonicalizes into ``path`` and calls
        ``slot.keep(record, canonical)``. Parallel conversions of one model wait here for the first one's graph."""
        name = "export-" + _digest(settings)[:32]
        with self._locked(name):
            entry = self._lookup(name)
            slot = ExportSlot()
            if entry is not None:
                shutil.copyfile(entry / "model.onnx", onnx_path)
                slot.hit = _records(json.loads((entry / "record.json").read_text()))
                self.events["export"] = "hit"
            yield slot
            if slot.hit is None and slot.kept is not None:
                export_rec, canon = slot.kept
                doc = {"export": {k: v for k, v in asdict(export_rec).items() if k != "constant_inputs"},
                       "canonical": canon.to_dict()}

                def write(d: Path) -> None:
                    shutil.copyfile(onnx_path, d / "model.onnx")
                    (d / "record.json").write_text(json.dumps(doc, indent=1))

                self._store(name, write)
                self.events["export"] = "stored"


    # -- a target's own intermediates ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str, key: dict[str, Any]):
        """``with cache.step("onnx2tf", key) as slot:`` — a target's intermediate that several targets build the same
        way from the same graph (onnx2tf's SavedModel for tflite, coral and ethos-u). On a hit ``slot.hit`` is the
        cached folder; on a miss the body builds it and calls ``slot.keep(writer)`` (``writer(folder)`` copies it in).
        ``key``: everything the intermediate depends on besides this entry's model and code (the graph the target
        prepared, its options, the tool's version). Parallel conversions of one model wait for the first one's."""
        entry_name = f"{name}-" + _digest(key)[:32]
        with self._locked(entry_name):
            entry = self._lookup(entry_name)
            slot = StepSlot()
            if entry is not None:
                slot.hit = entry
                self.events[name] = "hit"
            yield slot
            if slot.hit is None and slot.writer is not None:
                writer = slot.writer

                def write(d: Path) -> None:
                    writer(d)
                    (d / "key.json").write_text(json.dumps(key, indent=1, default=str))

                self._store(entry_name, write)
                self.events[name] = "stored"


def entry_problem(entry: Path, ident: str) -> str | None:
    """What is wrong with the cache entry folder ``entry`` (whose record must name it ``ident``), or None when every
    file it recorded is there with its sha256 and nothing else is."""
    try:
        doc = json.loads((entry / ENTRY_FILE).read_bytes())
    except FileNotFoundError:
        return f"no {ENTRY_FILE}"
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON (truncated, zero-filled)
        return f"{ENTRY_FILE} is unreadable: {first_line(str(exc))}"
    files = doc.get("files") if isinstance(doc, dict) else None
    if not isinstance(files, dict) or doc.get("format") != FORMAT:
        return f"{ENTRY_FILE} is not an entry record of layout {FORMAT}"
    if doc.get("entry") != ident:
        return f"{ENTRY_FILE} belongs to another entry"
    try:
        found = file_hashes(entry, skip=ENTRY_FILE)
    except OSError as exc:
        return f"unreadable: {first_line(str(exc))}"
    wrong = ([f"{f} is missing" for f in sorted(set(files) - set(found))]
             + [f"{f} is not recorded" for f in sorted(set(found) - set(files))]
             + [f"{f} changed (sha256 differs)" for f in sorted(set(files) & set(found)) if files[f] != found[f]])
    return "; ".join(wrong[:3]) + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else "") if wrong else None


class StepSlot:
    """What ``ExportCache.step`` yields."""

    def __init__(self) -> None:
        self.hit: Path | None = None
        self.writer: Callable[[Path], None] | None = None

    def keep(self, writer: Callable[[Path], None]) -> None:
        self.writer = writer


class ExportSlot:
    """What ``ExportCache.export`` yields (and what a conversion without a cache uses: never a hit)."""

    def __init__(self) -> None:
        self.hit: tuple | None = None
        self.kept: tuple | None = None

    def keep(self, record, canonical) -> None:
        self.kept = (record, canonical)


def _records(doc: dict[str, Any]) -> tuple:
    from edgeconv.canonical import CanonicalRecord
    from edgeconv.frontends.base import ExportRecord

    return ExportRecord(**doc["export"]), CanonicalRecord(**doc["canonical"])


def layer_names(source) -> list[str] | None:
    """The Keras layer names, in order (TensorFlow's scopes in the ONNX graph carry uniquified copies of them, which
    `edgeconv debug` maps back); None for other sources."""
    if isinstance(source, CachedSource):
        return source.layer_names()
    return list(_layer_paths(getattr(getattr(source, "model", None), "layers", None) or [])) or None


def _layer_paths(layers, prefix: str = ""):
    """Every layer's name in order, a nested model's own layers after it as ``outer/inner``."""
    for layer in layers:
        yield prefix + layer.name
        yield from _layer_paths(getattr(layer, "layers", None) or [], f"{prefix}{layer.name}/")
