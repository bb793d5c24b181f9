"""Toolchain environments: a venv per NPU toolchain whose pins clash with edgeconv's own (docs/architecture.md,
"NPU toolchains").

``edgeconv toolchain install NAME`` creates ``root()/NAME`` with the running interpreter's ``-m venv``, installs the
pins of ``pins.toml`` and writes ``toolchain.json`` last, atomically. Reading it back verifies it (the pins' hash,
the python); anything else is "not installed", and :func:`require` says the one command that installs it. A target
runs its work there with :func:`run_job`: a standalone script of ``jobs/`` in a child process, a JSON request and
response, its output in a log file, killed with its process group on a timeout and dying with edgeconv.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.atomic import write_text_atomic
from edgeconv.core.text import first_line, shorten
from edgeconv.errors import BadInput, ConversionFailed, MissingDependency

PINS = Path(__file__).with_name("pins.toml")
JOBS = Path(__file__).with_name("jobs")
ENV_VAR = "EDGECONV_TOOLCHAINS"
RECORD = "toolchain.json"
PIP_TIMEOUT_S = 3600
PROBE_TIMEOUT_S = 600


@dataclass
class Toolchain:
    """An installed, verified toolchain: its venv root, the venv's python and the recorded versions."""

    name: str
    path: Path
    python: Path
    versions: dict[str, str] = field(default_factory=dict)
    python_version: str = ""
    installed_at: str = ""
    size_bytes: int = 0

    def record(self) -> dict[str, Any]:
        """What a bundle's manifest records of the environment a target ran in."""
        return {"name": self.name, "path": str(self.path), "versions": dict(self.versions),
                "python_version": self.python_version}


def root() -> Path:
    """Where toolchains live: ``$EDGECONV_TOOLCHAINS`` or ``~/.cache/edgeconv/toolchains``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeconv" / "toolchains"


def names() -> list[str]:
    return list(_all_pins())


def _all_pins() -> dict[str, dict[str, Any]]:
    return tomllib.loads(PINS.read_text())


def pins(name: str) -> dict[str, Any]:
    table = _all_pins()
    if name not in table:
        raise BadInput(f"unknown toolchain {name!r}", hint=f"one of: {', '.join(table)}")
    return table[name]


def pins_hash(name: str) -> str:
    return hashlib.sha256(json.dumps(pins(name), sort_keys=True).encode()).hexdigest()


def install_command(name: str) -> str:
    return f"edgeconv toolchain install {name}"


def _venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def inspect(name: str) -> tuple[Toolchain | None, str]:
    """The installed toolchain ``name`` and "" when its record verifies; else None and why it does not count."""
    path = root() / name
    rec_path = path / RECORD
    if not rec_path.exists():
        return None, "not installed" if not path.exists() else f"{RECORD} missing (an install did not finish)"
    try:
        rec = json.loads(rec_path.read_text())
        python = Path(rec["python"])
        checks = {"name": rec["name"] == name, "pins": rec["pins_hash"] == pins_hash(name),
                  "python": python == _venv_python(path) and os.access(python, os.X_OK),
                  "versions": isinstance(rec["versions"], dict)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{RECORD} is unreadable ({first_line(exc)})"
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        why = {"pins": "installed from other pins than edgeconv's pins.toml", "python": "its python is missing",
               "name": "it records another name", "versions": "its versions are unreadable"}
        return None, f"{RECORD} does not verify: " + "; ".join(why[k] for k in failed)
    return Toolchain(name, path, python, dict(rec["versions"]), str(rec.get("python_version", "")),
                     str(rec.get("installed_at", "")), int(rec.get("size_bytes", 0))), ""


def require(name: str) -> Toolchain:
    """The installed toolchain ``name``, or MissingDependency (exit 3) naming the command that installs it."""
    tc, why = inspect(name)
    if tc is None:
        cmd = install_command(name)
        raise MissingDependency(f"the {name} toolchain is not installed in {root() / name} ({why}): run `{cmd}`",
                                hint=f"{cmd}   (a venv with its pinned packages; --find-links DIR for an offline wheelhouse)")
    return tc


def listing() -> list[dict[str, Any]]:
    """Every toolchain pins.toml names: installed or not, why not, versions, size, path."""
    rows = []
    for name in names():
        tc, why = inspect(name)
        rows.append({"name": name, "installed": tc is not None, "reason": why or None, "path": str(root() / name),
                     "versions": tc.versions if tc else {}, "size_bytes": tc.size_bytes if tc else None,
                     "python_version": tc.python_version if tc else None, "installed_at": tc.installed_at if tc else None,
                     "install_command": install_command(name)})
    return rows


# -- install --------------------------------------------------------------------------------------------------
def _run_logged(cmd: list[str], log: Path, timeout: float, what: str) -> None:
    """``cmd`` with its output appended to ``log``; a failure is MissingDependency quoting the log's end."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout, check=True,
                           env=_clean_env())
        except subprocess.CalledProcessError as exc:
            raise MissingDependency(f"{what} failed (exit {exc.returncode}); the log is {log}",
                                    details=shorten(log.read_text(errors="replace"), 3000, keep="tail")) from exc
        except subprocess.TimeoutExpired as exc:
            raise MissingDependency(f"{what} did not finish in {timeout:.0f} s; the log is {log}") from exc


def _clean_env() -> dict[str, str]:
    """The environment for a toolchain's python: nothing of edgeconv's own venv leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _pip_commands(python: Path, table: dict[str, Any], find_links: Path | None) -> list[tuple[str, list[str]]]:
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if find_links is not None:
        pip += ["--no-index", "--find-links", str(find_links)]
    no_deps = set(table.get("no_deps", []))
    torch = [p for p in table["packages"] if p.startswith("torch==")]
    rest = [p for p in table["packages"] if p not in no_deps and p not in torch]
    steps = [("torch (CPU build)", pip + torch)] if torch else []
    steps += [("pinned packages", pip + rest)] if rest else []
    steps += [("--no-deps packages", pip + ["--no-deps", *sorted(no_deps)])] if no_deps else []
    return steps


def _install_torch(cmd: list[str], table: dict[str, Any], log: Path, find_links: Path | None) -> None:
    """The CPU torch from pip's own sources first (a wheelhouse, a configured index); then from index_url_torch."""
    try:
        _run_logged(cmd, log, PIP_TIMEOUT_S, "installing the CPU torch")
    except MissingDependency:
        if find_links is not None or not table.get("index_url_torch"):
            raise
        _run_logged(cmd + ["--extra-index-url", table["index_url_torch"]], log, PIP_TIMEOUT_S, "installing the CPU torch")


_VERSIONS_SCRIPT = ("import importlib.metadata as m, json, platform, sys\n"
                    "out = {}\n"
                    "for d in json.loads(sys.argv[1]):\n"
                    "    try: out[d] = m.version(d)\n"
                    "    except m.PackageNotFoundError: out[d] = None\n"
                    "print(json.dumps({'versions': out, 'python_version': platform.python_version()}))\n")


def _probe(python: Path, table: dict[str, Any], log: Path) -> dict[str, Any]:
    """Import every probe module in the venv (a failure names it), then read the recorded distributions' versions."""
    for module in table.get("probe", []):
        _run_logged([str(python), "-c", f"import {module}"], log, PROBE_TIMEOUT_S, f"importing {module} in the toolchain")
    proc = subprocess.run([str(python), "-c", _VERSIONS_SCRIPT, json.dumps(table.get("versions", []))], capture_output=True,
                          text=True, timeout=PROBE_TIMEOUT_S, check=True, env=_clean_env())
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def install(name: str, *, find_links: Path | None = None, progress: Callable[[str], None] | None = None,
            force: bool = False) -> Toolchain:
    """Create (or re-create) the venv of toolchain ``name``, install its pins, probe it, write toolchain.json last.

    An installed toolchain that verifies is kept as it is unless ``force``. Only `edgeconv toolchain install` calls
    this: a conversion never installs anything."""
    say = progress or (lambda _msg: None)
    table = pins(name)
    existing, _ = inspect(name)
    if existing is not None and not force:
        say(f"{name}: installed and verified in {existing.path}")
        return existing
    if find_links is not None and not find_links.is_dir():
        raise BadInput(f"--find-links {find_links}: not a directory")
    path = root() / name
    root().mkdir(parents=True, exist_ok=True)
    log = root() / f"{name}-install.log"
    log.write_text("")
    if path.exists():
        say(f"{name}: removing the unverified {path}")
        shutil.rmtree(path)
    say(f"{name}: creating the venv {path}")
    _run_logged([sys.executable, "-m", "venv", str(path)], log, PROBE_TIMEOUT_S, "creating the venv")
    python = _venv_python(path)
    for what, cmd in _pip_commands(python, table, find_links):
        say(f"{name}: pip install {what} (log: {log})")
        if what.startswith("torch"):
            _install_torch(cmd, table, log, find_links)
        else:
            _run_logged(cmd, log, PIP_TIMEOUT_S, f"pip install of the {what}")
    say(f"{name}: probing {', '.join(table.get('probe', []))}")
    found = _probe(python, table, log)
    rec = {"name": name, "python": str(python), "python_version": found["python_version"], "versions": found["versions"],
           "installed_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "size_bytes": _size(path),
           "pins_hash": pins_hash(name)}
    write_text_atomic(path / RECORD, json.dumps(rec, indent=2) + "\n")
    tc = require(name)
    say(f"{name}: installed ({tc.size_bytes / 1e9:.2f} GB)")
    return tc


# -- jobs -----------------------------------------------------------------------------------------------------
def _launch(tc: Toolchain, script: str, request: dict[str, Any], workdir: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Start ``jobs/SCRIPT`` on ``workdir/NAME-request.json``; returns the process, the response's and the log's paths."""
    job = JOBS / script
    if not job.is_file():
        raise BadInput(f"no toolchain job {script!r} in {JOBS}")
    stem = job.stem.removesuffix("_job")
    workdir.mkdir(parents=True, exist_ok=True)
    req, resp, log = (workdir / f"{stem}-{part}" for part in ("request.json", "response.json", "job.log"))
    resp.unlink(missing_ok=True)
    write_text_atomic(req, json.dumps({**request, "parent_pid": os.getpid()}, indent=1))
    with log.open("w") as out:
        proc = subprocess.Popen([str(tc.python), str(job), str(req), str(resp)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir, env=_clean_env(), start_new_session=True)
    return proc, resp, log


def run_job(tc: Toolchain, script: str, request: dict[str, Any], *, workdir: Path, timeout: float) -> dict[str, Any]:
    """Run ``jobs/SCRIPT`` with the toolchain's python on ``request`` and return its response.

    The request (plus ``parent_pid``) goes to ``workdir/NAME-request.json``, the response comes back in
    ``NAME-response.json`` and the job's output in ``NAME-job.log`` (NAME: the script's name without ``_job.py``).
    The job runs in its own process group, killed whole on a timeout or an interrupt, and dies with this process.
    A timeout, a non-zero exit, a missing response or ``{"error": ...}`` in it is ConversionFailed (exit 4)."""
    proc, resp, log = _launch(tc, script, request, workdir)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        raise _timed_out(tc, script, timeout, log) from exc
    except BaseException:
        _kill_group(proc)
        raise
    return _response(tc, script, code, resp, log)


def _timed_out(tc: Toolchain, script: str, timeout: float, log: Path) -> ConversionFailed:
    return ConversionFailed(f"the {tc.name} job ({script}) did not finish in {timeout:.0f} s (timeout); the log is {log}",
                            details=_log_tail(log))


class JobServer:
    """A job that stays up after its response (``serve`` in its request): it answers bytes with bytes over a local
    socket until :meth:`close`, and dies with this process (docs/architecture.md, "NPU toolchains")."""

    def __init__(self, tc: Toolchain, script: str, proc: subprocess.Popen, conn, log: Path, response: dict[str, Any],
                 cleanup: list[Path]):
        self.tc, self.script, self.proc, self.conn, self.log, self.response = tc, script, proc, conn, log, response
        self.cleanup = cleanup  # folders removed once the job has ended

    def call(self, data: bytes, *, timeout: float) -> bytes:
        if self.proc.poll() is not None:
            raise ConversionFailed(f"the {self.tc.name} job ({self.script}) is no longer running; the log is {self.log}",
                                   details=_log_tail(self.log))
        self.conn.send_bytes(data)
        if not self.conn.poll(timeout):
            self.close()
            raise _timed_out(self.tc, self.script, timeout, self.log)
        answer = self.conn.recv_bytes()
        if answer.startswith(b"error: "):
            raise ConversionFailed(f"the {self.tc.name} job ({self.script}) failed: {first_line(answer[7:].decode())}; "
                                   f"the log is {self.log}", details=_log_tail(self.log))
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.conn.send_bytes(b"close")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                _kill_group(self.proc)
        self.conn.close()
        _SERVING.pop(self.response.get("_key"), None)
        for folder in self.cleanup:
            shutil.rmtree(folder, ignore_errors=True)


_SERVING: dict[str, JobServer] = {}


def serving(key: str) -> JobServer | None:
    """The live job started with ``start_job(..., key=key)`` in this process, if it is still up."""
    server = _SERVING.get(key)
    return server if server is not None and server.proc.poll() is None else None


def start_job(tc: Toolchain, script: str, request: dict[str, Any], *, workdir: Path, timeout: float,
              key: str, idle_timeout: float = 600, remove_workdir: bool = False) -> JobServer:
    """Like :func:`run_job`, but the job stays up after writing its response, serving more requests (the RKNN
    simulator runs a model only in the process that built it). Registered under ``key`` for :func:`serving`; it
    ends after ``idle_timeout`` seconds without a request, and at this process's exit at the latest. With
    ``remove_workdir``, ``workdir`` goes when the job is closed."""
    import secrets
    import tempfile
    import time
    from multiprocessing.connection import Client

    authkey = secrets.token_bytes(16)
    sock_dir = Path(tempfile.mkdtemp(prefix="edgeconv-job-"))
    address = str(sock_dir / "job.sock")  # short: AF_UNIX paths are limited
    proc, resp, log = _launch(tc, script, {**request, "serve": {"address": address, "authkey_hex": authkey.hex(),
                                                                     "idle_timeout": idle_timeout}}, workdir)
    deadline = time.monotonic() + timeout
    try:
        while not resp.exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                raise _timed_out(tc, script, timeout, log)
            time.sleep(0.05)
        response = _response(tc, script, proc.poll() or 0, resp, log)
        conn = Client(address, family="AF_UNIX", authkey=authkey)
    except BaseException:
        _kill_group(proc)
        shutil.rmtree(sock_dir, ignore_errors=True)
        raise
    response["_key"] = key
    server = JobServer(tc, script, proc, conn, log, response, [sock_dir] + ([workdir] if remove_workdir else []))
    old = _SERVING.pop(key, None)
    if old is not None:
        old.close()
    _SERVING[key] = server
    return server


def close_all(script: str | None = None) -> None:
    """Close the live jobs (those of ``script`` only, when given)."""
    for server in list(_SERVING.values()):
        if script is None or server.script == script:
            server.close()


atexit.register(close_all)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _log_tail(log: Path) -> str:
    return shorten(log.read_text(errors="replace").strip(), 3000, keep="tail") if log.exists() else ""


def _response(tc: Toolchain, script: str, code: int, resp: Path, log: Path) -> dict[str, Any]:
    what = f"the {tc.name} job ({script})"
    data: dict[str, Any] | None = None
    if resp.exists():
        try:
            data = json.loads(resp.read_text())
        except ValueError as exc:
            raise ConversionFailed(f"{what} wrote an unreadable response ({first_line(exc)}); the log is {log}",
                                   details=_log_tail(log)) from exc
    if data is not None and data.get("error"):
        raise ConversionFailed(f"{what} failed: {first_line(data['error'], 600)}; the log is {log}",
                               details=shorten(data.get("traceback") or "", 3000, keep="tail") or _log_tail(log))
    if code != 0 or data is None:
        why = f"exited {code}" if code != 0 else "exited 0 without a response"
        raise ConversionFailed(f"{what} {why}; the log is {log}", details=_log_tail(log))
    return data


__all__ = ["ENV_VAR", "JOBS", "PINS", "Toolchain", "inspect", "install", "install_command", "listing", "names", "pins",
           "pins_hash", "require", "root", "run_job", "JobServer", "serving", "start_job", "close_all"]
