"""The default executor: ``--jobs N`` cells at once on this machine, each cell's commands in child processes (a warm
worker per job thread by default, ``sweep/worker.py``; or a fresh process per command), the export cache shared
between the cells of a model, and one device measuring one thing at a time."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from edgeconv.atomic import locked
from edgeconv.sweep.cell import allow_commands, run_cell, stop_all
from edgeconv.sweep.plan import Cell
from edgeconv.sweep.results import slug
from edgeconv.sweep.worker import RECYCLE, WarmWorkers


def device_lock(name: str) -> contextlib.AbstractContextManager:
    """An exclusive lock on the device ``name`` for this machine's processes and threads alike (an ``flock`` on a
    file of its own: separate opens exclude each other), so two sweeps never measure on one board at once."""
    folder = Path(tempfile.gettempdir()) / "edgeconv-devices"
    folder.mkdir(exist_ok=True)
    return locked(folder / f"{slug(name)}.lock")


class LocalPool:
    def __init__(self, run_dir: Path, jobs: int, *, timeout: float, keep_bundles: bool, cache: bool = True,
                 warm: bool = True, recycle: int = RECYCLE) -> None:
        self.run_dir, self.jobs, self.timeout, self.keep = run_dir, max(1, jobs), timeout, keep_bundles
        self.cache_dir = run_dir / ".export-cache" if cache else None
        self.warm, self.recycle = warm, recycle

    def _one(self, cell: Cell, workers: WarmWorkers | None) -> dict[str, Any]:
        work = self.run_dir / "cells" / slug(cell.cell_id)
        lock = device_lock(cell.device.name) if cell.device else None
        with workers.take() if workers is not None else contextlib.nullcontext() as worker:
            rec = run_cell(cell.to_dict(), cell.files, work, cache_dir=self.cache_dir, timeout=self.timeout,
                           device_lock=lock, command=worker.command if worker is not None else None)
        if not self.keep:
            shutil.rmtree(work / "bundle", ignore_errors=True)
        else:
            rec["bundle"] = str((work / "bundle").relative_to(self.run_dir))
        return rec

    def run(self, cells: list[Cell]) -> Iterator[dict[str, Any]]:
        """Each cell's record as it finishes; an interrupt cancels the cells not started and stops the running ones
        (``stop_all`` kills the commands' process groups and the warm workers, and any a cell starts after it)."""
        allow_commands()
        workers = WarmWorkers(self.recycle) if self.warm else None
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="sweep")
        futures: set[Future] = {pool.submit(self._one, c, workers) for c in cells}
        try:
            while futures:
                done, futures = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in futures:
                f.cancel()
            if futures:  # left early (an interrupt): stop the running commands rather than wait for them
                stop_all()
            pool.shutdown(wait=True, cancel_futures=True)
            if workers is not None:
                workers.close()
