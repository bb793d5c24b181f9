"""Library output kept off the terminal (see docs/architecture.md).

While a step runs, what the libraries print — TensorFlow's C++ logging (``I0000 … oneDNN custom operations are
on``), TFLiteConverter's (``fully_quantize: 0, inference_type: 6 …``), ONNX Runtime's coloured warnings, torch's
warnings — goes to a log instead of between edgeconv's own lines: ``convert`` writes it into the bundle as
``convert.log``. It is shown with ``edgeconv --verbose``, and the end of it when the step fails.

Most of it is written by C++ code straight to file descriptors 1 and 2, so :func:`captured` points the descriptors
themselves at a temporary file, not only ``sys.stdout``/``sys.stderr``. edgeconv's own progress is written to
:func:`terminal`, a copy of the process's stderr taken before any redirection. Child processes that capture their
output (the TFLite job) hand it over with :func:`record`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

LOG_NAME = "convert.log"  # the bundle's copy of what the libraries printed during the convert
LOG_LIMIT = 4 << 20  # characters of library output kept; the oldest are dropped first
FAILED_LINES = 40  # the last lines of a failed step's library output shown on the terminal
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colours (ONNX Runtime's warnings): the log is plain text

_state: dict = {"verbose": False, "depth": 0, "terminal": None, "size": 0}
_log: list[str] = []


@dataclass
class Captured:
    """What the libraries printed inside one :func:`captured` block (set when the block ends)."""

    label: str
    text: str = ""

    def shown(self, failed: bool) -> str | None:
        """The part of ``text`` the terminal shows: all of it with --verbose, its end when the step failed, else none."""
        lines = self.text.rstrip().splitlines()
        if not lines or not (failed or _state["verbose"]):
            return None
        if _state["verbose"]:
            return "\n".join(lines)
        cut = lines[-FAILED_LINES:]
        part = f"the last {len(cut)} of its {len(lines)} lines" if len(cut) < len(lines) else f"{len(lines)} line(s)"
        head = f"what the libraries printed during {self.label!r} ({part}):"
        return "\n".join([head, *cut])


def set_verbose(on: bool) -> None:
    """``--verbose``: library output is shown after each step (it is logged either way)."""
    _state["verbose"] = on


def terminal() -> TextIO:
    """Where edgeconv's own progress goes: the process's stderr as it was before any redirection (or ``sys.stderr``
    itself when that is not file descriptor 2, e.g. a test runner's capture)."""
    try:
        real = sys.stderr is not None and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: an in-memory stream
        real = False
    if not real:
        return sys.stderr
    if _state["terminal"] is None:
        _state["terminal"] = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                                       errors="replace")
    return _state["terminal"]


def record(label: str, text: str | None) -> None:
    """Add what a library or a child process printed to the log, under ``label``."""
    if not text or not text.strip():
        return
    entry = f"── {label} ──\n{ANSI.sub('', text).rstrip()}\n"
    _log.append(entry)
    _state["size"] += len(entry)
    while _state["size"] > LOG_LIMIT and len(_log) > 1:
        _state["size"] -= len(_log.pop(0))


def reset() -> None:
    """Forget the log (a convert starts its own)."""
    _log.clear()
    _state["size"] = 0


def text() -> str:
    """The log so far."""
    return "".join(_log)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
    with contextlib.suppress(OSError, AttributeError):  # C's stdio buffers (printf, std::cout on a redirected fd)
        ctypes.CDLL(None).fflush(None)


def _fds_usable() -> bool:
    try:
        os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def captured(label: str) -> Iterator[Captured]:
    """File descriptors 1 and 2 sent to a temporary file for the block; what was written there is logged under
    ``label`` and is the ``text`` of the yielded :class:`Captured`. A block inside another is captured by the outer."""
    cap = Captured(label)
    if _state["depth"] or not _fds_usable():
        _state["depth"] += 1
        try:
            yield cap
        finally:
            _state["depth"] -= 1
        return
    terminal()  # the copy of stderr is taken before it is redirected
    _flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        _state["depth"] += 1
        try:
            yield cap
        finally:
            _state["depth"] -= 1
            _flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            tmp.seek(0)
            cap.text = ANSI.sub("", tmp.read().decode(errors="replace"))
            record(label, cap.text)
