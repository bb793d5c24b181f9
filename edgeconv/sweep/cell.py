"""One sweep cell: ``edgeconv convert … --json`` then ``edgeconv validate … --json``, the commands themselves run in
child processes — a fresh one per command, or the local pool's warm worker (``sweep/worker.py``) — with exit codes,
messages and refusals exactly as a user gets them, and the record of what happened.
Runs wherever the executor puts it — a thread of this process or a Ray worker on another node — so it takes plain
data and returns plain data. See docs/architecture.md, "Sweeps"."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# exit code → status (edgeconv's exit codes: docs/architecture.md)
STATUS = {0: "passed", 1: "failed", 2: "refused", 3: "unavailable", 4: "conversion-failed", 5: "internal-error"}
DEFAULT_TIMEOUT = 1800.0
_RUNNING: set[subprocess.Popen] = set()  # the commands running in this process's cells, for stop_all
_RUNNING_LOCK = threading.Lock()
_STOPPED = threading.Event()  # set by stop_all, cleared by allow_commands
Command = Callable[[list[str], float, Path], dict[str, Any]]  # edgeconv ARGV, timeout, log file → its outcome


def run_cell(cell: dict[str, Any], files: dict[str, str], workdir: Path, *, cache_dir: Path | None = None,
             timeout: float = DEFAULT_TIMEOUT, device_lock=None, command: Command | None = None) -> dict[str, Any]:
    """Convert then validate ``cell`` (a ``Cell.to_dict()``) with its ``files`` (role → path here), in ``workdir``.
    ``device_lock`` (a context manager) is held around the device's part (validate) of a device cell. ``command``
    runs one ``edgeconv ARGV`` (default: a fresh child process; the local pool's warm workers: ``sweep/worker.py``)."""
    command = command or fresh_command
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = workdir / "bundle"
    rec = _record(cell)
    conv = command(_convert_argv(cell, files, bundle, cache_dir), timeout, workdir / "convert.log")
    rec["reports"]["convert"] = conv["doc"]
    _stage(rec, "convert", conv)
    if conv["code"] == 0:
        with device_lock if device_lock is not None else contextlib.nullcontext():
            val = command(_validate_argv(cell, files, bundle), timeout, workdir / "validate.log")
        rec["reports"]["validate"] = val["doc"]
        _stage(rec, "validate", val)
        _facts(rec, conv["doc"], _device_report(val["doc"]))
    rec["ended"] = time.time()
    rec["seconds"] = round(rec["ended"] - rec["started"], 2)
    return rec


def _record(cell: dict[str, Any]) -> dict[str, Any]:
    device = cell.get("device") or None
    return {"cell_id": cell["cell_id"], "key": cell["key"], "model": cell["model_name"], "target": cell["target"],
            "device": device["name"] if device else None, "precision": cell.get("precision"),
            "requested_precision": cell.get("precision"), "status": None,
            "exit_code": None, "stage": None, "reason": "", "node": socket.gethostname(), "pid": os.getpid(),
            "started": time.time(), "stages": {}, "reports": {}}


def _convert_argv(cell: dict[str, Any], files: dict[str, str], bundle: Path, cache_dir: Path | None) -> list[str]:
    argv = ["convert", files["model"], "--target", cell["target"], "-o", str(bundle), "--force", "--json"]
    if cell.get("precision"):
        argv += ["--precision", cell["precision"]]
    if "calib" in files and cell.get("precision") == "int8":
        argv += ["--calib", files["calib"]]
    for role in ("data", "sample"):
        if role in files:
            argv += [f"--{role}", files[role]]
    if cache_dir is not None:
        argv += ["--cache", str(cache_dir)]
    return argv + list(cell.get("convert_args") or [])


def _validate_argv(cell: dict[str, Any], files: dict[str, str], bundle: Path) -> list[str]:
    from edgeconv.sweep.plan import Device

    argv = ["validate", str(bundle), "--json"]
    if "data" in files:
        argv += ["--data", files["data"]]
    device = cell.get("device")
    if device:
        argv += Device(**{**device, "ssh_options": tuple(device.get("ssh_options") or ())}).validate_args()
    return argv + list(cell.get("validate_args") or [])


def fresh_command(argv: list[str], timeout: float, log: Path) -> dict[str, Any]:
    """Run ``edgeconv ARGV`` as a child process in its own process group (a timeout or an interrupted sweep stops all
    of it): what a user's shell runs; its outcome."""
    started = time.time()
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgeconv", *argv], stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)
        track(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, code = b"", None
        except BaseException:
            kill_group(proc)
            raise
        finally:
            untrack(proc)
    return outcome(code, out, started, log, timeout, pid=proc.pid)


def outcome(code: int | None, out: bytes, started: float, log: Path, timeout: float, **process: Any) -> dict[str, Any]:
    """What a command did: its exit code (None: ran past ``timeout``; negative: killed by that signal), its JSON
    document, its times and log, and ``process`` (the pid that ran it; a warm worker's count of commands)."""
    return {"code": code, "doc": _json(out), "started": started, "ended": time.time(), "log": str(log),
            "timeout": timeout, "process": process}


def track(proc: subprocess.Popen) -> None:
    """Count ``proc`` among the processes :func:`stop_all` kills; after a ``stop_all`` a new one is killed at once (a
    cell that was between its commands when the sweep was interrupted starts nothing that outlives it)."""
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    if _STOPPED.is_set():
        kill_group(proc)


def untrack(proc: subprocess.Popen) -> None:
    with _RUNNING_LOCK:
        _RUNNING.discard(proc)


def allow_commands() -> None:
    """A new run of cells in this process: commands may start again after an earlier :func:`stop_all`."""
    _STOPPED.clear()


def stop_all() -> None:
    """Kill every command (and warm worker) the cells of this process are running (an interrupted sweep: nothing is
    left behind), and any started after this."""
    _STOPPED.set()
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        kill_group(proc)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _json(out: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(out.decode("utf-8", "replace"))
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _stage(rec: dict[str, Any], name: str, run: dict[str, Any]) -> None:
    rec["stages"][name] = {"started": run["started"], "ended": run["ended"], "exit_code": run["code"], **run["process"]}
    rec["stage"], rec["exit_code"] = name, run["code"]
    if run["code"] is None:
        rec["status"], rec["reason"] = "timeout", f"{name} ran past {run['timeout']:g} s"
    elif run["code"] < 0:  # killed by a signal: a segfault, the OOM killer, a kill -9
        rec["status"], rec["reason"] = "crashed", f"{name} died of {_signal_name(-run['code'])}"
    else:
        rec["status"] = STATUS.get(run["code"], "crashed")
        rec["reason"] = _reason(run["doc"], run["log"]) if run["code"] else ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _reason(doc: dict[str, Any] | None, log: str) -> str:
    """One line: the command's error message, the first failed check, or the log's last line."""
    from edgeconv.core.text import first_line

    if doc and doc.get("error"):
        return first_line(str(doc["error"].get("message", "")))
    report = _device_report(doc)
    if report and report.get("error"):
        return first_line(str(report["error"]))
    for check in (report or {}).get("checks", []) + (report or {}).get("budgets", []):
        if not check.get("ok", True):
            return first_line(f"{check.get('name', 'check')} failed: {check.get('reason') or check.get('message') or ''}")
    tail = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    return first_line(tail[-1]) if tail else "no message"


def _device_report(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    """validate's report: the document itself, or the one device's under --remote."""
    if not doc:
        return None
    devices = doc.get("devices")
    if isinstance(devices, list) and devices:
        d = devices[0]
        return d.get("report") or {"error": d.get("error"), "ok": False}
    return doc


def _facts(rec: dict[str, Any], conv: dict[str, Any] | None, val: dict[str, Any] | None) -> None:
    """The figures a matrix and a baseline compare: parity, accuracy, latency and its stability, memory, size."""
    manifest = (conv or {}).get("manifest") or {}
    rec["precision"] = manifest.get("precision", rec["precision"])
    rec["profile"] = (manifest.get("target") or {}).get("profile")
    rec["size_bytes"] = sum(a.get("bytes", 0) for a in manifest.get("artifacts", []) if a.get("role") != "device-runner")
    val = val or {}
    parity = val.get("parity") or {}
    rec["parity"] = {"ok": parity.get("ok"), "max_abs": max((o.get("max_abs") or 0 for o in parity.get("outputs", [])),
                                                           default=None)}
    acc = val.get("accuracy") or {}
    rec["accuracy"] = {"top1": (acc.get("artifact") or {}).get("top1"), "source_top1": (acc.get("source") or {}).get("top1")}
    lat = val.get("latency") or {}
    stab = lat.get("stability") or {}
    p50 = (stab.get("intervals_ms") or {}).get("p50") or {}
    rec["latency"] = {"p50_ms": lat.get("p50_ms"), "p90_ms": lat.get("p90_ms"), "p50_low_ms": p50.get("low"),
                      "p50_high_ms": p50.get("high"), "verdict": stab.get("verdict"), "reasons": stab.get("reasons", [])}
    rec["memory_peak_mb"] = (val.get("memory") or {}).get("peak_mb")
    mo = val.get("measured_on") or {}
    emu = mo.get("emulation")
    rec["measured_on"] = {"kind": mo.get("kind"), "runtime": mo.get("runtime"), "version": mo.get("version"),
                          "emulation": emu.get("label") if isinstance(emu, dict) else emu}
