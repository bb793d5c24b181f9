"""ncnn runner (CPU; Vulkan off). ncnn has no batch axis: each sample is one extractor run, and a batch is
their loop. fp16 storage/arithmetic are set explicitly and reported — ncnn turns fp16 storage on by default
on AVX2 CPUs, which moves fp32 results by ~1e-3."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgeconv.errors import ArtifactRefused
from edgeconv.lazy import require, version_of
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


class NcnnRunner(Runner):
    runtime = "ncnn"
    accepted_options = ("tensor_names", "fp16_storage", "fp16_arithmetic", "bin_file")

    def load(self) -> None:
        ncnn = require("ncnn", why="to run ncnn models (pip install ncnn)")
        self._ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_vulkan_compute = False
        storage = bool(self.options.get("fp16_storage", False))
        opt.use_fp16_storage = opt.use_fp16_packed = storage
        opt.use_fp16_arithmetic = bool(self.options.get("fp16_arithmetic", False))
        opt.use_bf16_storage = False
        if self.threads:
            opt.num_threads = int(self.threads)
        binary = self.artifact.with_name(self.options.get("bin_file", self.artifact.name.replace(".param", ".bin")))
        if self.net.load_param(str(self.artifact)) != 0 or self.net.load_model(str(binary)) != 0:
            raise ArtifactRefused(f"ncnn cannot load {self.artifact} / {binary.name}")
        names = self.options.get("tensor_names") or {}
        blobs_in = [b for b in names.values() if b.startswith("in")]
        self._in = [(k, v) for k, v in names.items() if v in blobs_in]
        self._out = [(k, v) for k, v in names.items() if v not in blobs_in]
        self.inputs = [TensorSpec(k, [1], "float32") for k, _ in self._in]
        self.outputs = [TensorSpec(k, [], "float32") for k, _ in self._out]

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        n = len(next(iter(feed.values())))
        return [[(blob, self._ncnn.Mat(np.ascontiguousarray(feed[name][i], dtype=np.float32))) for name, blob in self._in]
                for i in range(n)]

    def run(self, prepared: Any) -> list[np.ndarray]:
        outs: list[list[np.ndarray]] = [[] for _ in self._out]
        elapsed = 0.0
        for sample in prepared:
            t0 = time.perf_counter()
            ex = self.net.create_extractor()
            for blob, mat in sample:
                ex.input(blob, mat)
            got = []
            for _, blob in self._out:
                ret, mat = ex.extract(blob)
                if ret != 0:
                    raise ArtifactRefused(f"ncnn could not compute blob {blob} (error {ret})")
                got.append(mat)
            elapsed += time.perf_counter() - t0
            for j, mat in enumerate(got):
                outs[j].append(np.array(mat))
        self.last_s = elapsed
        return [np.stack(o) for o in outs]

    def fixed_batch(self) -> int | None:
        return None  # any batch: one extractor run per sample

    def info(self) -> dict[str, Any]:
        o = self.net.opt
        return {"runtime": "ncnn", "version": version_of("ncnn"), "device": "CPU (Vulkan off)", "threads": o.num_threads,
                "precision": f"fp16 storage {'on' if o.use_fp16_storage else 'off'}, fp16 arithmetic "
                             f"{'on' if o.use_fp16_arithmetic else 'off'}"}
