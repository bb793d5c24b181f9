"""``--ray ADDRESS``: each cell is a Ray task on an existing cluster (``auto``: the one running here), with its CPU and
memory declared, retried on another node when its node dies. The cell's files travel through Ray's object store, so
workers need no shared disk; results stream back to the driver, which alone writes results.json.

Devices are Ray custom resources of capacity 1 (``ray start --resources='{"edgeconv_device_board": 1}'`` on one
node): a device cell asks for one unit, so two cells never measure on one board at once, whichever nodes run them.
Ray is the ``edgeconv[ray]`` extra and is imported only here."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeconv.errors import BadInput, MissingDependency
from edgeconv.sweep.plan import Cell
from edgeconv.sweep.results import slug

RETRIES = 3  # a cell whose node dies runs again elsewhere, up to this many times


def resource_name(device: str) -> str:
    return f"edgeconv_device_{slug(device)}"


def _ray():
    try:
        import ray
    except ImportError:
        raise MissingDependency("--ray needs Ray: pip install 'edgeconv[ray]'") from None
    return ray


def _cell_task(cell: dict[str, Any], files: dict[str, tuple[str, Any, bool]], timeout: float, keep: bool) -> dict[str, Any]:
    """On a Ray worker: the cell's files from the object store into a folder of its own, the cell, its record."""
    import ray

    from edgeconv.sweep.cell import run_cell

    work = Path(tempfile.mkdtemp(prefix="edgeconv-sweep-"))
    try:
        local = {}
        for role, (name, ref, folder) in files.items():
            (work / role).mkdir()
            local[role] = str(work / role / name)
            _unpack(ray.get(ref), Path(local[role]), folder)
        cache = Path(tempfile.gettempdir()) / "edgeconv-sweep-cache"  # verified entries: safe to share between runs
        rec = run_cell(cell, local, work / "cell", cache_dir=cache, timeout=timeout)
        rec["node"] = f"{rec['node']} (ray node {ray.get_runtime_context().get_node_id()[:12]})"
        rec["logs"] = {p.stem: p.read_text(errors="replace")[-20000:] for p in (work / "cell").glob("*.log")}
        if keep and (work / "cell" / "bundle").is_dir():
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                tar.add(work / "cell" / "bundle", arcname="bundle")
            rec["bundle_tar"] = buf.getvalue()
        return rec
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pack(path: Path) -> bytes:
    """A file's bytes, or a folder (a SavedModel) as a tar archive."""
    if not path.is_dir():
        return path.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(path, arcname=".")
    return buf.getvalue()


def _unpack(blob: bytes, dest: Path, folder: bool) -> None:
    if not folder:
        dest.write_bytes(blob)
        return
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


class RayPool:
    def __init__(self, run_dir: Path, address: str, *, timeout: float, keep_bundles: bool, cpus: float = 1.0,
                 memory_mb: float = 2048.0) -> None:
        self.run_dir, self.address, self.timeout, self.keep = run_dir, address, timeout, keep_bundles
        self.cpus, self.memory = cpus, int(memory_mb * 1024 * 1024)

    def _connect(self, cells: list[Cell]):
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False,
                     runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3"}})
        have = ray.cluster_resources()
        for name in sorted({c.device.name for c in cells if c.device}):
            res = resource_name(name)
            total = have.get(res)
            if total != 1:
                raise BadInput(f"device {name!r}: the Ray cluster has {total or 0:g} of resource {res!r}; declare it with "
                               f"capacity 1 on one node: ray start … --resources='{{\"{res}\": 1}}'")
        return ray

    def _submit(self, ray, task, cell: Cell, refs: dict[str, Any]):
        opts: dict[str, Any] = {"num_cpus": self.cpus, "memory": self.memory, "max_retries": RETRIES}
        if cell.device:
            opts["resources"] = {resource_name(cell.device.name): 1}
        files = {role: (Path(p).name, refs[p], Path(p).is_dir()) for role, p in cell.files.items()}
        return task.options(**opts).remote(cell.to_dict(), files, self.timeout, self.keep)

    def run(self, cells: list[Cell]) -> Iterator[dict[str, Any]]:
        ray = self._connect(cells)
        task = ray.remote(_cell_task)
        refs = {p: ray.put(_pack(Path(p))) for c in cells for p in c.files.values()}
        pending = {self._submit(ray, task, c, refs): c for c in cells}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                yield self._received(ray, ready[0], cell)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def _received(self, ray, ref, cell: Cell) -> dict[str, Any]:
        """The task's record; a task Ray gave up on (its retries spent) is a 'lost' cell with Ray's reason."""
        from edgeconv.core.text import first_line

        try:
            rec = ray.get(ref)
        except (ray.exceptions.RayError, OSError) as exc:
            return {"cell_id": cell.cell_id, "key": cell.key, "model": cell.model_name, "target": cell.target,
                    "device": cell.device.name if cell.device else None, "precision": cell.precision,
                    "requested_precision": cell.precision, "status": "lost", "stages": {},
                    "stage": "ray", "exit_code": None, "reason": first_line(f"{type(exc).__name__}: {exc}")}
        work = self.run_dir / "cells" / slug(cell.cell_id)
        work.mkdir(parents=True, exist_ok=True)
        for name, text in rec.pop("logs", {}).items():
            (work / f"{name}.log").write_text(text)
        blob = rec.pop("bundle_tar", None)
        if blob is not None:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
                tar.extractall(work, filter="data")
            rec["bundle"] = str((work / "bundle").relative_to(self.run_dir))
        return rec
