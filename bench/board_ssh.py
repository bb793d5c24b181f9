"""The aarch64 qemu board (`make arm-board`, .ci/arm_board.py) for the benches: start a built one, its edgeconv
arguments (`--remote … --identity … --ssh-option … --remote-python …`), and plain SSH with the same key and host key
for a bare script there."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path


def start_board(root: Path) -> dict:
    """A running board (started when built and not running): its edgeconv arguments and record; SystemExit if none."""
    r = subprocess.run([sys.executable, str(root / ".ci" / "arm_board.py"), "start", "--no-build", "--json"],
                       capture_output=True, text=True, timeout=600, check=False)
    if r.returncode != 0:
        raise SystemExit(f"the aarch64 board is not available (exit {r.returncode}): {r.stderr.strip()[-600:]}")
    lines = r.stdout.strip().splitlines()
    args = shlex.split(lines[-1])
    return {"args": args, "record": json.loads(lines[-2])}


def _ssh(board: dict) -> list[str]:
    """ssh with the board's port, key and known_hosts (from its edgeconv arguments)."""
    a = board["args"]
    user_host, port = a[a.index("--remote") + 1].rsplit(":", 1)
    cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-p", port, "-i", a[a.index("--identity") + 1]]
    for i, v in enumerate(a):
        if v == "--ssh-option":
            cmd += ["-o", a[i + 1]]
    return [*cmd, user_host, "--"]


def _python(board: dict) -> str:
    a = board["args"]
    return a[a.index("--remote-python") + 1] if "--remote-python" in a else "python3"


def upload(board: dict, files: list[Path], where: str = "/tmp/edgeconv-bench") -> str:
    """Copy files to ``where`` on the board (through ssh's stdin, one file at a time); returns ``where``."""
    subprocess.run([*_ssh(board), "mkdir", "-p", where], check=True, timeout=120, capture_output=True)
    for f in files:
        with open(f, "rb") as src:
            subprocess.run([*_ssh(board), "sh", "-c", shlex.quote(f"cat > {where}/{f.name}")], stdin=src, check=True,
                           timeout=600, capture_output=True)
    return where


def remote_python(board: dict, code: str, argv: list[str]) -> str:
    """Run ``code`` with the board's python3 and ``argv``; its stdout."""
    r = subprocess.run([*_ssh(board), _python(board), "-", *argv], input=code, capture_output=True, text=True, timeout=1800,
                       check=True)
    return r.stdout
