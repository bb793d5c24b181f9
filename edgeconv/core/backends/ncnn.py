"""ncnn (CPU; Vulkan off), a .param/.bin pair as pnnx writes it (input blobs in0, in1 …): edgeconv's own ncnn runner is
this backend. ncnn has no batch axis: each sample is one extractor run, and a batch is their loop.

Its precision is set explicitly, never left to ncnn's per-CPU defaults (fp16 storage on x86 CPUs with AVX2; fp16
storage, packing *and arithmetic* on ARMv8.2 CPUs such as a Raspberry Pi 5 or an aarch64 board, which move fp32
results by ~1e-3): fp16 storage only when the runner options say so (a bundle pnnx wrote with fp16 weights), fp16
arithmetic only when asked, bf16 storage off. The same options give the same settings on the host and on a device, so
a device run means what a host run means; ``info()`` reports them. See docs/architecture.md."""

import os
import time

import numpy as np

from ..errors import ArtifactRefused, MissingDependency
from .base import Backend, missing_inputs


class NcnnBackend(Backend):
    """Tensors by the manifest's names (``tensor_names``: name -> blob; blobs named ``in…`` are the inputs), float32 in
    and out, one extractor run per sample; times the extractor runs."""

    name = "ncnn"
    accepted_options = ("tensor_names", "fp16_storage", "fp16_arithmetic", "bin_file")

    def __init__(self, path, threads=None, tensor_names=None, fp16_storage=False, fp16_arithmetic=False, bin_file=None):
        try:
            import ncnn
        except ImportError:
            raise MissingDependency("ncnn is not installed: pip install ncnn")
        self.ncnn, self.path = ncnn, str(path)
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_packed = bool(fp16_storage)
        opt.use_fp16_arithmetic = bool(fp16_arithmetic)
        opt.use_bf16_storage = False
        if threads:
            opt.num_threads = int(threads)
        folder, name = os.path.split(self.path)
        binary = os.path.join(folder, bin_file or name.replace(".param", ".bin"))
        if self.net.load_param(self.path) != 0 or self.net.load_model(binary) != 0:
            raise ArtifactRefused("ncnn cannot load %s / %s" % (self.path, os.path.basename(binary)))
        names = tensor_names or {}
        # ncnn keeps no shapes: the manifest's are the only ones
        self.inputs = [{"name": k, "blob": b, "shape": None, "dtype": np.dtype("float32")}
                       for k, b in names.items() if b.startswith("in")]
        self.outputs = [{"name": k, "blob": b, "shape": None, "dtype": np.dtype("float32")}
                        for k, b in names.items() if not b.startswith("in")]
        self.last_s = 0.0

    def fixed_batch(self):
        return None  # any batch: one extractor run per sample

    def prepare(self, feed):
        missing_inputs(self.inputs, feed)
        n = len(feed[self.inputs[0]["name"]]) if self.inputs else 0
        return [[(e["blob"], self.ncnn.Mat(np.ascontiguousarray(feed[e["name"]][i], dtype=np.float32))) for e in self.inputs]
                for i in range(n)]

    def run(self, prepared):
        outs = [[] for _ in self.outputs]
        elapsed = 0.0
        for sample in prepared:
            t0 = time.perf_counter()
            ex = self.net.create_extractor()
            for blob, mat in sample:
                ex.input(blob, mat)
            got = []
            for e in self.outputs:
                ret, mat = ex.extract(e["blob"])
                if ret != 0:
                    raise ArtifactRefused("ncnn could not compute blob %s (error %s)" % (e["blob"], ret))
                got.append(mat)
            elapsed += time.perf_counter() - t0
            for j, mat in enumerate(got):
                outs[j].append(np.array(mat))
        self.last_s = elapsed
        return [np.stack(o) for o in outs]

    def info(self):
        o = self.net.opt
        return {"runtime": "ncnn", "version": getattr(self.ncnn, "__version__", None), "device": "CPU (Vulkan off)",
                "threads": o.num_threads, "precision": "fp16 storage %s, fp16 arithmetic %s" % (
                    "on" if o.use_fp16_storage else "off", "on" if o.use_fp16_arithmetic else "off")}
