"""Rockchip RKNN: a ``.rknn`` on the board's NPU through RKNNLite, or on a host the RKNN simulator's recorded outputs.

On the board (aarch64 with ``rknn-toolkit-lite2``), :class:`RknnRunner` runs the ``.rknn`` on the NPU through the
core's RknnBackend (RKNNLite; edgeconv/core/backends/rknn.py), the device runner's code. Anywhere else nothing can run
a ``.rknn``: rknn-toolkit2's simulator runs a model only in the process that built it. So the build job
(edgeconv/toolchains/jobs/rknn_job.py) runs the simulator on the samples it is given and stays up while ``convert``
checks the artifact; every output it computes is stored beside the artifact (``rknn/simulator.npz`` +
``simulator.json``), keyed by the artifact's sha256 and each sample's sha256. On the host this runner answers a sample
from that store only when both hashes match, or from the live build job during ``convert``; a sample the simulator
never saw is refused, never guessed (docs/architecture.md, "NPU toolchains").
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.atomic import write_bytes_atomic, write_text_atomic
from edgeconv.core.backends.rknn import STORE_DIR, STORE_INDEX, RknnBackend
from edgeconv.errors import ArtifactRefused, MissingDependency
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec, sha256_of

STORE_ARRAYS = "simulator.npz"
SIM_TIMEOUT_S = 1800
SIM_LABEL = "host emulation on the RKNN simulator, not the NPU"


def sample_keys(feed: dict[str, np.ndarray], names: list[str]) -> list[str]:
    """One sha256 per sample of ``feed`` (all inputs, in ``names``' order, as float32 C arrays with their shapes)."""
    n = len(feed[names[0]])
    keys = []
    for i in range(n):
        h = hashlib.sha256()
        for name in names:
            a = np.ascontiguousarray(np.asarray(feed[name][i], dtype=np.float32))
            h.update(f"{name}:{a.shape}".encode())
            h.update(a.tobytes())
        keys.append(h.hexdigest())
    return keys


def store_paths(artifact: Path) -> tuple[Path, Path]:
    folder = artifact.parent / STORE_DIR
    return folder / STORE_INDEX, folder / STORE_ARRAYS


def read_store(artifact: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The store's index and its output rows; an index made from another artifact (hash) is refused."""
    index_path, arrays_path = store_paths(artifact)
    if not index_path.exists():
        raise ArtifactRefused(f"{artifact.name}: no RKNN simulator record beside it ({index_path.relative_to(artifact.parent)})")
    index = json.loads(index_path.read_text())
    if index.get("artifact_sha256") != sha256_of(artifact):
        raise ArtifactRefused(f"{index_path} records the simulator's outputs of another {artifact.name} (sha256 "
                              f"{str(index.get('artifact_sha256'))[:12]}…): they cannot stand for this one")
    with np.load(arrays_path) as f:
        rows = [f[f"out{j}"] for j in range(len(index["outputs"]))]
    return index, rows


def write_store(artifact: Path, index: dict[str, Any], rows: list[np.ndarray]) -> None:
    index_path, arrays_path = store_paths(artifact)
    index_path.parent.mkdir(exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **{f"out{j}": r for j, r in enumerate(rows)})
    write_bytes_atomic(arrays_path, buf.getvalue())
    write_text_atomic(index_path, json.dumps(index, indent=1) + "\n")


def add_to_store(artifact: Path, index: dict[str, Any], rows: list[np.ndarray], keys: list[str],
                 outputs: list[np.ndarray]) -> list[np.ndarray]:
    """New samples' outputs appended (known keys are kept as they are); returns the rows now stored."""
    samples = index["samples"]
    fresh = [i for i, k in enumerate(keys) if k not in samples]
    for i in fresh:
        samples[keys[i]] = len(samples)
    if fresh:
        rows = [np.concatenate([r, o[fresh]]) if len(r) else o[fresh] for r, o in zip(rows, outputs, strict=True)]
        write_store(artifact, index, rows)
    return rows


def on_board() -> bool:
    import importlib.util

    return platform.machine() in ("aarch64", "arm64") and importlib.util.find_spec("rknnlite") is not None


class RknnRunner(Runner):
    runtime = "rknn"
    accepted_options = RknnBackend.accepted_options

    def load(self) -> None:
        self.backend = RknnBackend(self.artifact, self.threads, **self.options) if on_board() else None
        if self.backend is not None:  # the board: the device runner's backend, RKNNLite on the NPU
            self.inputs = [TensorSpec(e["name"], e["shape"], "float32", e["layout"]) for e in self.backend.inputs]
            self.outputs = [TensorSpec(e["name"], e["shape"], "float32") for e in self.backend.outputs]
            return
        self.index, self.rows = read_store(self.artifact)
        self.names = [s["name"] for s in self.index["inputs"]]
        self.inputs = [TensorSpec.from_dict(s) for s in self.index["inputs"]]
        self.outputs = [TensorSpec.from_dict(s) for s in self.index["outputs"]]
        for spec in self.inputs + self.outputs:  # the store answers any number of samples at a time; the board runs one
            spec.shape = [None, *spec.shape[1:]]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        return self.backend.prepare(feed) if self.backend is not None else super().prepare(feed)

    def run(self, prepared: Any) -> list[np.ndarray]:
        if self.backend is not None:
            out = self.backend.run(prepared)
            self.last_s = self.backend.last_s
            return out
        return self._recorded(prepared)

    def _recorded(self, prepared: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The simulator's outputs for these samples: from the store, or (during convert) from the build job."""
        from edgeconv import toolchains

        keys = sample_keys(prepared, self.names)
        missing = [k for k in dict.fromkeys(keys) if k not in self.index["samples"]]
        if missing:
            server = toolchains.serving(str(self.artifact.resolve()))
            if server is None:
                raise MissingDependency(
                    f"the RKNN simulator never ran {len(missing)} of these {len(keys)} samples on {self.artifact.name}: it "
                    f"runs a model only in the process that built it, and this bundle records its outputs for "
                    f"{len(self.index['samples'])} samples only ({', '.join(self.index.get('made_for') or [])})",
                    hint="convert again with --data FILE (its samples are simulated while building), or validate on the "
                         "board (RKNNLite)")
            self.rows = add_to_store(self.artifact, self.index, self.rows, keys, simulate(server, prepared))
        self.last_s = float(self.index.get("sim_seconds") or 0.0) * len(keys)
        at = [self.index["samples"][k] for k in keys]
        return [r[at] for r in self.rows]

    def info(self) -> dict[str, Any]:
        if self.backend is not None:
            return self.backend.info()
        return {"runtime": "rknn", "version": self.index.get("toolkit_version"), "device": SIM_LABEL, "threads": None,
                "precision": self.index.get("precision"),
                "note": "outputs recorded from rknn-toolkit2's simulator in the job that built this artifact (same sha256, "
                        "same samples); latency figures are the simulator's time on this host, not the NPU's"}

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def simulate(server, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Samples through the live build job's simulator (edgeconv/toolchains/jobs/rknn_job.py)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()})
    answer = server.call(buf.getvalue(), timeout=SIM_TIMEOUT_S)
    with np.load(io.BytesIO(answer)) as f:
        return [f[k] for k in sorted((k for k in f.files if k.startswith("out")), key=lambda k: int(k[3:]))]
