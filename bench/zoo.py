"""The zoo: `edgeconv convert` + `validate` over ≥60 models as users hand them over, on every target family.

    python bench/zoo.py [--models PATTERN] [--targets onnx,tflite] [--fast] [--rebuild] [--resume]
                        [--rerun-failed] [--timeout 600] [--update-readme]

Builds the corpus (bench/zoo_models.py) once into bench/models/zoo/<key>/, where the key hashes the builder code
and the library versions, so a stale model is never reused. Then runs each cell (model × target) through the CLI
as a subprocess, one conversion at a time, and writes bench/results/zoo.json (every cell) and bench/results/zoo.md
(the coverage matrix; with --update-readme also spliced into README.md between the zoo markers). The matrix is
generated, never edited by hand. Results of a partial run are merged into zoo.json cell by cell.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, MODELS, RESULTS, ROOT, machine, splice_readme
from zoo_models import BY_NAME, FAST, Built, ZooModel
from zoo_models import MODELS as ZOO

# the NPU targets whose toolchain runs in its own venv (`edgeconv toolchain install rknn qnn imx500`): int8, CNNs
NPUS = ["rknn", "qnn", "imx500"]
TARGETS = ["onnx", "tflite", "openvino", "jetson", "coral", "ethos-u", "ncnn", "executorch", *NPUS]
# int8 columns of the targets whose zoo column is fp32 (`--targets onnx-int8,…`): the CNNs, calibrated on their
# calibration set, for `edgeconv debug` on every int8 target
INT8_VARIANTS = ["onnx-int8", "jetson-int8", "openvino-int8", "tflite-int8"]
# fp16 columns (`--targets onnx-fp16,…`): the CNNs, for `edgeconv debug` on every fp16 target with intermediates
FP16_VARIANTS = ["onnx-fp16", "openvino-fp16", "tflite-fp16"]
COLUMNS = TARGETS + INT8_VARIANTS + FP16_VARIANTS
# columns whose bundles `--debug` opens with `edgeconv debug` (the NPUs' own analysers are not run by the zoo)
DEBUGGED = {"coral", "ethos-u", *INT8_VARIANTS, *FP16_VARIANTS}
FAST_TARGETS = ["onnx", "tflite", "openvino", "jetson"]
INT8_ONLY = {"coral", "ethos-u", *NPUS}  # and only image CNNs go there
GOALS = {"onnx": 0.95, "openvino": 0.95, "jetson": 0.95, "tflite": 0.85, "coral": 0.60, "ethos-u": 0.60}
ZOO_DIR = MODELS / "zoo"
JSON_OUT = RESULTS / "zoo.json"
MD_OUT = RESULTS / "zoo.md"
BEGIN, END = "<!-- zoo:begin -->", "<!-- zoo:end -->"
OK, NA, SKIP = "✅", "n/a", "skipped"
SKIPPED = "skipped: "  # build reason prefix of a model whose library (timm, torchvision) is not installed
LIBS = ("torch", "torchvision", "timm", "transformers", "tensorflow-cpu", "keras", "onnx", "numpy")


@dataclass
class Cell:
    model: str
    kind: str
    format: str
    target: str
    precision: str
    status: str  # ✅, refused, failed, internal-error, timeout, n/a, skipped, build-failed
    exit_code: int | None
    stage: str  # build, convert or validate: where it stopped
    reason: str  # one line
    seconds: float
    traceback: bool  # a traceback in stderr of a run without --debug
    model_hash: str
    edgeconv_rev: str
    # --debug: `edgeconv debug` on the cell's int8 or fp16 bundle (kept after a parity miss too): "ok: …" or why not
    debug: str | None = None
    debug_seconds: float | None = None


# ---------------------------------------------------------------------------------------------------------
# corpus


def corpus_key() -> str:
    """Hash of the builder code and the library versions: a change in either rebuilds everything."""
    from importlib import metadata

    h = hashlib.sha256()
    for name in ("zoo_models.py", "zoo_classes.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    for lib in LIBS:
        try:
            h.update(f"{lib}={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=-".encode())
    return h.hexdigest()[:12]


def build_model(m: ZooModel, key: str, rebuild: bool) -> tuple[Path, Built | None, str]:
    """The model's folder and what is in it (built now unless cached); on failure, None and the reason (a reason
    starting with SKIPPED when timm/torchvision are not installed: such models are skipped, not failed)."""
    from zoo_classes import MissingLibrary

    folder = ZOO_DIR / key / m.name
    stamp = folder / "built.json"
    if stamp.exists() and not rebuild:
        return folder, Built.from_dict(json.loads(stamp.read_text())), ""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        built = m.build(folder)
    except MissingLibrary as exc:
        return folder, None, SKIPPED + str(exc)
    except Exception as exc:  # noqa: BLE001 (a zoo bug or a library that cannot build this arch here: recorded, not fatal)
        return folder, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    stamp.write_text(json.dumps(built.to_dict(), indent=1))
    return folder, built, ""


# ---------------------------------------------------------------------------------------------------------
# one cell


def edgeconv_rev() -> str:
    """git HEAD, plus a hash of uncommitted changes under edgeconv/ and targets/ when there are some."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        head = git("rev-parse", "--short=12", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "edgeconv", "targets")
        untracked = git("ls-files", "--others", "--exclude-standard", "--", "edgeconv", "targets")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not diff and not untracked:
        return head
    h = hashlib.sha256(diff.encode())
    for name in sorted(untracked.split()):
        p = ROOT / name
        if p.is_file():
            h.update(name.encode() + p.read_bytes())
    return f"{head}+{h.hexdigest()[:8]}"


def precision_for(target: str) -> str:
    if target in FP16_VARIANTS:
        return "fp16"
    return "int8" if target in INT8_ONLY or target in INT8_VARIANTS else "fp32"


def family(column: str) -> str:
    """The --target of a column (onnx-int8 → onnx, tflite-fp16 → tflite)."""
    return column.removesuffix("-int8").removesuffix("-fp16")


# One intra-op thread per library: the zoo measures whether models convert and agree, not speed. On a shared 2-core
# machine torch's OpenMP threads spin against everything else running there (a TorchScript ResNet-18 forward at
# 96 px took 240 ms with 2 threads, 47 ms with 1), and the reference runs of the source model dominate a cell.
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "TF_NUM_INTRAOP_THREADS": "1"}
# `convert --cache` (through its environment variable): a model's source facts, outputs and canonical ONNX graph are
# computed once and reused by its other targets, as a user converting one model for several devices would. Emptied at
# the start of every run (unless --keep-export-cache), so a run's time includes every export it needs.
EXPORT_CACHE = ZOO_DIR / "export-cache"
ENV["EDGECONV_CACHE_DIR"] = str(EXPORT_CACHE)


class OneShot:
    """Each command in a fresh `python -m edgeconv` subprocess (what a user runs; pays the imports every time)."""

    def run(self, args: list[str], timeout: float) -> tuple[int | None, str, str, float]:
        t0 = time.perf_counter()
        try:
            p = subprocess.run([*EDGECONV, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                               env={**os.environ, **ENV}, check=False)
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return None, "", err, time.perf_counter() - t0
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0

    def close(self) -> None:
        pass


class Worker:
    """Commands run by the CLI in-process, in a long-lived `zoo.py --worker` subprocess: the interpreter start and
    the torch/TensorFlow imports are paid once per worker instead of twice per cell.

    The worker points its file descriptors 1 and 2 at one file each per command, so the exit code, stdout and
    stderr are what a user's shell would get (native libraries' output included). It is recycled every
    ``recycle`` commands; one that hangs past the timeout is killed (the command is a timeout), one that dies is
    replaced (the command reports the signal), and the next command starts a new worker.
    """

    def __init__(self, recycle: int = 40, scratch: Path | None = None):
        import tempfile

        self.recycle = recycle
        self.proc: subprocess.Popen | None = None
        self.served = 0
        self.scratch = Path(tempfile.mkdtemp(prefix="zoo-worker-", dir=scratch))

    def _start(self) -> subprocess.Popen:
        with open(self.scratch / "worker.log", "ab") as log:  # the worker's own stderr between commands
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, cwd=ROOT, env={**os.environ, **ENV},
                                         start_new_session=True)
        self.served = 0
        return self.proc

    def _stop(self, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if not kill and proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                kill = True
        if proc.poll() is None:
            import signal

            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and anything it started
            except ProcessLookupError:
                pass
            proc.wait()
        proc.stdout.close()

    def run(self, args: list[str], timeout: float) -> tuple[int | None, str, str, float]:
        import selectors

        if self.proc is not None and (self.served >= self.recycle or self.proc.poll() is not None):
            self._stop()
        proc = self.proc or self._start()
        out, err = self.scratch / "stdout", self.scratch / "stderr"
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            proc.stdin.write((json.dumps({"args": args, "stdout": str(out), "stderr": str(err)}) + "\n").encode())
            proc.stdin.flush()
        except OSError:
            pass  # died already: read() sees EOF
        self.served += 1
        line, code, crashed = b"", None, False
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = timeout - (time.perf_counter() - t0)
                if left <= 0 or not sel.select(left):
                    self._stop(kill=True)  # hung: the command is a timeout
                    break
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:  # the worker died in the middle of the command
                    crashed = True
                    break
                line += chunk
        secs = time.perf_counter() - t0
        def read(p):
            return p.read_text(errors="replace") if p.exists() else ""

        stdout, stderr = read(out), read(err)
        if crashed:
            proc.wait()
            code = proc.returncode
            self._stop(kill=True)
            stderr += f"\nzoo: the edgeconv process died (exit {code}) in the middle of the command\n"
            code = code if code else 1
        elif line:
            code = json.loads(line)["exit"]
        return code, stdout, stderr, secs

    def close(self) -> None:
        self._stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


def worker_main() -> int:
    """`zoo.py --worker`: run `edgeconv ARGS…` in this process for each JSON request on stdin, one at a time."""
    import traceback

    reply = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol channel; fd 1 itself goes to the command's file
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    from edgeconv import cli

    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        saved_err = os.dup(2)
        fd_out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        fd_err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd_out, 1)
        os.dup2(fd_err, 2)
        os.close(fd_out)
        os.close(fd_err)
        sys.argv = ["edgeconv", *req["args"]]
        cli._state.clear()
        cli._state["debug"] = False
        try:
            cli.app(args=req["args"], prog_name="edgeconv")
            code = 0
        except SystemExit as exc:  # what the interpreter would do with it
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 (uncaught: the interpreter prints the traceback and exits 1)
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(devnull, 1)
            os.dup2(saved_err, 2)
            os.close(saved_err)
        reply.write(json.dumps({"exit": code}) + "\n")
    return 0


def _reason(stdout: str, stderr: str) -> tuple[str, str]:
    """(error type, one-line reason) from the --json error document, else from stderr."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        if isinstance(doc.get("error"), dict):
            msg = (doc["error"].get("message") or "").strip()
            return doc["error"].get("type") or "", msg.splitlines()[0] if msg else ""
        if doc.get("ok") is False:  # validate: a check missed
            failed = [c.get("name", "?") for c in doc.get("checks", []) if isinstance(c, dict) and c.get("ok") is False]
            return "CheckFailed", "checks failed: " + (", ".join(failed) if failed else "see validation.json")
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error:")]
    return "", (err[0][6:].strip() if err else (lines[-1] if lines else "no output"))[:300]


def classify(code: int | None, kind: str, reason: str) -> str:
    if code is None:
        return "timeout"
    if code == 0:
        return OK
    if code < 0 or code == 5 or kind == "InternalError" or reason.startswith("unexpected error"):
        return "internal-error"
    if code in (2, 3):
        return "refused"
    return "failed"


def convert_command(m: ZooModel, folder: Path, built: Built, target: str, bundle: Path) -> list[str]:
    cmd = ["convert", str(folder / built.model), "--target", family(target), "-o", str(bundle), "--force", "--json",
           "--sample", str(folder / built.sample), *built.args]
    if precision_for(target) == "int8":
        cmd += ["--precision", "int8", "--calib", str(folder / (built.calib or "missing-calib"))]
    elif precision_for(target) == "fp16":
        cmd += ["--precision", "fp16"]
    if built.data:
        cmd += ["--data", str(folder / built.data)]
    return cmd


def validate_command(folder: Path, built: Built, bundle: Path) -> list[str]:
    # agreement and accuracy are what the zoo measures, not latency: a few timed runs
    cmd = ["validate", str(bundle), "--json", "--runs", "3", "--warmup", "1"]
    if built.data:
        cmd += ["--data", str(folder / built.data)]
    return cmd


def run_cell(m: ZooModel, folder: Path, built: Built, target: str, *, work: Path, timeout: float, model_hash: str,
             rev: str, runner: OneShot | Worker | None = None, debug: bool = False) -> Cell:
    """convert, then validate (`edgeconv ARGS` through ``runner``, default a fresh subprocess each); the first that
    does not exit 0 decides the cell. With ``debug``, `edgeconv debug` then runs on an int8 or fp16 bundle of a
    target with intermediates (one that validated, or one convert kept after missing parity): recorded in the cell,
    not part of its status."""
    runner = runner or OneShot()
    prec = precision_for(target)

    def cell(status, code, stage, reason, seconds, tb) -> Cell:
        return Cell(m.name, m.kind, m.fmt, target, prec, status, code, stage, reason, round(seconds, 1), tb, model_hash, rev)

    if (prec == "int8" or target in FP16_VARIANTS) and not m.image_cnn:
        return cell(NA, None, "", "not a CNN", 0.0, False)
    bundle = work / f"{m.name}-{target}"
    try:
        total, tb, result = 0.0, False, None
        for stage, cmd in (("convert", convert_command(m, folder, built, target, bundle)),
                           ("validate", validate_command(folder, built, bundle))):
            code, out, err, secs = runner.run(cmd, timeout)
            total += secs
            tb = tb or "Traceback (most recent call last)" in err
            if code != 0:
                kind, reason = _reason(out, err)
                if code is None:
                    reason = f"{stage} did not finish in {timeout:.0f} s"
                result = cell(classify(code, kind, reason), code, stage, reason, total, tb)
                break
        result = result or cell(OK, 0, "validate", "", total, tb)
        inputs = built.data or built.calib  # debug needs real inputs: the test set, else the calibration set
        if debug and target in DEBUGGED and (bundle / "manifest.json").is_file() and inputs:
            result.debug, result.debug_seconds = debug_cell(runner, bundle, folder / inputs, timeout)
        return result
    finally:
        shutil.rmtree(bundle, ignore_errors=True)


def debug_cell(runner, bundle: Path, data: Path, timeout: float) -> tuple[str, float]:
    """`edgeconv debug BUNDLE --data DATA --samples 4 --json`, summed up in one line."""
    code, out, err, secs = runner.run(["debug", str(bundle), "--data", str(data), "--samples", "4", "--json"], timeout)
    if code != 0:
        kind, reason = _reason(out, err)
        return f"{classify(code, kind, reason)} {code}: {reason}", round(secs, 1)
    doc = json.loads(out)
    first = doc.get("first_diverging") or {}
    where = (f"first diverging {first.get('layer')} ({first.get('source') or 'no source name'}), "
             f"{first['snr_db']:.1f} dB" if first and first.get("snr_db") is not None else "no layer diverges")
    return (f"ok: {doc['matched_layers']}/{doc['matched_layers'] + doc['unmatched_layers']} layers matched, {where}",
            round(secs, 1))


# ---------------------------------------------------------------------------------------------------------
# reports


def summary(cells: list[Cell], targets: list[str]) -> dict:
    per = {}
    for t in targets:
        applicable = [c for c in cells if c.target == t and c.status != NA]
        ok = sum(c.status == OK for c in applicable)
        rate = ok / len(applicable) if applicable else None
        per[t] = {"ok": ok, "cells": len(applicable), "rate": None if rate is None else round(rate, 3),
                  "goal": GOALS.get(t), "goal_met": None if rate is None or t not in GOALS else rate >= GOALS[t]}
    debugged = {t: {"ran": sum(bool(c.debug and c.debug.startswith("ok")) for c in cells if c.target == t),
                    "bundles": sum(c.debug is not None for c in cells if c.target == t)}
                for t in targets if any(c.debug is not None for c in cells if c.target == t)}
    return {"per_target": per, "debug": debugged,
            "internal_errors": sum(c.status == "internal-error" for c in cells),
            "tracebacks": sum(c.traceback for c in cells),
            "statuses": {s: sum(c.status == s for c in cells) for s in sorted({c.status for c in cells})}}


def _short(c: Cell) -> str:
    if c.status in (OK, NA):
        return c.status if c.status == OK else f"n/a: {c.reason}"
    text = re.sub(r"\s+", " ", c.reason).replace("|", "/")
    text = re.sub(r"(/[\w.\-]+)+/", "", text)  # paths say nothing in a table
    text = text if len(text) <= 70 else text[:67] + "…"
    code = "" if c.exit_code is None else f" {c.exit_code}"
    return f"{c.status}{code} ({c.stage}): {text}"


def markdown(cells: list[Cell], targets: list[str], doc: dict) -> str:
    by = {(c.model, c.target): c for c in cells}
    names = [m.name for m in ZOO if any((m.name, t) in by for t in targets)]
    s = doc["summary"]["per_target"]
    revs = Counter(c.edgeconv_rev for c in cells)
    at = ", ".join(f"{r} ({n} cells)" for r, n in revs.most_common()) if len(revs) > 1 else doc["edgeconv_rev"]
    header = (f"Generated by `python bench/zoo.py` on {doc['machine']['cpu']} ({doc['machine']['cores']} cores), "
              f"edgeconv {at}, {doc['machine']['date_utc']}. Do not edit by hand.")
    counts = (f"internal errors: {doc['summary']['internal_errors']} · tracebacks in stderr: {doc['summary']['tracebacks']}"
              f" · models: {len(names)}")
    lines = [header, "",
             "| target | ✅ / cells | rate | goal |", "|---|---|---|---|"]
    for t in targets:
        r = s[t]
        rate = "–" if r["rate"] is None else f"{100 * r['rate']:.0f}%"
        goal = "" if r["goal"] is None else f"≥{100 * r['goal']:.0f}% " + ("met" if r["goal_met"] else "**missed**")
        lines.append(f"| {t} | {r['ok']} / {r['cells']} | {rate} | {goal} |")
    if doc["summary"].get("debug"):
        lines += ["", "`edgeconv debug` on the int8 and fp16 bundles (`--debug`; a bundle that missed parity included):", "",
                  "| target | debug ran / bundles |", "|---|---|"]
        lines += [f"| {t} | {d['ran']} / {d['bundles']} |" for t, d in doc["summary"]["debug"].items()]
    lines += ["", counts, "",
              "| model | kind | format | " + " | ".join(targets) + " |", "|---|---|---|" + "---|" * len(targets)]
    for n in names:
        m = BY_NAME[n]
        row = [_short(by[(n, t)]) if (n, t) in by else "" for t in targets]
        lines.append(f"| {n} | {m.kind} | {m.fmt} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def load_cells() -> list[Cell]:
    if not JSON_OUT.exists():
        return []
    return [Cell(**c) for c in json.loads(JSON_OUT.read_text()).get("cells", [])]


def write_results(cells: list[Cell], runs: list[dict], rev: str, key: str) -> dict:
    present = [t for t in COLUMNS if any(c.target == t for c in cells)]
    doc = {"benchmark": "zoo", "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
           "edgeconv_rev": rev, "corpus_key": key, "models": len({c.model for c in cells}),
           "wall_s_total": round(sum(r["wall_s"] for r in runs), 1), "runs": runs,
           "summary": summary(cells, present), "cells": [asdict(c) for c in cells]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    JSON_OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    MD_OUT.write_text(markdown(cells, present, doc))
    return doc


# ---------------------------------------------------------------------------------------------------------


def select(pattern: str | None, fast: bool) -> list[ZooModel]:
    chosen = [m for m in ZOO if not fast or m.name in FAST]
    if pattern:
        pats = pattern.split(",")
        chosen = [m for m in chosen if any(fnmatch.fnmatch(m.name, p) or p in m.name for p in pats)]
    return chosen


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", help="subset: comma-separated glob patterns or substrings of model names")
    ap.add_argument("--targets", help="comma-separated target families (default: all; --fast: " + ",".join(FAST_TARGETS) + ")")
    ap.add_argument("--fast", action="store_true", help="the ~dozen-model subset on the main targets")
    ap.add_argument("--jobs", type=int, default=1, help="cells at once (default 1: conversions are heavy; 2 cores)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the models even when cached")
    ap.add_argument("--resume", action="store_true", help="skip cells already in zoo.json for this edgeconv rev and model hash")
    ap.add_argument("--rerun-failed", action="store_true", help="run only cells in zoo.json that are not ✅, n/a or skipped")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per convert and per validate (default 600)")
    ap.add_argument("--nice", type=int, default=10, help="niceness of this run and its children (default 10)")
    ap.add_argument("--update-readme", action="store_true", help="splice the matrix into README.md between the zoo markers")
    ap.add_argument("--list", action="store_true", help="print the corpus and exit")
    ap.add_argument("--build-only", action="store_true", help="build (or find cached) models, run nothing")
    ap.add_argument("--one-shot", action="store_true",
                    help="a fresh `python -m edgeconv` per command instead of long-lived in-process workers (slower)")
    ap.add_argument("--recycle", type=int, default=40, help="commands per worker process before a fresh one (default 40)")
    ap.add_argument("--debug", "--debug-int8", dest="debug", action="store_true",
                    help="also run `edgeconv debug` on every int8 and fp16 bundle (coral, ethos-u, the -int8 and -fp16 "
                         "columns); recorded per cell")
    ap.add_argument("--keep-export-cache", action="store_true",
                    help="start from the export cache an earlier run left (entries are keyed by edgeconv's code: none is stale)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.worker:
        return worker_main()
    if a.nice:
        os.nice(a.nice)
    models = select(a.models, a.fast)
    targets = a.targets.split(",") if a.targets else (FAST_TARGETS if a.fast else TARGETS)
    unknown = [t for t in targets if t not in COLUMNS]
    if unknown:
        ap.error(f"unknown targets {unknown}; known: {', '.join(COLUMNS)}")
    if a.list:
        for m in models:
            print(f"{m.name:36} {m.kind:10} {m.fmt:12} {m.origin:26} {m.inputs}")
        print(f"{len(models)} models")
        return 0
    t_start = time.perf_counter()
    key, rev = corpus_key(), edgeconv_rev()
    old = load_cells()
    done = {(c.model, c.target): c for c in old}
    wanted = [(m, t) for m in models for t in targets]
    if a.rerun_failed:
        wanted = [(m, t) for m, t in wanted if (m.name, t) in done and done[(m.name, t)].status not in (OK, NA, SKIP)]
    if a.resume:
        wanted = [(m, t) for m, t in wanted if not ((m.name, t) in done and done[(m.name, t)].edgeconv_rev == rev
                                                     and done[(m.name, t)].model_hash == f"{key}/{m.name}")]
    work = ZOO_DIR / "bundles"
    work.mkdir(parents=True, exist_ok=True)
    if not a.keep_export_cache:
        shutil.rmtree(EXPORT_CACHE, ignore_errors=True)
    print(f"zoo: {len(wanted)} cells ({len({m.name for m, _ in wanted})} models × {','.join(targets)}), corpus {key}, "
          f"edgeconv {rev}", flush=True)
    built_cache: dict[str, tuple[Path, Built | None, str]] = {}
    results: dict[tuple[str, str], Cell] = dict(done)
    import threading

    local, runners = threading.local(), []

    def runner() -> OneShot | Worker:  # one worker per job thread
        if not hasattr(local, "r"):
            local.r = OneShot() if a.one_shot else Worker(a.recycle, scratch=work)
            runners.append(local.r)
        return local.r

    def one(m: ZooModel, t: str) -> Cell:
        folder, built, why = built_cache[m.name]
        mh = f"{key}/{m.name}"
        if built is None:
            status, why = (SKIP, why[len(SKIPPED):]) if why.startswith(SKIPPED) else ("build-failed", why)
            return Cell(m.name, m.kind, m.fmt, t, precision_for(t), status, None, "build", why, 0.0, False, mh, rev)
        return run_cell(m, folder, built, t, work=work, timeout=a.timeout, model_hash=mh, rev=rev, runner=runner(),
                        debug=a.debug)

    for m in {m.name: m for m, _ in wanted}.values():  # build first, in this process (one import of each library)
        t0 = time.perf_counter()
        built_cache[m.name] = build_model(m, key, a.rebuild)
        why = built_cache[m.name][2]
        print(f"  built {m.name} ({time.perf_counter() - t0:.1f} s){' FAILED: ' + why if why else ''}", flush=True)
    t_built = time.perf_counter()
    if a.build_only:
        return 0
    try:
        _run_cells(a.jobs, wanted, one, results, lambda: write_results(list(results.values()), _runs(t_start, targets, models),
                                                                      rev, key))
    finally:
        for r in runners:
            r.close()
    order = {m.name: i for i, m in enumerate(ZOO)}
    cells = sorted((c for c in results.values() if c.model in order), key=lambda c: (order[c.model], COLUMNS.index(c.target)))
    doc = write_results(cells, _runs(t_start, targets, models, build_s=t_built - t_start), rev, key)
    if a.update_readme:
        splice_readme(MD_OUT.read_text(), BEGIN, END)
    print(json.dumps(doc["summary"], indent=1, ensure_ascii=False))
    shown = [p.relative_to(ROOT) if p.is_relative_to(ROOT) else p for p in (JSON_OUT, MD_OUT)]  # EDGECONV_BENCH_RESULTS
    print(f"wrote {shown[0]} and {shown[1]} ({time.perf_counter() - t_start:.0f} s, "
          f"of which building models {t_built - t_start:.0f} s)")
    return 0


def _run_cells(jobs: int, wanted: list[tuple[ZooModel, str]], one, results: dict, checkpoint) -> None:
    if jobs > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(jobs) as pool:
            for cell in pool.map(lambda mt: one(*mt), wanted):
                results[(cell.model, cell.target)] = cell
                print(f"  {cell.model:36} {cell.target:10} {_short(cell)} ({cell.seconds:.0f} s)", flush=True)
        return
    for i, (m, t) in enumerate(wanted, 1):
        cell = one(m, t)
        results[(cell.model, cell.target)] = cell
        print(f"  [{i}/{len(wanted)}] {cell.model:36} {cell.target:10} {_short(cell)} ({cell.seconds:.0f} s)", flush=True)
        if i % 5 == 0:  # partial results survive an interrupted run
            checkpoint()


_previous_runs: list[dict] | None = None


def _runs(t_start: float, targets: list[str], models: list[ZooModel], build_s: float | None = None) -> list[dict]:
    """Earlier runs recorded in zoo.json plus this one (wall time so far)."""
    global _previous_runs
    if _previous_runs is None:
        _previous_runs = json.loads(JSON_OUT.read_text()).get("runs", []) if JSON_OUT.exists() else []
    import datetime as dt

    this = {"started_utc": dt.datetime.fromtimestamp(time.time() - (time.perf_counter() - t_start),
                                                     dt.UTC).isoformat(timespec="seconds"),
            "targets": targets, "models": len(models), "wall_s": round(time.perf_counter() - t_start, 1),
            "build_s": None if build_s is None else round(build_s, 1)}
    return [*_previous_runs, this]


if __name__ == "__main__":
    sys.exit(main())
