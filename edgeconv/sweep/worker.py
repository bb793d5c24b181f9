"""Warm workers for the local pool (``edgeconv sweep``'s default, ``--warm-workers``): each job thread runs its cells'
commands through one long-lived edgeconv process (``python -m edgeconv.serve``) instead of a fresh
``python -m edgeconv`` per command, so the interpreter's start and the torch/TensorFlow imports are paid once per
worker, not twice per cell. A command's exit code, JSON and log are what a user gets (the worker points its fds 1 and
2 at the command's files); what the sweep guarantees stays: a command past the timeout is killed with the worker's
whole process group (the cell is "timeout"), a worker that dies in a command records the signal and the next command
gets a new worker, ``stop_all`` (Ctrl-C) kills the workers, and a worker is replaced every ``recycle`` commands so
what one command leaves in memory does not pile up. See docs/architecture.md, "Sweeps"."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeconv.sweep.cell import fresh_command, kill_group, outcome, track, untrack

RECYCLE = 40  # commands per worker before a fresh one
EXIT_WAIT = 10.0  # seconds a worker told to end (its stdin closed) has before it is killed
# a worker dying of one of these in a command is a native crash, not a kill: the command runs again, fresh
NATIVE_CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT}


class WorkerDied(Exception):
    """The worker ended before it began the command (between commands): the command runs in a new worker."""


class WarmWorker:
    def __init__(self, scratch: Path, recycle: int = RECYCLE) -> None:
        self.scratch, self.recycle = scratch, max(1, recycle)
        self.proc: subprocess.Popen | None = None
        self.served = 0

    def _ready(self) -> subprocess.Popen:
        if self.proc is not None and (self.served >= self.recycle or self.proc.poll() is not None):
            self.stop()
        if self.proc is None:
            with open(self.scratch / "worker.log", "wb") as log:  # its own stderr, outside commands
                self.proc = subprocess.Popen([sys.executable, "-m", "edgeconv.serve"], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=log, start_new_session=True)
            self.served = 0
            track(self.proc)
        return self.proc

    def command(self, argv: list[str], timeout: float, log: Path) -> dict[str, Any]:
        """``edgeconv ARGV`` in this worker (a new one when it is due or gone); its outcome as ``cell.outcome``. A
        command that crashes the worker natively (SIGSEGV, SIGABRT …) runs again in a fresh process, whose outcome
        counts: native libraries loaded by earlier commands can crash a later one that passes on its own (seen in the
        zoo: a Keras model's fp16 LiteRT conversion after OpenVINO ones). The crash and its log are recorded."""
        try:
            done = self._once(argv, timeout, log, retry=True)
        except WorkerDied:
            done = self._once(argv, timeout, log, retry=False)
        code = done["code"]
        if code is None or code >= 0 or -code not in NATIVE_CRASHES:
            return done
        kept = log.with_name(f"{log.stem}.warm-crash{log.suffix}")
        log.replace(kept)
        again = fresh_command(argv, timeout, log)
        again["process"].update(warm_crash=signal.Signals(-code).name, warm_crash_log=str(kept),
                                warm_crash_pid=done["process"].get("pid"))
        return again

    def _once(self, argv: list[str], timeout: float, log: Path, *, retry: bool) -> dict[str, Any]:
        proc = self._ready()
        out = self.scratch / "stdout"
        out.unlink(missing_ok=True)
        started = time.time()
        self.served += 1
        try:
            proc.stdin.write((json.dumps({"argv": argv, "stdout": str(out), "stderr": str(log)}) + "\n").encode())
            proc.stdin.flush()
        except OSError:  # gone already: its replies end at once
            pass
        replies = _Replies(proc)
        begun = replies.next(started + timeout)
        if begun is None and replies.eof and retry:
            self.stop(kill=True)
            raise WorkerDied
        end = replies.next(started + timeout) if begun is not None else None
        code = end["exit"] if end is not None else self._gone(proc, log, timed_out=not replies.eof)
        return outcome(code, out.read_bytes() if out.exists() else b"", started, log, timeout, pid=proc.pid,
                       worker_command=self.served)

    def _gone(self, proc: subprocess.Popen, log: Path, *, timed_out: bool) -> int | None:
        """The command ran past its timeout (None: the worker and its group are killed) or the worker died in it (its
        exit status, negative for a signal, said at the end of the command's log); the next command gets a new one."""
        self.stop(kill=True)
        if timed_out:
            return None
        code = proc.returncode
        how = f"signal {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals() else f"exit {code}"
        own = (self.scratch / "worker.log").read_text(errors="replace").splitlines()[-20:]  # e.g. it failed to start
        with open(log, "a") as f:
            f.write("".join(f"\n{line}" for line in own))
            f.write(f"\nedgeconv sweep: the worker process running this command died ({how})\n")
        return code

    def stop(self, kill: bool = False) -> None:
        """End the worker: told to (its stdin closed; killed after EXIT_WAIT s) or, with ``kill``, its process group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if not kill and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout=EXIT_WAIT)
            except subprocess.TimeoutExpired:
                kill = True
        if kill or proc.poll() is None:
            kill_group(proc)
        untrack(proc)
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                pipe.close()


class _Replies:
    """The worker's reply lines, read against a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.fd, self.buf, self.eof = proc.stdout.fileno(), b"", False

    def next(self, deadline: float) -> dict[str, Any] | None:
        """The next reply; None when the deadline passes (``eof`` False) or the worker's stdout ends (``eof`` True)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            while b"\n" not in self.buf:
                left = deadline - time.time()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    self.eof = True
                    return None
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


class WarmWorkers:
    """At most one worker per job thread: a cell takes an idle worker (or starts one) and gives it back."""

    def __init__(self, recycle: int = RECYCLE) -> None:
        self.recycle = recycle
        self.scratch = Path(tempfile.mkdtemp(prefix="edgeconv-sweep-workers-"))
        self._idle: list[WarmWorker] = []
        self._all: list[WarmWorker] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self) -> Iterator[WarmWorker]:
        with self._lock:
            if self._idle:
                worker = self._idle.pop()
            else:
                folder = self.scratch / f"worker-{len(self._all)}"
                folder.mkdir()
                worker = WarmWorker(folder, self.recycle)
                self._all.append(worker)
        try:
            yield worker
        finally:
            with self._lock:
                self._idle.append(worker)

    def close(self) -> None:
        """End every worker (told to; killed if it does not) and remove their scratch files."""
        for worker in self._all:
            worker.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)
