"""``python -m edgeconv.serve``: a warm sweep worker. It runs ``edgeconv ARGV`` in this process, the command
line's own entry, for each request on stdin (one JSON line: ``argv``, ``stdout``, ``stderr``), one at a time, with
file descriptors 1 and 2 pointed at the request's files, so the exit code, the JSON on stdout and the log are what a
user's shell gets, native libraries' output included. Before a command it answers ``{"begin": PID}`` and after it
``{"exit": CODE}`` on its own copy of the original stdout. Its end, its timeouts and its crashes are the driver's
(``sweep/worker.py``). Nothing imports this module: it imports the command line, which imports the sweep.
See docs/architecture.md, "Sweeps"."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, TextIO

PARENT_POLL = 0.5  # seconds between checks that the sweep that started this worker is still there


def main() -> int:
    requests = os.fdopen(os.dup(0), "r")  # the protocol's channels; fds 0 and 1 themselves are the commands'
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    null_in, null_out = os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_in, 0)  # a command that reads stdin gets an end of file, never the next request
    os.dup2(null_out, 1)  # between commands: a library thread's stray output goes nowhere
    threading.Thread(target=_die_with_parent, args=(os.getppid(),), daemon=True).start()
    from edgeconv import cli

    for line in requests:
        req = json.loads(line)
        code = _serve(cli, req, replies, null_out)
        replies.write(json.dumps({"exit": code}) + "\n")
    return 0


def _serve(cli, req: dict[str, Any], replies: TextIO, null_out: int) -> int:
    """One command, its output in the request's files; its exit code as the interpreter would give it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved_err, env, cwd = os.dup(2), dict(os.environ), os.getcwd()
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        os.dup2(opened, fd)
        os.close(opened)
    replies.write(json.dumps({"begin": os.getpid()}) + "\n")
    sys.argv = ["edgeconv", *req["argv"]]
    cli._state.clear()
    cli._state["debug"] = False
    try:
        # python -m edgeconv's own path: its name in usage messages, the root's flags moved first (cli.main)
        cli.app(args=cli._global_flags_first(req["argv"]), prog_name="python -m edgeconv")
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except Exception:  # noqa: BLE001 -- uncaught in a command: printed to its log, exit 1, as the interpreter does
        traceback.print_exc()
        code = 1
    finally:
        _put_back(null_out, saved_err, env, cwd)
    return code


def _put_back(null_out: int, saved_err: int, env: dict[str, str], cwd: str) -> None:
    """After a command: its output flushed to its files, fds 1 and 2 the worker's again, and what the command set in
    its environment or working folder not the next one's."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(null_out, 1)
    os.dup2(saved_err, 2)
    os.close(saved_err)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)  # sys.exit("message"): the interpreter prints it and exits 1
    return 1


def _die_with_parent(parent: int) -> None:
    """The sweep is gone (killed, however): end this worker and what its command started (its process group)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL)
    os.killpg(os.getpgrp(), signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
