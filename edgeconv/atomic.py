"""Writing that survives being killed: locks held by open files, temporary siblings renamed into place, and the
clean-up of the temporaries a killed process left (see docs/architecture.md, "Faults").

A process that dies (SIGKILL included) releases its ``flock`` locks with its file descriptors, so a temporary folder
whose lock can be taken belongs to nobody alive and can be removed; one whose lock is held is another run's work in
progress and is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (a folder, or a lock file created if missing) while the body runs; yields
    False without waiting when ``blocking`` is off and another process holds it. Filesystems without ``flock`` (some
    network mounts) give no lock: yields True, as before locks existed."""
    flags = os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT
    try:
        fd = os.open(path, flags, 0o644)
    except PermissionError:  # a folder we may write into but not list: no lock, as before locks existed
        fd = None
    if fd is None:
        yield True
        return
    try:
        yield _flock(fd, blocking)
    finally:
        os.close(fd)


def _flock(fd: int, blocking: bool) -> bool:
    """Lock ``fd`` exclusively; False when ``blocking`` is off and another process holds it. True where the filesystem
    has no ``flock`` (the run goes on unlocked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        if exc.errno not in (errno.ENOLCK, errno.EBADF, errno.EINVAL, errno.ENOTSUP):
            raise
    return True


def hold(path: Path) -> int:
    """Take an exclusive lock on the folder ``path`` for as long as the returned descriptor stays open (``os.close`` it;
    a killed process's is closed by the kernel)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _flock(fd, blocking=False)  # a folder just made: nobody else can hold it
    except OSError:
        os.close(fd)
        raise
    return fd


def remove_abandoned(parent: Path, pattern: str) -> list[Path]:
    """Remove the folders ``parent/pattern`` whose lock nobody holds (a killed run's temporaries); return them."""
    removed = []
    for p in sorted(parent.glob(pattern)):
        if p.is_symlink() or not p.is_dir():
            continue
        try:
            with locked(p, blocking=False) as free:
                if free:
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        except OSError:
            continue  # gone meanwhile, or not ours to open
    return removed


def file_hashes(folder: Path, skip: str | None = None) -> dict[str, str]:
    """sha256 of every file below ``folder`` by its relative POSIX path (``skip``: a top-level file left out)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel == skip or p.is_dir():
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[rel] = h.hexdigest()
    return out


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds either its old content or ``text``, whenever the process dies: a temporary file beside it,
    flushed, then renamed over it."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """``path`` holds either its old content or ``data``, whenever the process dies (``write_text_atomic``); a link
    at ``path`` is replaced, never written through."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def no_space(exc: BaseException) -> bool:
    """``exc`` or an error it came from is a full disk (ENOSPC, or a library's text for it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def swap_in(new: Path, dest: Path) -> Path | None:
    """Put the folder ``new`` at ``dest``; return where ``dest``'s old content now is (to be removed), or None when
    there was none. Where the kernel can (Linux ``renameat2`` RENAME_EXCHANGE) the swap is one atomic step, so ``dest``
    never is missing; elsewhere the old folder is first renamed beside ``new``."""
    if not dest.exists():
        os.replace(new, dest)
        return None
    if _exchange(new, dest):
        return new
    old = new.with_name(new.name + "-old")
    os.replace(dest, old)
    os.replace(new, dest)
    return old


def _exchange(a: Path, b: Path) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
