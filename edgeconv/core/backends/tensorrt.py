"""TensorRT: a serialized engine on the GPU (JetPack), device memory through cuda-python; and the rule that says
whether an engine built on one device runs on another. See docs/architecture.md."""

import time

import numpy as np

from ..errors import MissingDependency
from .base import Backend, missing_inputs


def cuda_runtime():
    """cuda-python's runtime module (a maintained binding)."""
    try:
        from cuda.bindings import runtime as cudart
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart
        return cudart
    except ImportError:
        raise MissingDependency("cuda-python is not installed: pip install cuda-python (matching JetPack's CUDA)")


def _check(result):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError("CUDA error %s" % (err,))
    return result[1] if isinstance(result, tuple) and len(result) == 2 else result


def engine_mismatch(built, device):
    """Why an engine built on ``built`` cannot run on ``device`` (TensorRT version and compute capability must
    match), in plain words with the fix; None when it can."""
    problems = []
    if built.get("tensorrt") != device.get("tensorrt"):
        problems.append("TensorRT %s vs %s" % (built.get("tensorrt"), device.get("tensorrt")))
    if str(built.get("compute_capability")) != str(device.get("compute_capability")):
        problems.append("compute %s vs %s" % (built.get("compute_capability"), device.get("compute_capability")))
    if not problems:
        return None
    return ("built with TensorRT %s for compute %s; this device has %s / %s: run `edgeconv build BUNDLE` here"
            % (built.get("tensorrt"), built.get("compute_capability"), device.get("tensorrt"),
               device.get("compute_capability")))


class TensorRtBackend(Backend):
    """A serialized engine on the GPU. Name-based API (TensorRT 8.5+) where present, bindings otherwise
    (TensorRT 8.2, JetPack 4.6). Inputs are copied to the device in ``prepare``; ``run`` times the execution
    and synchronisation; outputs are copied back after the clock stops."""

    name = "tensorrt"
    accepted_options = ("built_on",)

    def __init__(self, path, threads=None, built_on=None):
        try:
            import tensorrt as trt
        except ImportError:
            raise MissingDependency("tensorrt not installed (needs an NVIDIA GPU/JetPack)")
        self.trt = trt
        self.cudart = cuda_runtime()
        prop = _check(self.cudart.cudaGetDeviceProperties(0))
        self.device = {"tensorrt": trt.__version__, "compute_capability": "%d.%d" % (prop.major, prop.minor)}
        if built_on:
            why = engine_mismatch(built_on, self.device)
            if why:
                raise MissingDependency(why)
        with open(str(path), "rb") as f:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise MissingDependency("TensorRT could not load %s (built for another device or version?)" % path)
        self.context = self.engine.create_execution_context()
        self.stream = _check(self.cudart.cudaStreamCreate())
        self.named = hasattr(self.engine, "num_io_tensors")
        rows = self._io_rows()
        self.inputs = [r for r in rows if r["input"]]
        self.outputs = [r for r in rows if not r["input"]]
        self.order = [r["name"] for r in rows]
        self.buffers = {}
        self.last_s = 0.0

    def _io_rows(self):
        trt, engine = self.trt, self.engine
        if self.named:
            names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
            is_input = [engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
            dtypes = [trt.nptype(engine.get_tensor_dtype(n)) for n in names]
            shapes = [list(engine.get_tensor_shape(n)) for n in names]
        else:
            names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
            is_input = [engine.binding_is_input(i) for i in range(engine.num_bindings)]
            dtypes = [trt.nptype(engine.get_binding_dtype(i)) for i in range(engine.num_bindings)]
            shapes = [list(engine.get_binding_shape(i)) for i in range(engine.num_bindings)]
        return [{"name": n, "dtype": np.dtype(d), "shape": [int(v) if v >= 0 else None for v in s], "input": i}
                for n, i, d, s in zip(names, is_input, dtypes, shapes)]

    def _alloc(self, name, nbytes):
        old = self.buffers.get(name)
        if old is not None and old[1] >= nbytes:
            return old[0]
        if old is not None:
            _check(self.cudart.cudaFree(old[0]))
        ptr = _check(self.cudart.cudaMalloc(max(nbytes, 1)))
        self.buffers[name] = (ptr, nbytes)
        return ptr

    def _shape(self, name):
        if self.named:
            return tuple(self.context.get_tensor_shape(name))
        return tuple(self.context.get_binding_shape(self.engine.get_binding_index(name)))

    def prepare(self, feed):
        missing_inputs(self.inputs, feed)
        cudart = self.cudart
        for e in self.inputs:
            x = np.asarray(feed[e["name"]], dtype=e["dtype"], order="C")
            if self.named:
                self.context.set_input_shape(e["name"], x.shape)
            else:
                self.context.set_binding_shape(self.engine.get_binding_index(e["name"]), x.shape)
            ptr = self._alloc(e["name"], x.nbytes)
            _check(cudart.cudaMemcpy(ptr, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
        hosts = []
        for e in self.outputs:
            host = np.empty(self._shape(e["name"]), dtype=e["dtype"])
            self._alloc(e["name"], host.nbytes)
            hosts.append(host)
        if self.named:
            for n in self.order:
                self.context.set_tensor_address(n, int(self.buffers[n][0]))
        return hosts

    def run(self, hosts):
        cudart = self.cudart
        t0 = time.perf_counter()
        if self.named:
            self.context.execute_async_v3(self.stream)
        else:
            self.context.execute_async_v2([int(self.buffers[n][0]) for n in self.order], self.stream)
        _check(cudart.cudaStreamSynchronize(self.stream))
        self.last_s = time.perf_counter() - t0
        outs = []
        for e, host in zip(self.outputs, hosts):
            _check(cudart.cudaMemcpy(host.ctypes.data, self.buffers[e["name"]][0], host.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
            outs.append(host.copy())
        return outs

    def info(self):
        return {"runtime": "tensorrt", "version": self.trt.__version__, "compute_capability": self.device["compute_capability"],
                "device": "GPU", "threads": "n/a", "precision": "as built (see manifest device_build)"}

    def close(self):
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers = {}
