"""What every toolchain job shares: read the request, die with edgeconv, quiet the toolchain, write the response.

Standard library only: this runs under a toolchain's own python (docs/architecture.md, "NPU toolchains"), where
edgeconv is not installed. A job imports it by path (``import _common``: the job's folder is first on sys.path) and
ends with ``_common.main(handler)``; ``handler(request) -> dict`` does the work.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def read_request(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def write_response(path: str | Path, data: dict[str, Any]) -> None:
    """``path`` holds the whole response or nothing: a temporary file beside it, renamed over it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def die_with_parent(parent: int) -> None:
    """End this process when ``parent`` (the edgeconv that started it) dies, however it dies: on Linux the kernel
    sends SIGKILL (``prctl(PR_SET_PDEATHSIG)``); elsewhere a thread notices the re-parenting within half a second.
    A parent already gone ends it at once."""
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def quiet() -> None:
    """The toolchains' chatter (warnings, their loggers) stays in the job's log at warning level and above."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pkg_resources is deprecated.*")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(handler: Callable[[dict[str, Any]], dict[str, Any]], argv: list[str] | None = None) -> None:
    """``job.py REQUEST.json RESPONSE.json``: the handler's dict is the response; an exception in it becomes
    ``{"error": ..., "traceback": ...}`` (exit 0: the response says what failed, edgeconv raises it)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: JOB.py REQUEST.json RESPONSE.json\n")
        sys.exit(2)
    request = read_request(args[0])
    if request.get("parent_pid"):
        die_with_parent(int(request["parent_pid"]))
    quiet()
    try:
        response = handler(request)
    except Exception as exc:  # noqa: BLE001 -- the job's boundary: reported in the response, raised by edgeconv as ConversionFailed
        traceback.print_exc()
        response = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    answer = response.pop("_serve", None)
    if answer is None:
        write_response(args[1], response)
        return
    serve(request["serve"], answer, lambda: write_response(args[1], response))


def serve(where: dict[str, Any], answer: Callable[[bytes], bytes], ready: Callable[[], None]) -> None:
    """Answer edgeconv's requests on a local socket (``where``: address, authkey_hex, idle_timeout) until it sends
    ``close``, goes quiet for idle_timeout seconds or dies. ``ready()`` runs once the socket listens (it writes the
    response edgeconv waits for). A failing request is answered ``error: ...`` and the job goes on."""
    from multiprocessing.connection import Listener

    idle = float(where.get("idle_timeout", 1800))
    with Listener(where["address"], family="AF_UNIX", authkey=bytes.fromhex(where["authkey_hex"])) as listener:
        ready()
        with listener.accept() as conn:
            while conn.poll(idle):
                data = conn.recv_bytes()
                if data == b"close":
                    break
                try:
                    conn.send_bytes(answer(data))
                except Exception as exc:  # noqa: BLE001 -- the job's boundary: edgeconv raises it
                    traceback.print_exc()
                    conn.send_bytes(b"error: " + f"{type(exc).__name__}: {exc}".encode())
