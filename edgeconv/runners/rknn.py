"""Rockchip RKNN: a ``.rknn`` on the board's NPU through RKNNLite, or on a host the RKNN simulator's recorded outputs.

On the board (aarch64 with ``rknn-toolkit-lite2``), :class:`RknnRunner` loads the ``.rknn`` with RKNNLite and runs it
on the NPU. Anywhere else nothing can run a ``.rknn``: rknn-toolkit2's simulator runs a model only in the process that
built it. So the build job (edgeconv/toolchains/jobs/rknn_job.py) runs the simulator on the samples it is given and
stays up while ``convert`` checks the artifact; every output it computes is stored beside the artifact
(``rknn/simulator.npz`` + ``simulator.json``), keyed by the artifact's sha256 and each sample's sha256. On the host
this runner answers a sample from that store only when both hashes match, or from the live build job during
``convert``; a sample the simulator never saw is refused, never guessed (docs/architecture.md, "NPU toolchains").
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.atomic import write_bytes_atomic, write_text_atomic
from edgeconv.errors import ArtifactRefused, MissingDependency
from edgeconv.lazy import version_of
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec, sha256_of

STORE_DIR = "rknn"
STORE_INDEX = "simulator.json"
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
    accepted_options = ("core_mask",)

    def load(self) -> None:
        index, self.rows = read_store(self.artifact) if not on_board() else (_board_index(self.artifact), [])
        self.index = index
        self.names = [s["name"] for s in index["inputs"]]
        self.inputs = [TensorSpec.from_dict(s) for s in index["inputs"]]
        self.outputs = [TensorSpec.from_dict(s) for s in index["outputs"]]
        self.lite = None
        if on_board():
            self._open_lite()
        else:  # the store answers any number of samples at a time; the board runs one
            for spec in self.inputs + self.outputs:
                spec.shape = [None, *spec.shape[1:]]

    def _open_lite(self) -> None:
        from rknnlite.api import RKNNLite

        self.lite = RKNNLite(verbose=False)
        if self.lite.load_rknn(str(self.artifact)) != 0:
            raise ArtifactRefused(f"RKNNLite could not load {self.artifact.name}")
        mask = getattr(RKNNLite, f"NPU_CORE_{self.options.get('core_mask', 'AUTO')}".upper(), None)
        if (self.lite.init_runtime() if mask is None else self.lite.init_runtime(core_mask=mask)) != 0:
            raise MissingDependency("RKNNLite could not start the NPU runtime (librknnrt.so and the rknpu driver)")

    def run(self, prepared: Any) -> list[np.ndarray]:
        if self.lite is not None:
            formats = ["nchw" if len(s.shape) == 4 else None for s in self.inputs]
            start = time.perf_counter()
            outs = self.lite.inference(inputs=[prepared[n] for n in self.names],
                                       data_format=formats if any(formats) else None)
            self.last_s = time.perf_counter() - start
            return [np.asarray(o) for o in outs]
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
        if self.lite is not None:
            return {"runtime": "rknn", "version": version_of("rknn-toolkit-lite2"), "device": "NPU (RKNNLite)",
                    "threads": None, "precision": self.index.get("precision")}
        return {"runtime": "rknn", "version": self.index.get("toolkit_version"), "device": SIM_LABEL, "threads": None,
                "precision": self.index.get("precision"),
                "note": "outputs recorded from rknn-toolkit2's simulator in the job that built this artifact (same sha256, "
                        "same samples); latency figures are the simulator's time on this host, not the NPU's"}

    def close(self) -> None:
        if self.lite is not None:
            self.lite.release()
            self.lite = None


def simulate(server, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Samples through the live build job's simulator (edgeconv/toolchains/jobs/rknn_job.py)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()})
    answer = server.call(buf.getvalue(), timeout=SIM_TIMEOUT_S)
    with np.load(io.BytesIO(answer)) as f:
        return [f[k] for k in sorted((k for k in f.files if k.startswith("out")), key=lambda k: int(k[3:]))]


def _board_index(artifact: Path) -> dict[str, Any]:
    """On the board: the I/O the store recorded (the .rknn's own, as the build saw it), without its outputs."""
    index_path, _ = store_paths(artifact)
    if not index_path.exists():
        raise ArtifactRefused(f"{artifact.name}: {index_path.name} (its inputs and outputs) is missing beside it")
    return json.loads(index_path.read_text())
