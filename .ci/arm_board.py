#!/usr/bin/env python3
"""An ARM64 "board" on loopback: a Debian bookworm arm64 root run under qemu-user (binfmt), reached over SSH.

    python3 .ci/arm_board.py start    # build once (cached), start sshd; the last line is the edgeconv arguments
    python3 .ci/arm_board.py start --no-build   # start the board only if it is built (the tests: no apt, no pip)
    python3 .ci/arm_board.py stop     # stop its sshd and the sessions inside its root, unmount its /proc
    python3 .ci/arm_board.py args     # print the arguments of the running board (exit 1 when it is not running)

What it is, and that nothing is faked:
- The root is `debootstrap --arch=arm64 --variant=minbase bookworm` with Debian's python3 (3.11), plus the
  aarch64 wheels of numpy, ai-edge-litert, onnxruntime and ncnn from PyPI (downloaded here with pip's --platform,
  unpacked into the root's /usr/local/lib/python3.11/dist-packages; no pip, no edgeconv in the root, like a
  fresh Raspberry Pi OS 64-bit). Versions follow the host's .venv so that a difference between the two is the
  architecture's, not a version's.
- qemu's aarch64 binfmt handler (Debian's qemu-user-static, 'F' flag: the interpreter is opened at registration,
  so it works inside the chroot) is registered when it is not; every process in the root is a real aarch64
  process with aarch64 wheels.
- The host's OpenSSH server runs a second instance on 127.0.0.1 (its own config, port, host key and client key)
  with `ChrootDirectory` set to the root: each session's shell, mktemp, tar and python3 are the root's.

The root is cached in $EDGECONV_ARM_BOARD_DIR (default /var/cache/edgeconv/arm-board), outside the source tree,
and rebuilt from scratch when the recipe or the wheel versions change (or on a new machine). Needs root (for
debootstrap, chroot, mount and binfmt); Debian's packages and PyPI reachable for the first build.

Exit codes: 0 ok · 1 failed · 77 this machine cannot run the board (not x86-64, cannot register the binfmt handler):
`start` records the reason in the state directory (state/unavailable.json) and the tests skip with it · 75 `start
--no-build` and the board is not built (`make arm-board` builds it) · 78 not root.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RECIPE = "bookworm-arm64-minbase-python3-v1"  # change to force a rebuild of the root everywhere
SUITE, ARCH = "bookworm", "arm64"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_PORT = 22464
WHEELS = ("numpy", "ai-edge-litert", "onnxruntime", "ncnn")
PY_TAG = ("3.11", "cp311")  # bookworm's python3
GLIBC = 36  # bookworm's glibc 2.36: manylinux_2_17 … 2_36 wheels run there
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # Debian's qemu-user-static
APT_PACKAGES = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap", "sshd": "openssh-server"}
EXIT_NO_BINFMT = 77  # this machine cannot run the board
EXIT_NOT_BUILT = 75  # start --no-build: nothing built (or built for other wheel versions)
EXIT_NOT_ROOT = 78
NOT_BUILT = "the board is not built: run `make arm-board`"
UNAVAILABLE = "unavailable.json"  # in the state directory: why this machine cannot run the board, as `start` found it
REPO = Path(__file__).resolve().parents[1]


class BoardError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def say(msg: str) -> None:
    print(f"arm-board: {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Argument list, check, timeout; stderr kept for the message."""
    try:
        return subprocess.run([str(c) for c in cmd], check=True, timeout=timeout, capture_output=True, text=True, **kw)
    except subprocess.CalledProcessError as exc:
        tail = "\n".join((exc.stderr or exc.stdout or "").strip().splitlines()[-25:])
        raise BoardError(f"`{' '.join(map(str, cmd[:4]))} …` failed (exit {exc.returncode}):\n{tail}") from None
    except subprocess.TimeoutExpired:
        raise BoardError(f"`{' '.join(map(str, cmd[:4]))} …` did not finish within {timeout:.0f} s") from None


def mount_point(field: bytes) -> str:
    """A mount point as /proc/mounts writes it, unescaped: the kernel writes space, tab, newline and backslash as \\ooo
    (octal) and every other byte as it is (a UTF-8 name stays UTF-8), so only the octal escapes are decoded."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field))


class Board:
    def __init__(self, cache: Path, port: int, mirror: str, python: Path | None):
        self.cache = cache
        self.root = cache / "root"
        self.state = cache / "state"
        self.wheels = cache / "wheels"
        self.port = port
        self.mirror = mirror
        self.python = python  # whose numpy/ai-edge-litert/onnxruntime/ncnn versions the board gets

    # -- set-up ------------------------------------------------------------------------------------------------
    @staticmethod
    def missing_tools() -> list[str]:
        return sorted({pkg for tool, pkg in APT_PACKAGES.items()
                       if not shutil.which(tool) and not Path("/usr/sbin", tool).exists()})

    def host_tools(self) -> None:
        missing = self.missing_tools()
        if not missing:
            return
        say(f"installing {', '.join(missing)} from Debian")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], 900, env=env)
        except BoardError:
            run(["apt-get", "update", "-q"], 600, env=env)
            run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], 900, env=env)

    def binfmt(self) -> str:
        """qemu's aarch64 handler registered (mounting binfmt_misc when needed); returns its flags."""
        if not (BINFMT / "register").exists():
            try:
                run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], 30)
            except BoardError as exc:
                raise BoardError(f"cannot mount binfmt_misc to register qemu's aarch64 handler: {exc}", EXIT_NO_BINFMT) from None
        entry = BINFMT / "qemu-aarch64"
        if not entry.exists():
            if not BINFMT_CONF.exists():
                raise BoardError(f"{BINFMT_CONF} is missing (qemu-user-static not installed?)")
            try:
                (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip() + "\n")
            except OSError as exc:
                raise BoardError(f"cannot register qemu's aarch64 binfmt handler: {exc.strerror}", EXIT_NO_BINFMT) from None
            say("registered qemu's aarch64 binfmt handler")
        text = entry.read_text()
        if not text.startswith("enabled"):
            raise BoardError(f"the qemu-aarch64 binfmt handler is disabled ({entry}); enable it with `echo 1 > {entry}`")
        fields = dict(line.split(" ", 1) for line in text.splitlines()[1:] if " " in line)
        return fields.get("flags:", "").strip() + "|" + fields.get("interpreter", "").strip()

    def _mounts_under(self, path: Path) -> list[str]:
        prefix = str(path.resolve()) + "/"
        with open("/proc/mounts", "rb") as f:
            points = [mount_point(line.split()[1]) for line in f]
        return sorted((p for p in points if p.startswith(prefix) or p == prefix[:-1]), key=len, reverse=True)

    def unmount_all(self, path: Path) -> None:
        for point in self._mounts_under(path):
            run(["umount", point], 60)
        if self._mounts_under(path):
            raise BoardError(f"{path} still has mounts: {self._mounts_under(path)}; not touching it")

    def remove_tree(self, path: Path) -> None:
        if not path.exists():
            return
        self.unmount_all(path)  # never rm a tree with the host's /proc or /dev mounted into it
        run(["rm", "-rf", "--one-file-system", "--", str(path)], 600)

    def pins(self) -> list[str]:
        """numpy/ai-edge-litert/onnxruntime/ncnn at the host venv's versions (unpinned where it has none)."""
        if self.python is None or not self.python.exists():
            return list(WHEELS)
        code = (f"import importlib.metadata as m\nfor p in {WHEELS!r}:\n    try: print(p + '==' + m.version(p))\n"
                "    except m.PackageNotFoundError: print(p)\n")
        return run([self.python, "-c", code], 60).stdout.split()

    def build_root(self) -> float:
        stamp = self.root / ".edgeconv-recipe"
        if stamp.exists() and stamp.read_text().strip() == RECIPE:
            return 0.0
        say(f"building the {SUITE} {ARCH} root in {self.root} (debootstrap under qemu; a few minutes)")
        t0 = time.monotonic()
        partial = self.cache / "root.partial"
        self.remove_tree(partial)
        self.remove_tree(self.root)
        self.cache.mkdir(parents=True, exist_ok=True)
        os.chmod(self.cache, 0o755)  # sshd's ChrootDirectory: root-owned, not writable by others, all the way up
        run(["debootstrap", f"--arch={ARCH}", "--variant=minbase", "--include=python3", SUITE, partial, self.mirror], 3600)
        run(["chroot", partial, "/usr/bin/python3", "-c", "import platform; assert platform.machine() == 'aarch64'"], 120)
        (partial / ".edgeconv-recipe").write_text(RECIPE + "\n")
        partial.rename(self.root)
        return time.monotonic() - t0

    def install_wheels(self) -> float:
        pins = self.pins()
        stamp = self.root / ".edgeconv-wheels"
        if stamp.exists() and stamp.read_text().split() == pins:
            return 0.0
        say(f"installing the aarch64 wheels of {' '.join(pins)} into the root")
        t0 = time.monotonic()
        platforms = [a for v in range(GLIBC, 16, -1) for a in ("--platform", f"manylinux_2_{v}_aarch64")]
        tags = [*platforms, "--platform", "manylinux2014_aarch64", "--python-version", PY_TAG[0], "--implementation", "cp",
                "--abi", PY_TAG[1], "--only-binary=:all:"]
        pip = [sys.executable, "-m", "pip"]
        self.remove_tree(self.wheels)
        self.wheels.mkdir(parents=True)
        run([*pip, "download", "--quiet", *tags, "-d", self.wheels, *pins], 1800)
        site = self.root / "usr/local/lib" / f"python{PY_TAG[0]}" / "dist-packages"
        self.remove_tree(site)
        run([*pip, "install", "--quiet", "--no-index", "--find-links", self.wheels, *tags, "--target", site, *pins], 1800)
        stamp.write_text("\n".join(pins) + "\n")
        return time.monotonic() - t0

    def prepare_root(self, binfmt: str) -> None:
        """/proc mounted; /dev's few nodes; the interpreter copied in when the handler lacks the 'F' flag."""
        flags, interpreter = binfmt.split("|")
        if "F" not in flags and interpreter:
            dest = self.root / interpreter.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(interpreter), dest)
        # No /sys: with the host's CPU list there and the host's x86 /proc/cpuinfo, onnxruntime's cpuinfo library
        # crashes the aarch64 process under qemu-user 7.2 (SIGSEGV on import); without it, it says so and goes on.
        proc = self.root / "proc"
        if str(proc.resolve()) not in self._mounts_under(self.root):
            run(["mount", "-t", "proc", "proc", proc], 30)
        for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9)):
            node = self.root / "dev" / name
            if not node.exists():
                os.mknod(node, 0o666 | 0o020000, os.makedev(major, minor))
                os.chmod(node, 0o666)

    # -- sshd --------------------------------------------------------------------------------------------------
    def pid(self) -> int | None:
        """The board's sshd, when it runs (its pid file, a live sshd using this board's config)."""
        try:
            pid = int((self.state / "sshd.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # sshd rewrites its title: one string, config inside
        except (OSError, ValueError):
            return None
        return pid if str(self.state / "sshd_config").encode() in cmdline else None

    def keys(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key"):
            if not (self.state / name).exists():
                run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgeconv-arm-board-{name}",
                     "-f", self.state / name], 30)
        shutil.copy(self.state / "client_key.pub", self.state / "authorized_keys")
        pub = (self.state / "host_key.pub").read_text().split()
        (self.state / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")

    def start_sshd(self) -> None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", self.port)) == 0:
                raise BoardError(f"port {self.port} on 127.0.0.1 is taken by another program: pass --port")
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        s = self.state
        (s / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {s / 'host_key'}\nAuthorizedKeysFile {s / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPrintMotd no\nAcceptEnv TMPDIR\n"
            f"PidFile {s / 'sshd.pid'}\nLogLevel ERROR\nChrootDirectory {self.root}\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
        (s / "sshd.pid").unlink(missing_ok=True)
        run([sshd, "-f", s / "sshd_config", "-E", s / "sshd.log"], 30)  # forks into the background, writes its pid
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.pid():  # it writes its pid file once it listens
                return
            time.sleep(0.1)
        log = (s / "sshd.log").read_text() if (s / "sshd.log").exists() else ""
        raise BoardError(f"the board's sshd did not start on 127.0.0.1:{self.port}: {log[-1500:]}")

    def ssh(self, *remote: str, timeout: float = 120) -> str:
        return run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-p", str(self.port),
                    "-i", self.state / "client_key",
                    "-o", f"UserKnownHostsFile={self.state / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes", "root@127.0.0.1",
                    "--", shlex.join(remote)], timeout).stdout

    def facts(self) -> dict:
        """What the board says of itself, over SSH (each a real aarch64 process in the root)."""
        code = ("import json, platform, numpy, onnxruntime, importlib.metadata as m\n"
                "d = dict(l.split('=', 1) for l in open('/etc/os-release').read().split('\\n') if '=' in l)\n"
                "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),\n"
                "  'distribution': d['PRETTY_NAME'].strip('\"'), 'numpy': numpy.__version__,"
                " 'onnxruntime': onnxruntime.__version__,\n"
                "  'ai-edge-litert': m.version('ai-edge-litert')}))\n")
        facts = json.loads(self.ssh("/usr/bin/python3", "-c", code, timeout=300).strip().splitlines()[-1])
        if facts["machine"] != "aarch64":
            raise BoardError(f"the board's python3 reports {facts['machine']!r}, not aarch64")
        return facts

    def args(self) -> str:
        return (f"--remote root@127.0.0.1:{self.port} --identity {self.state / 'client_key'} "
                f"--ssh-option UserKnownHostsFile={self.state / 'known_hosts'} --ssh-option StrictHostKeyChecking=yes "
                f"--remote-python /usr/bin/python3")

    # -- what was found before -------------------------------------------------------------------------------
    def record_unavailable(self, reason: str) -> None:
        """Why this machine cannot run the board, for the tests to skip with (`start --no-build` reports it)."""
        try:
            self.state.mkdir(parents=True, exist_ok=True)
            (self.state / UNAVAILABLE).write_text(json.dumps(
                {"reason": reason, "host": platform.node(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                indent=2))
        except OSError as exc:
            say(f"could not record the reason in {self.state / UNAVAILABLE}: {exc.strerror}")

    def recorded_unavailable(self) -> str | None:
        try:
            doc = json.loads((self.state / UNAVAILABLE).read_text())
            return f"{doc['reason']} (found by `make arm-board` on {doc.get('host')} at {doc.get('when')})"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def unbuilt(self) -> str | None:
        """Why the cached root cannot be started as it is (None: it can)."""
        recipe, wheels = self.root / ".edgeconv-recipe", self.root / ".edgeconv-wheels"
        if not recipe.exists() or recipe.read_text().strip() != RECIPE:
            return f"no root of recipe {RECIPE} in {self.root}"
        pins = self.pins()
        if not wheels.exists() or wheels.read_text().split() != pins:
            return f"the root's wheels are not {' '.join(pins)}"
        return None

    # -- commands ----------------------------------------------------------------------------------------------
    def start(self, build: bool = True) -> dict:
        """Build what is missing (build=False: refuse with EXIT_NOT_BUILT instead: no apt, no pip) and start the board."""
        if not build and self.recorded_unavailable():
            raise BoardError(self.recorded_unavailable(), EXIT_NO_BINFMT)
        if platform.machine() != "x86_64":  # elsewhere Debian's qemu-user-static has no aarch64 handler to register
            raise BoardError(f"the emulated aarch64 board is built on x86_64 hosts, not {platform.machine()}", EXIT_NO_BINFMT)
        t0 = time.monotonic()
        if build:
            self.host_tools()
        elif self.missing_tools():
            raise BoardError(f"{NOT_BUILT} ({', '.join(self.missing_tools())} not installed)", EXIT_NOT_BUILT)
        binfmt = self.binfmt()
        why = None if build else self.unbuilt()
        if why:
            raise BoardError(f"{NOT_BUILT} ({why})", EXIT_NOT_BUILT)
        if self.pid():
            if (self.root / ".edgeconv-wheels").exists() and (self.root / ".edgeconv-wheels").read_text().split() == self.pins():
                record = json.loads((self.state / "board.json").read_text()) if (self.state / "board.json").exists() else {}
                return {"started": False, "facts": record.get("facts") or self.facts()}
            self.stop()
        built = self.build_root()
        wheels = self.install_wheels()
        self.prepare_root(binfmt)
        self.keys()
        self.start_sshd()
        t1 = time.monotonic()
        try:
            facts = self.facts()
        except BoardError:
            self.stop()
            raise
        record = {"started": True, "facts": facts, "recipe": RECIPE, "root": str(self.root),
                  "binfmt_flags": binfmt.split("|")[0],
                  "seconds": {"total": round(time.monotonic() - t0, 1), "debootstrap": round(built, 1),
                              "wheels": round(wheels, 1), "first_ssh_python": round(time.monotonic() - t1, 1)}}
        if built or wheels:
            (self.state / "build.json").write_text(json.dumps(
                dict(record, host=platform.node(), when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), indent=2))
        (self.state / "board.json").write_text(json.dumps(record, indent=2))
        (self.state / UNAVAILABLE).unlink(missing_ok=True)  # it runs here after all
        return record

    def sessions(self, listener: int | None) -> set[int]:
        """The board's other processes: whatever runs inside its root (sessions' shells, python3 under qemu) and the
        sshd processes serving its sessions (descendants of the listener; sshd's monitor is not chrooted)."""
        root = str(self.root.resolve())
        parent: dict[int, int] = {}
        inside: set[int] = set()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if os.readlink(d / "root") == root:
                    inside.add(int(d.name))
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):  # gone meanwhile
                continue
        found = set(inside)
        if listener:
            below = {listener}
            while True:
                more = {p for p, pp in parent.items() if pp in below and p not in below}
                if not more:
                    break
                below |= more
            found |= below - {listener}
        found.discard(os.getpid())
        return found

    @staticmethod
    def _alive(pid: int) -> bool:
        try:  # a zombie is dead: only its parent's wait is missing
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def _kill(self, pids: set[int], sig: int) -> None:
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def _wait_dead(self, pids: set[int], seconds: float) -> set[int]:
        deadline = time.monotonic() + seconds
        while True:
            alive = {p for p in pids if self._alive(p)}
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def stop(self) -> bool:
        """The listener, then every session of the board: SIGTERM, SIGKILL for what is left after 10 s; confirmed dead
        before /proc is unmounted from the root."""
        pid = self.pid()
        victims = self.sessions(pid) | ({pid} if pid else set())  # before the listener dies: its children get re-parented
        self._kill(victims, signal.SIGTERM)
        alive = self._wait_dead(victims, 10)
        if alive:
            say(f"SIGKILL for {sorted(alive)} (still running 10 s after SIGTERM)")
            self._kill(alive, signal.SIGKILL)
            alive = self._wait_dead(alive, 10)
        if alive:
            raise BoardError(f"processes of the board did not die, even with SIGKILL: {sorted(alive)}; /proc left mounted")
        if self.root.exists():
            self.unmount_all(self.root)
        return bool(pid)


@contextlib.contextmanager
def locked(cache: Path):
    """One start/stop at a time per cache (other sessions on this machine may share the board)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["start", "stop", "args"])
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGECONV_ARM_BOARD_DIR", "/var/cache/edgeconv/arm-board")))
    ap.add_argument("--port", type=int, default=int(os.environ.get("EDGECONV_ARM_BOARD_PORT", DEFAULT_PORT)))
    ap.add_argument("--mirror", default=os.environ.get("EDGECONV_DEBIAN_MIRROR", DEFAULT_MIRROR))
    ap.add_argument("--versions-from", type=Path, default=REPO / ".venv" / "bin" / "python",
                    help="a Python whose versions of the board's wheels (WHEELS) the board gets (default: the repo's .venv)")
    ap.add_argument("--json", action="store_true", help="start: the board's record as JSON before the last line")
    ap.add_argument("--no-build", action="store_true",
                    help="start: only a board already built here (exit 75 otherwise; no apt-get, no pip); the tests use it")
    a = ap.parse_args(argv)
    board = Board(a.cache.resolve(), a.port, a.mirror, a.versions_from)
    try:
        if a.command == "args":
            if not board.pid():
                say("not running: `make arm-board` starts it")
                return 1
            print(board.args())
            return 0
        if os.geteuid() != 0:  # before anything touches the cache (root's)
            raise BoardError("not root: the ARM64 board needs root (debootstrap, chroot, mount, binfmt_misc registration, "
                             "its own sshd); run `make arm-board` and the tests as root", EXIT_NOT_ROOT)
        with locked(board.cache):
            if a.command == "stop":
                say("stopped" if board.stop() else "was not running")
                return 0
            record = board.start(build=not a.no_build)
        f = record["facts"] or {}
        say(("started" if record["started"] else "already running") + f" on 127.0.0.1:{board.port}: {f.get('distribution')} "
            f"{f.get('machine')}, Python {f.get('python')}, numpy {f.get('numpy')}, onnxruntime {f.get('onnxruntime')}, "
            f"ai-edge-litert {f.get('ai-edge-litert')}")
        if record.get("seconds"):
            say("seconds: " + ", ".join(f"{k} {v}" for k, v in record["seconds"].items()))
        if a.json:
            print(json.dumps(record))
        print(board.args())
        return 0
    except BoardError as exc:
        say(f"error: {exc}")
        if exc.code == EXIT_NO_BINFMT and a.command == "start" and not a.no_build:
            board.record_unavailable(str(exc))
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
