"""The way to a device: the user's own ``ssh`` binary, not a library, so that ``~/.ssh/config``, the agent, jump hosts
and known_hosts checking work exactly as in the user's own logins. Files travel as a tar stream over the same kind of
connection (no scp quoting rules); every remote argument is quoted with ``shlex.quote``; ssh's own failures are named;
each command gets a fresh directory on the device, removed after it, also on failure and Ctrl-C. Nothing here knows
what a command does on the device (that is ``jobs``; see docs/architecture.md)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeconv.core.text import shorten
from edgeconv.errors import BadInput, EdgeconvError, MissingDependency
from edgeconv.remote.options import SshOptions

SSH_ERRORS = [
    (r"Could not resolve hostname|Name or service not known|nodename nor servname", "cannot resolve the host name"),
    (r"Connection refused", "connection refused (is sshd running on that port?)"),
    (r"Connection timed out|Operation timed out|timed out", "the host did not answer in time"),
    (r"No route to host|Network is unreachable", "the host is unreachable"),
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed",
     "host key verification failed (known_hosts checking stays on)"),
    (r"Permission denied", "authentication failed (key or user refused)"),
    (r"No space left on device", "the device's disk is full"),
    (r"closed by remote host|Connection reset|Broken pipe|Connection closed|connection abort",
     "the connection was lost (the device, its sshd or the network went away)"),
]
MAX_PARALLEL = 4
# Ctrl-C: the main thread sets _abort and kills the ssh processes in flight; workers then only clean up.
_abort = threading.Event()
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


@dataclass
class SshHost:
    """One device as ``--remote`` names it: ``user@host[:port]`` (an IPv6 address in brackets)."""

    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> SshHost:
        m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s]+)(?::(\d+))?", text.strip())
        if not m:
            raise BadInput(f"--remote {text!r} is not user@host[:port]")
        return cls(m.group(1), m.group(2).strip("[]"), int(m.group(3)) if m.group(3) else None)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return self.destination + (f":{self.port}" if self.port else "")


@dataclass
class Ssh:
    """Commands on one host, with the SSH options' key, ``-o`` options and timeout."""

    host: SshHost
    opts: SshOptions

    def base(self) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(max(1, self.opts.timeout))}"]
        if self.host.port:
            cmd += ["-p", str(self.host.port)]
        if self.opts.identity:
            cmd += ["-i", str(self.opts.identity)]
        for opt in self.opts.ssh_options:
            cmd += ["-o", opt]
        return [*cmd, self.host.destination, "--"]

    def run(self, args: list[str], *, stdin: bytes | None = None, stream: Callable[[str], None] | None = None,
            timeout: float | None = None, check: bool = True, cleanup: bool = False) -> subprocess.CompletedProcess:
        """Run ``args`` on the device (each argument quoted). ``stream`` receives stderr lines as they arrive; a
        ``cleanup`` command runs even after Ctrl-C (it removes what the interrupted command left)."""
        if _abort.is_set() and not cleanup:
            raise MissingDependency(f"{self.host}: interrupted")
        remote = " ".join(shlex.quote(a) for a in args)
        proc = subprocess.Popen([*self.base(), remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if not cleanup:
            with _live_lock:
                _live.add(proc)
        try:
            out, err = _communicate(proc, stdin, stream, timeout)
        except subprocess.TimeoutExpired:
            raise MissingDependency(f"{self.host}: no answer within {timeout:.0f} s (--timeout)") from None
        finally:
            with _live_lock:
                _live.discard(proc)
        if _abort.is_set() and not cleanup:
            raise MissingDependency(f"{self.host}: interrupted")
        return self._checked(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), args, check)

    def _checked(self, result: subprocess.CompletedProcess, args: list[str], check: bool) -> subprocess.CompletedProcess:
        if result.returncode == 255:  # ssh's own failure: connection, auth, host key
            raise self._ssh_error(result.stderr)
        if check and result.returncode != 0:
            if "No space left on device" in result.stderr:
                raise self._ssh_error(result.stderr)
            raise MissingDependency(f"{self.host}: `{' '.join(args[:3])}…` failed (exit {result.returncode})",
                                    details=shorten(result.stderr, 2000, keep="tail"))
        return result

    def _ssh_error(self, stderr: str) -> MissingDependency:
        details = shorten(stderr.strip(), 2000, keep="tail")
        for pattern, what in SSH_ERRORS:
            if re.search(pattern, stderr):
                return MissingDependency(f"{self.host}: {what}", details=details)
        return MissingDependency(f"{self.host}: ssh failed", details=details)


def _communicate(proc: subprocess.Popen, stdin: bytes | None, stream, timeout: float | None) -> tuple[bytes, str]:
    """Feed ``stdin``, read stdout whole, hand each stderr line to ``stream`` as it comes; on a timeout or Ctrl-C the
    process is killed and the exception goes on."""
    err_lines: list[str] = []
    chunks: list[bytes] = []

    def pump():
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            err_lines.append(line)
            if stream:
                stream(line)

    def feed():
        try:
            if stdin:
                proc.stdin.write(stdin)
            proc.stdin.close()
        except OSError:  # the remote side went away; its exit status says why
            pass

    threads = [threading.Thread(target=f, daemon=True) for f in (pump, feed, lambda: chunks.append(proc.stdout.read()))]
    for t in threads:
        t.start()
    try:
        proc.wait(timeout=timeout)
    except BaseException:  # the timeout, or Ctrl-C: the ssh process does not outlive the command
        proc.kill()
        proc.wait()
        raise
    for t in threads:
        t.join(timeout=10)
    return b"".join(chunks), "\n".join(err_lines)


def tar_stream(entries: dict[str, Path | bytes]) -> bytes:
    """A tar archive of ``{name in the archive: a file or directory here, or the bytes of a file}``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in entries.items():
            if isinstance(content, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.add(content, arcname=name)
    return buf.getvalue()


# A remote command run through sh, so that a process killed by a signal comes back as 128+N, not as ssh's own 255.
# The sh writes its pid into the remote directory first (.pids), so the clean-up can kill what a dropped connection
# or a timeout left running there (ssh gives a command without a terminal no signal when the connection goes).
_THROUGH_SH = 'echo $$ >> "$0/.pids"; "$@"; exit $?'
# The clean-up: each recorded sh still alive (its command line names this directory) is killed with its process group
# (sshd makes each session its own group; the group's leader, the login shell, names the directory too), then the
# directory goes. Linux's /proc; elsewhere only the removal.
_CLEANUP = ('for p in $(cat "$1/.pids" 2>/dev/null); do if grep -q "$1" "/proc/$p/cmdline" 2>/dev/null; then '
            'read -r _ _ _ _ g _ < "/proc/$p/stat"; grep -q "$1" "/proc/$g/cmdline" 2>/dev/null && kill -KILL "-$g"; '
            'kill -KILL "$p"; fi; done 2>/dev/null; rm -rf -- "$1"')


class Session:
    """One command on one device: the connection, a fresh directory there (``workdir``), and progress lines that
    name the device. ``left``: after the session, why its remote directory could not be removed (None: removed)."""

    def __init__(self, ssh: Ssh, workdir: str, progress: Callable[[str], None], run_timeout: float):
        self.ssh = ssh
        self.workdir = workdir
        self._progress = progress
        self.run_timeout = run_timeout
        self.left: str | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, host: SshHost, opts: SshOptions, progress: Callable[[str], None], run_timeout: float) -> Iterator[Session]:
        """A session whose remote directory (and whatever still runs in it) is removed when it ends, however it ends.
        When it cannot be (the device is gone), the error that ended the session, or ``left``, names it."""
        ssh = Ssh(host, opts)
        workdir = ssh.run(["mktemp", "-d", "-t", "edgeconv.XXXXXXXX"], timeout=opts.timeout).stdout.decode().strip()
        if not workdir.startswith("/"):
            raise MissingDependency(f"{host}: could not create a temporary directory on the device")
        session = cls(ssh, workdir, progress, run_timeout)
        try:
            yield session
        except EdgeconvError as exc:
            session.left = session._remove()
            if session.left:
                exc.message += f"; {session.left}"
            raise
        except BaseException:
            session._remove()
            raise
        session.left = session._remove()

    def _remove(self) -> str | None:
        """Kill what still runs in the remote directory and remove it; None when done, else the sentence naming it."""
        try:
            res = self.ssh.run(["sh", "-c", _CLEANUP, "sh", self.workdir], check=False, timeout=self.ssh.opts.timeout,
                               cleanup=True)
            why = None if res.returncode == 0 else shorten(res.stderr, 200, keep="tail") or f"exit {res.returncode}"
        except EdgeconvError as exc:
            why = exc.message.removeprefix(f"{self.host}: ")
        return None if why is None else f"the remote directory {self.workdir} was left on the device ({why}): remove it by hand"

    @property
    def host(self) -> SshHost:
        return self.ssh.host

    @property
    def python(self) -> str:
        return self.ssh.opts.remote_python

    def say(self, line: str) -> None:
        self._progress(f"{self.host}: {line}")

    def ask(self, args: list[str]) -> subprocess.CompletedProcess:
        """A short command whose exit status is the answer (the SSH timeout applies); through sh as ``execute``."""
        return self.ssh.run(["sh", "-c", _THROUGH_SH, self.workdir, *args], check=False, timeout=self.ssh.opts.timeout)

    def send(self, entries: dict[str, Path | bytes]) -> None:
        """Files into the remote directory (names relative to it), as one tar stream."""
        self.ssh.run(["tar", "-C", self.workdir, "-xf", "-"], stdin=tar_stream(entries), timeout=self.run_timeout)

    def execute(self, cmd: list[str]) -> subprocess.CompletedProcess:
        """The command's run, its stderr streamed as progress; its exit status is the caller's to read."""
        return self.ssh.run(["sh", "-c", _THROUGH_SH, self.workdir, *cmd], check=False, timeout=self.run_timeout,
                            stream=self.say)

    def read(self, path: str) -> bytes:
        return self.ssh.run(["cat", path], timeout=self.run_timeout).stdout

    def read_files(self, remote_dir: str) -> dict[str, bytes]:
        """The regular files directly inside ``remote_dir`` (not its subdirectories), by name."""
        data = self.ssh.run(["tar", "-C", remote_dir, "-cf", "-", "."], timeout=self.run_timeout).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and "/" not in m.name.removeprefix("./")]
            return {m.name.removeprefix("./"): tar.extractfile(m).read() for m in members}

    def facts(self) -> dict[str, Any]:
        """``uname -a``, and a Jetson's power mode (nvpmodel) where there is one."""
        facts = {"uname": self.ask(["uname", "-a"]).stdout.decode().strip()}
        nv = self.ask(["sh", "-c", "command -v nvpmodel >/dev/null && nvpmodel -q"])
        if nv.returncode == 0:
            facts["power_mode"] = nv.stdout.decode().strip()
        return facts


def in_parallel(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``fn`` on every item, at most MAX_PARALLEL at once. On Ctrl-C the ssh processes in flight are killed and each
    worker only cleans up (removes its remote directory) before the KeyboardInterrupt goes on."""
    _abort.clear()
    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items)))
    futures = [pool.submit(fn, item) for item in items]
    try:
        results = [f.result() for f in futures]
    except KeyboardInterrupt:
        _abort.set()
        with _live_lock:
            for proc in list(_live):
                proc.kill()
        pool.shutdown(wait=True)
        raise
    pool.shutdown()
    return results
