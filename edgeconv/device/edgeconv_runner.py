#!/usr/bin/env python3
"""edgeconv device runner: run an edgeconv bundle on the device with only numpy and the device's runtime.

    python3 edgeconv_runner.py [BUNDLE_DIR] --request request.json [--json]
    python3 edgeconv_runner.py [BUNDLE_DIR] [--runs 100] [--warmup 10] [--threads N] [--data test.npz] [--json]
    python3 edgeconv_runner.py [BUNDLE_DIR] --batch-sizes 1,2,4,8 [--min-time S] [--runs 50] [--json]
    python3 edgeconv_runner.py [BUNDLE_DIR] --layers [--batch-sizes 1] [--runs 50] [--json]

This file is the one implementation of what a validate or profile run *is*: the request (budgets, tolerances,
runtime options, data, runs), the artifact choice, the parity rule, the latency statistics, accuracy, budgets,
the verdict and the report. ``edgeconv validate`` runs :func:`execute` in-process with its own runners;
``edgeconv validate --remote`` sends the same request with the bundle and this file (or edgeconv, where the
device has it) runs the same :func:`execute` there, so a budget missed on a device fails exactly as it does on
the desk (Apache TVM's one ``run_module`` for local and RPC sessions).

Exit codes: 0 the checks and budgets hold · 1 a check or budget was missed · 2 the request cannot be honoured
here (an option this runner or runtime does not take, bad data) · 3 the runtime or device is missing, or the
artifact was built for another device. With ``--json`` an error is also one JSON document on stdout.

Written for Python 3.6 (JetPack 4.6) and 3.7 (Coral Dev Board): no dataclasses, no walrus, no
``from __future__ import annotations``; a test parses it with feature_version=(3, 6). edgeconv itself imports
the backends (ONNX Runtime, LiteRT, TensorRT), the parity rule, the statistics and :func:`execute` from here.
"""

import argparse
import contextlib
import hashlib
import json
import os
import platform
import socket
import sys
import time

import numpy as np

EXIT_OK, EXIT_CHECK, EXIT_BAD_REQUEST, EXIT_MISSING = 0, 1, 2, 3
REQUEST_SCHEMA = 1


class RunnerError(Exception):
    """A reason this run cannot go on, with the exit code that says which kind."""

    exit_code = EXIT_BAD_REQUEST

    def __init__(self, message, hint=None):
        Exception.__init__(self, message)
        self.message = message
        self.hint = hint


class BadRequest(RunnerError):
    """The request cannot be honoured here: an option the runtime does not take, bad data (exit 2)."""

    exit_code = EXIT_BAD_REQUEST


class ArtifactRejected(BadRequest):
    """The runtime refuses this model file (damaged, an op or a delegate it cannot run): exit 2 here; a converter
    that has just written the file reports it as its own failure."""


class MissingRuntime(RunnerError):
    """The runtime, device or a compatible build is not here (exit 3)."""

    exit_code = EXIT_MISSING


class Backend(object):
    """One runtime: ``inputs``/``outputs`` (name, shape, dtype), ``prepare(feed)`` once, ``run(prepared)`` timed into
    ``last_s``, ``info()``; edgeconv's runners have the same shape (``prepare``, ``run``, ``last_s``)."""

    inputs = []

    def fixed_batch(self):
        """The batch every call must have, or None when the first axis is dynamic."""
        shape = self.inputs[0]["shape"] if self.inputs else None
        return shape[0] if shape else None

    def close(self):
        pass


def inverse_perm(perm):
    return [int(i) for i in np.argsort(perm)]


def check_options(runtime, accepted, options):
    """Refuse, never ignore, a runtime option this runtime does not take."""
    unknown = sorted(set(k for k, v in options.items() if v is not None) - set(accepted))
    if unknown:
        names = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise BadRequest("%s does not apply to the %s runner%s" % (
            names, runtime, " (it takes %s)" % ", ".join(accepted) if accepted else ""))


# -- LiteRT / TFLite (and the Edge TPU through its delegate) -------------------------------------------------
def tflite_interpreter_module():
    """ai-edge-litert where it exists, else tflite_runtime (Coral, older boards), else TensorFlow."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return __import__(name, fromlist=["Interpreter"])
        except ImportError:
            pass
    try:
        import tensorflow as tf
        return tf.lite
    except ImportError:
        raise MissingRuntime("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)")


class LiteRtBackend(Backend):
    """Tensors by the manifest's names, in the source layout, float in and out (quantized tensors are
    quantized/dequantized with their own scale and zero point). Times ``invoke()``."""

    name = "litert"
    accepted_options = ("tensor_names", "permutations", "io_layout", "delegate")

    def __init__(self, path, threads=None, tensor_names=None, permutations=None, io_layout="source", delegate=None):
        if io_layout not in ("source", "artifact"):
            raise BadRequest("--io-layout must be source or artifact, not %r" % (io_layout,))
        mod = tflite_interpreter_module()
        delegates = []
        if delegate:
            try:
                delegates = [mod.load_delegate(delegate)]
            except (ValueError, OSError) as exc:
                raise MissingRuntime("cannot load the delegate %s: %s" % (delegate, exc))
        kwargs = {"model_path": str(path), "num_threads": threads}
        if delegates:
            kwargs["experimental_delegates"] = delegates
        try:
            self.interp = mod.Interpreter(**kwargs)
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # a damaged model, or a kernel/delegate that refuses an op
            raise ArtifactRejected("LiteRT cannot load %s: %s" % (path, exc))
        self.delegate = delegate
        self.io_layout = io_layout
        sig = self.interp.get_signature_runner()
        details = {}
        for kind, table in (("in", sig.get_input_details()), ("out", sig.get_output_details())):
            for key, d in table.items():
                details[key] = dict(d, kind=kind)
        names = tensor_names or dict((k, k) for k in details)
        perms = permutations or {}
        self.inputs, self.outputs = [], []
        for public, sig_name in names.items():
            d = details[sig_name]
            perm = perms.get(public) if io_layout == "source" else None
            shape = [int(x) for x in d["shape"]]
            public_shape = shape if perm is None else [shape[i] for i in inverse_perm(perm)]
            scale, zero = float(d["quantization"][0]), int(d["quantization"][1])
            entry = {"name": public, "index": int(d["index"]), "dtype": np.dtype(d["dtype"]), "perm": perm,
                     "shape": public_shape, "scale": scale, "zero": zero}
            (self.inputs if d["kind"] == "in" else self.outputs).append(entry)
        self.last_s = 0.0

    def prepare(self, feed):
        missing_inputs(self.inputs, feed)
        prepared = []
        for e in self.inputs:
            x = np.asarray(feed[e["name"]])
            if e["perm"] is not None:
                x = x.transpose(e["perm"])
            if e["scale"]:
                info = np.iinfo(e["dtype"])
                x = np.clip(np.round(x / e["scale"] + e["zero"]), info.min, info.max)
            x = np.ascontiguousarray(x, dtype=e["dtype"])
            current = [int(v) for v in self.interp.get_tensor_details()[e["index"]]["shape"]]
            if list(x.shape) != current:
                self.interp.resize_tensor_input(e["index"], list(x.shape))
                self.interp.allocate_tensors()
            prepared.append((e["index"], x))
        return prepared

    def run(self, prepared):
        for index, x in prepared:
            self.interp.set_tensor(index, x)
        t0 = time.perf_counter()
        self.interp.invoke()
        self.last_s = time.perf_counter() - t0
        outs = []
        for e in self.outputs:
            y = self.interp.get_tensor(e["index"])
            if e["scale"]:
                y = (y.astype(np.float32) - e["zero"]) * e["scale"]
            if e["perm"] is not None:
                y = y.transpose(inverse_perm(e["perm"]))
            outs.append(np.array(y, copy=True))
        return outs

    def info(self):
        info = {"runtime": "litert", "delegate": self.delegate or "XNNPACK (default CPU)", "io_layout": self.io_layout}
        package = sys.modules.get(type(self.interp).__module__.split(".")[0])
        if getattr(package, "__version__", None):
            info["version"] = package.__version__  # ai_edge_litert / tflite_runtime / tensorflow
        return info


# -- TensorRT ------------------------------------------------------------------------------------------------
# -- TensorRT ------------------------------------------------------------------------------------------------
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
        raise MissingRuntime("cuda-python is not installed: pip install cuda-python (matching JetPack's CUDA)")


def _check(result):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError("CUDA error %s" % (err,))
    return result[1] if isinstance(result, tuple) and len(result) == 2 else result


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
            raise MissingRuntime("tensorrt not installed (needs an NVIDIA GPU/JetPack)")
        self.trt = trt
        self.cudart = cudart = cuda_runtime()
        prop = _check(cudart.cudaGetDeviceProperties(0))
        self.device = {"tensorrt": trt.__version__, "compute_capability": "%d.%d" % (prop.major, prop.minor)}
        if built_on:
            why = engine_mismatch(built_on, self.device)
            if why:
                raise MissingRuntime(why)
        logger = trt.Logger(trt.Logger.WARNING)
        with open(str(path), "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise MissingRuntime("TensorRT could not load %s (built for another device or version?)" % path)
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self.named = hasattr(self.engine, "num_io_tensors")
        if self.named:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
            dtypes = [trt.nptype(self.engine.get_tensor_dtype(n)) for n in names]
            shapes = [list(self.engine.get_tensor_shape(n)) for n in names]
        else:
            names = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]
            is_input = [self.engine.binding_is_input(i) for i in range(self.engine.num_bindings)]
            dtypes = [trt.nptype(self.engine.get_binding_dtype(i)) for i in range(self.engine.num_bindings)]
            shapes = [list(self.engine.get_binding_shape(i)) for i in range(self.engine.num_bindings)]
        rows = zip(names, is_input, dtypes, shapes)
        rows = [{"name": n, "dtype": np.dtype(d), "shape": [int(v) if v >= 0 else None for v in s], "input": i} for n, i, d, s in rows]
        self.inputs = [r for r in rows if r["input"]]
        self.outputs = [r for r in rows if not r["input"]]
        self.order = names
        self.buffers = {}
        self.last_s = 0.0

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
            x = np.ascontiguousarray(feed[e["name"]], dtype=e["dtype"])
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
        return {"runtime": "tensorrt", "version": self.trt.__version__, "compute_capability": self.device["compute_capability"]}

    def close(self):
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers = {}


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


# -- ONNX Runtime -----------------------------------------------------------------------------------------
# -- ONNX Runtime (edgeconv's own ONNX Runtime runner is this backend) ------------------------------------------
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class OnnxRuntimeBackend(Backend):
    """An ONNX model on ONNX Runtime (CPU execution provider unless ``providers`` says otherwise); times ``run``."""

    name = "onnxruntime"
    accepted_options = ("providers",)

    def __init__(self, path, threads=None, providers=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingRuntime("onnxruntime is not installed: pip install onnxruntime")
        self.ort, self.path, self.providers = ort, str(path), providers or ["CPUExecutionProvider"]
        so = self._session_options(threads)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as exc:  # a damaged or unsupported model: ONNX Runtime's own words
            raise ArtifactRejected("ONNX Runtime cannot load %s: %s" % (path, exc))
        self.inputs = [self._entry(a) for a in self.session.get_inputs()]
        self.outputs = [self._entry(a) for a in self.session.get_outputs()]
        self.output_names = [o["name"] for o in self.outputs]
        self.version = ort.__version__
        self.threads = threads
        self.last_s = 0.0

    def _session_options(self, threads):
        so = self.ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return so

    def layer_profiler(self, feed):
        """ONNX Runtime's own profiler on ``feed``: a second session with the same options plus ``enable_profiling``
        (:class:`OrtLayerProfiler`)."""
        return OrtLayerProfiler(self, feed)

    @staticmethod
    def _entry(arg):
        dtype = ORT_DTYPES.get(arg.type)
        shape = [d if isinstance(d, int) else None for d in arg.shape]
        return {"name": arg.name, "shape": shape, "dtype": np.dtype(dtype) if dtype else None, "type": dtype or arg.type}

    def prepare(self, feed):
        missing_inputs(self.inputs, feed)
        return dict((e["name"], np.ascontiguousarray(feed[e["name"]], dtype=e["dtype"])) for e in self.inputs)

    def run(self, prepared):
        t0 = time.perf_counter()
        out = self.session.run(self.output_names, prepared)
        self.last_s = time.perf_counter() - t0
        return out

    def info(self):
        so = self.session.get_session_options()
        return {"runtime": "onnxruntime", "version": self.version, "providers": self.session.get_providers(), "device": "CPU",
                "threads": so.intra_op_num_threads or "default (one per physical core)", "precision": "as stored in the graph"}


class OrtLayerProfiler(object):
    """Per-node kernel times from ONNX Runtime's profiler. ``run(n, keep)`` runs the profiling session n times (kept
    runs are timed and counted, the others are warm-up); ``finish()`` ends profiling, parses its JSON trace with
    :func:`ort_trace_layers` (session creation and initialisation are not counted) and deletes it. ``close()`` ends
    profiling and deletes the trace whatever happened (``execute_layers`` calls it in ``finally``); so does a failed
    ``__init__``, which leaves nothing behind."""

    def __init__(self, backend, feed):
        import tempfile

        so = backend._session_options(backend.threads)
        so.enable_profiling = True
        self.tmp = tempfile.mkdtemp(prefix="edgeconv-ort-profile-")
        so.profile_file_prefix = os.path.join(self.tmp, "ort")
        self.session = None
        try:
            try:
                self.session = backend.ort.InferenceSession(backend.path, so, providers=backend.providers)
            except Exception as exc:  # ONNX Runtime's own words, as when the backend opened the model
                raise ArtifactRejected("ONNX Runtime cannot load %s with profiling on: %s" % (backend.path, exc))
            self.names = backend.output_names
            self.prepared = backend.prepare(feed)
        except BaseException:
            self.close()
            raise
        self.keep, self.wall = [], []

    def run(self, n, keep):
        for _ in range(n):
            t0 = time.perf_counter()
            self.session.run(self.names, self.prepared)
            elapsed = time.perf_counter() - t0
            self.keep.append(keep)
            if keep:
                self.wall.append(elapsed)

    def close(self):
        """Profiling ended and its directory, trace included, deleted: no trace left behind on the device. Idempotent."""
        import shutil

        session, self.session = self.session, None
        if session is not None:
            try:  # ends profiling, so that the session, when it goes, writes no trace of its own
                session.end_profiling()
            except Exception:  # already failing or already ended: the directory goes all the same
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def finish(self):
        session, self.session = self.session, None
        try:
            with open(session.end_profiling()) as f:
                events = json.load(f)
        finally:
            self.close()
        per_run, meta = ort_trace_layers(events, self.keep)
        return {"wall_s": self.wall, "runs": per_run, "layers": meta, "not_executed": 0,
                "profiler": "ONNX Runtime SessionOptions.enable_profiling: per-node kernel times (cat Node, *_kernel_time) "
                            "of each timed run, from its JSON trace; fence, session and initialisation events not counted"}


def missing_inputs(entries, feed):
    missing = [e["name"] for e in entries if e["name"] not in feed]
    if missing:
        raise BadRequest("no data for input(s) %s; the model's inputs are %s" % (missing, [e["name"] for e in entries]))


# -- which artifact, on which backend, with which options (the one choice, here and on the device) -------------
BACKENDS = {"onnxruntime": OnnxRuntimeBackend, "litert": LiteRtBackend, "tensorrt": TensorRtBackend}
EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def _has_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _has_edgetpu():
    import ctypes

    try:
        ctypes.CDLL(EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1"))
        return True
    except OSError:
        return False


def artifact_to_run(manifest, has_module=_has_module, has_edgetpu=_has_edgetpu):
    """The artifact this machine runs and its runner options: a TensorRT engine where TensorRT is installed, the
    Edge TPU model where the Edge TPU library is, else the bundle's main model."""
    arts = manifest["artifacts"]
    for art in arts:
        if art["role"] == "engine" and art.get("runner") == "tensorrt" and has_module("tensorrt"):
            return art, dict(art.get("runner_options") or {})
    for art in arts:
        if art["role"] == "edgetpu-model" and has_edgetpu():
            return art, dict(art.get("runner_options") or {}, delegate=EDGETPU_LIBRARY[platform.system()])
    art = [a for a in arts if a["role"] == "model"][0]
    return art, dict(art.get("runner_options") or {})


def runner_options(art, options, request):
    """The artifact's runner options with the request's on top (``--device``, ``--io-layout`` …)."""
    layout = request.get("io_layout", "source")
    if layout not in ("source", "nhwc"):
        raise BadRequest("--io-layout must be source or nhwc, not %r" % (layout,))
    out = dict(options)
    if layout == "nhwc":
        if art["runner"] != "litert":
            raise BadRequest("--io-layout nhwc applies to TFLite artifacts; %s takes the source layout" % art["file"])
        out["io_layout"] = "artifact"
    for k, v in (request.get("runner_options") or {}).items():
        if v is not None:
            out[k] = v
    return out


def open_backend(bundle_dir, art, options, threads=None):
    """This file's backend for ``art`` (edgeconv has more: OpenVINO, ncnn, ExecuTorch)."""
    cls = BACKENDS.get(art["runner"])
    if cls is None:
        raise MissingRuntime("this device runner has no backend for %r: install edgeconv with its %s extra on the device "
                             "(pip install 'edgeconv[%s]') and run again" % (art["runner"], art["runner"], art["runner"]))
    check_options(art["runner"], cls.accepted_options, options)
    kwargs = dict((k, v) for k, v in options.items() if v is not None)
    return cls(os.path.join(bundle_dir, art["file"]), threads=threads, **kwargs)


def run_batched(backend, feed, batch, chunk=64):
    """``feed`` through the backend in slices of the model's fixed batch (or ``chunk`` when it is dynamic)."""
    n = len(next(iter(feed.values())))
    if batch and n % batch:
        raise BadRequest("%d samples do not split into batches of %d (the model's fixed batch)" % (n, batch))
    step = batch or chunk
    parts = []
    for i in range(0, n, step):
        parts.append(backend.run(backend.prepare(dict((k, v[i:i + step]) for k, v in feed.items()))))
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


# -- parity: every output, per-output tolerances, one cosine rule --------------------------------------------
def tolerance_of(d):
    """``{atol, min_cosine, max_rel}`` from a profile or manifest, defaults filled."""
    atol, max_rel = d.get("atol"), d.get("max_rel")
    return {"atol": None if atol is None else float(atol), "min_cosine": float(d.get("min_cosine", 0.999)),
            "max_rel": None if max_rel is None else float(max_rel)}


def tolerance_for(name, default, overrides):
    """The output's own ``atol`` override, else the every-output one (key None, "None" or "*"), else the default."""
    overrides = overrides or {}
    for key in (name, None, "None", "*"):
        if key in overrides:
            return dict(default, atol=float(overrides[key]), atol_scaled=False)  # what the user asked: absolute
    return default


def check_output(name, ref, got, tol):
    """One output against its reference: shape, finiteness, max abs/rel error, cosine. A zero output against a
    non-zero reference (or the reverse) has cosine 0; two zero outputs agree (cosine 1).

    A profile's ``atol`` holds at unit scale: float error grows with magnitude, so an output whose reference
    reaches beyond 1 in absolute value is allowed ``atol`` times that magnitude (``allowed_abs``). An ``--atol``
    override is absolute, as given."""
    ref, got = np.asarray(ref), np.asarray(got)
    row = {"name": name, "expected_shape": list(ref.shape), "actual_shape": list(got.shape), "max_abs": None, "max_rel": None,
           "cosine": None, "atol": tol["atol"], "allowed_abs": tol["atol"], "min_cosine": tol["min_cosine"], "ok": False,
           "reason": "", "allowed_rel": tol["max_rel"]}
    if ref.shape != got.shape:
        row["reason"] = "shape differs"
        return row
    r, g = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    if not np.all(np.isfinite(g)) and np.all(np.isfinite(r)):
        row["reason"] = "artifact output has NaN/Inf"
        return row
    diff = np.abs(r - g)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r).max()) if r.size else 0.0
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    nr, ng = np.linalg.norm(r), np.linalg.norm(g)
    cosine = float(r.dot(g) / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if nr == ng else 0.0)
    reasons = []
    allowed = tol["atol"]
    if allowed is not None and tol.get("atol_scaled", True) and scale > 1.0:
        allowed = allowed * scale
    row["allowed_abs"] = allowed
    if allowed is not None and max_abs > allowed:
        reasons.append("max abs %.3e > %.1e" % (max_abs, allowed))
    if tol["max_rel"] is not None and max_rel > tol["max_rel"]:
        reasons.append("max rel %.3e > %.1e" % (max_rel, tol["max_rel"]))
    if cosine < tol["min_cosine"]:
        reasons.append("cosine %.6f < %s" % (cosine, tol["min_cosine"]))
    row.update(max_abs=max_abs, max_rel=max_rel, cosine=cosine, ok=not reasons, reason="; ".join(reasons))
    return row


def compare_outputs(label, names, expected, actual, default, overrides=None):
    """The parity report: ``{label, ok, samples, outputs: [one row per output]}``; every output is checked."""
    samples = int(expected[0].shape[0]) if expected and np.ndim(expected[0]) else 1
    if len(expected) != len(actual):
        row = {"name": "(outputs)", "expected_shape": [len(expected)], "actual_shape": [len(actual)], "max_abs": None,
               "max_rel": None, "cosine": None, "atol": default["atol"], "allowed_abs": default["atol"],
               "min_cosine": default["min_cosine"], "ok": False,
               "reason": "%d outputs where %d were expected" % (len(actual), len(expected)), "allowed_rel": None}
        return {"label": label, "ok": False, "samples": samples, "outputs": [row]}
    rows = [check_output(n, r, g, tolerance_for(n, default, overrides)) for n, r, g in zip(names, expected, actual)]
    return {"label": label, "ok": all(r["ok"] for r in rows), "samples": samples, "outputs": rows}


# -- latency: one method and one throughput definition everywhere ---------------------------------------------
LATENCY_METHOD = "runtime call only, inputs prepared once, time.perf_counter; throughput = batch / median latency"


def summarize_latency(seconds, batch=1):
    """p50 (the median)/p90/p99/mean/std/min/max in milliseconds; throughput in items per second from the median,
    so one slow run cannot move it."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50 = float(np.median(ms))
    p90, p99 = np.percentile(ms, [90, 99])
    return {"runs": int(ms.size), "p50_ms": p50, "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "throughput_items_s": float(batch * 1e3 / p50) if p50 > 0 else None}


def time_backend(backend, feed, warmup, runs):
    """Per-inference seconds as the backend measured them around the runtime call (inputs prepared once)."""
    prepared = backend.prepare(feed)
    for _ in range(warmup):
        backend.run(prepared)
    out = []
    for _ in range(runs):
        backend.run(prepared)
        out.append(backend.last_s)
    return out


def cold_start(make_backend, feed):
    """Load + first inference of a fresh backend, in milliseconds."""
    t0 = time.perf_counter()
    backend = make_backend()
    t1 = time.perf_counter()
    backend.run(backend.prepare(feed))
    t2 = time.perf_counter()
    backend.close()
    return {"load_ms": (t1 - t0) * 1e3, "first_inference_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}


def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tile(ref, n):
    """The reference items repeated to n."""
    out = {}
    for k, v in ref.items():
        reps = -(-n // len(v))
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:n])
    return out


def agreement(batched, singles, atol):
    """Outputs of one batch against the same items run one at a time."""
    max_abs = max(float(np.abs(b.astype(np.float64) - s.astype(np.float64)).max()) if b.size else 0.0 for b, s in zip(batched, singles))
    top1 = [float((b.argmax(-1) == s.argmax(-1)).mean()) for b, s in zip(batched, singles) if b.ndim >= 2 and b.shape[-1] > 1]
    agree = min(top1) if top1 else None
    diverges = (atol is not None and max_abs > atol) or (agree is not None and agree < 1.0)
    return {"max_abs_vs_batch1": max_abs, "top1_agreement_vs_batch1": agree, "diverges": bool(diverges)}


def sweep(prepare, run, last_s, ref, sizes, runs, warmup, min_time_s=None, atol=None, can_single=True):
    """One row per batch size: latency percentiles of the runtime call, per-item time, throughput (from the median),
    RSS delta (peak, sampled after the first and every warm-up run and after the timed runs, minus RSS before the
    batch size's first run: reading /proc between timed runs would slow the next one) and agreement with
    batch-1 outputs. ``prepare(feed)``, ``run(prepared) -> outputs`` and ``last_s()`` are the runtime's."""
    items = tile(ref, max(sizes))
    singles = [run(prepare(dict((k, v[i:i + 1]) for k, v in items.items()))) for i in range(max(sizes))] if can_single else None
    rows = []
    for b in sizes:
        row = {"batch": b}
        base = rss_bytes()  # before this batch size's buffers and workspaces exist
        try:
            prepared = prepare(dict((k, v[:b]) for k, v in items.items()))
            outs = run(prepared)
        except Exception as exc:  # the runtime refuses this batch (a graph with the batch baked in)
            row["error"] = "%s: %s" % (type(exc).__name__, (str(exc).splitlines() or [""])[0][:200])
            rows.append(row)
            continue
        peak = rss_bytes()
        for _ in range(warmup):
            run(prepared)
            peak = max(peak, rss_bytes())
        samples = []
        t_end = time.perf_counter() + (min_time_s or 0)
        while len(samples) < runs or time.perf_counter() < t_end:  # nothing but the runtime between timed runs
            run(prepared)
            samples.append(last_s())
        peak = max(peak, rss_bytes())
        lat = summarize_latency(samples, b)
        for k in ("runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput_items_s"):
            row[k] = lat[k]
        row["per_item_ms"] = lat["p50_ms"] / b
        row["rss_delta_mb"] = (peak - base) / 2.0 ** 20
        if singles is not None:
            row.update(agreement(outs, [np.concatenate([s[j] for s in singles[:b]]) for j in range(len(outs))], atol))
        rows.append(row)
    return rows


SWEEP_METHOD = ("runtime call only (validate's timing); throughput and per-item time from the median latency; RSS delta: "
                "peak (sampled after each warm-up run and after the timed runs) minus RSS before the batch size's first run")


# -- accuracy -----------------------------------------------------------------------------------------------
def classifier_output(outputs):
    """Index of the first output that looks like class scores: shape (N, C) with C > 1."""
    for i, o in enumerate(outputs):
        if o.ndim == 2 and o.shape[1] > 1:
            return i
    return None


def topk_accuracy(scores, y):
    """Top-1 (and top-5 where there are 5 classes or more) of class scores against integer labels."""
    if scores.shape[1] <= int(y.max()):
        raise BadRequest("labels go up to %d but the model has %d classes" % (int(y.max()), scores.shape[1]))
    order = np.argsort(-scores, axis=1)
    out = {"top1": float((order[:, 0] == y).mean())}
    if scores.shape[1] >= 5:
        out["top5"] = float((order[:, :5] == y[:, None]).any(axis=1).mean())
    return out


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_labelled(path, names):
    """Inputs (by input name, or ``x`` for a one-input model) and labels ``y`` from an .npz; an .npy is ``x``."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadRequest("%s is not a readable .npy/.npz file: %s" % (path, exc))
    arrays = {"x": loaded} if isinstance(loaded, np.ndarray) else dict((k, loaded[k]) for k in loaded.files)
    feed = {}
    for n in names:
        key = n if n in arrays else ("x" if len(names) == 1 and "x" in arrays else None)
        if key is None:
            raise BadRequest("%s has arrays %s; expected %s" % (path, sorted(arrays), ", ".join(repr(v) for v in names)))
        feed[n] = arrays[key]
    return feed, arrays.get("y")


def source_accuracy(manifest, record, request):
    """The source model's accuracy on this data: measured at validate time (``--source``, sent in the request),
    else the one recorded at convert time when it was measured on the same file (same sha256)."""
    if request.get("source_accuracy"):
        return request["source_accuracy"]
    recorded = manifest.get("source_accuracy")
    if recorded and recorded.get("sha256") == record["sha256"]:
        return dict(recorded, measured_with="%s (recorded at convert time)" % recorded.get("measured_with"))
    return None


# -- the request ----------------------------------------------------------------------------------------------
REQUEST_DEFAULTS = {
    "schema": REQUEST_SCHEMA,
    "command": "validate",  # or "profile"
    "runs": 100, "warmup": 10, "threads": None,
    "max_latency_ms": None,  # budget: p50 latency
    "max_accuracy_drop": None,  # budget: top-1 points below the source
    "atol": {},  # max abs error per output name ("*": every output), over the manifest's tolerances
    "runner_options": {},  # runtime options: device, inference_precision, performance_hint (OpenVINO) …
    "io_layout": "source",  # "nhwc": the data is in the TFLite artifact's own layout
    "data": None,  # {"file": where to read it (relative: to the request file), "path": its name for the report, "sha256"}
    "source_accuracy": None,  # measured on the host with --source, sent along
    "source_predictions": None,  # unlabelled --data with --source: the source's top-1 class per item, from the host
    "where": "host",  # "device" when it runs on a device for a host
    "batch_sizes": None, "min_time_s": None, "budget_ms": None,  # profile
    "layers": False,  # profile: per-layer times from the runtime's own profiler (one batch size) instead of the sweep
    "outputs_file": None,  # validate: save the artifact's outputs here (a .npz file: reference:NAME, data:NAME; relative: to
    # the request file, as data's) to compare machines
}


def complete_request(request):
    """The request with every field, checked: an unknown field or schema is refused, not ignored."""
    unknown = sorted(set(request) - set(REQUEST_DEFAULTS))
    if unknown:
        raise BadRequest("the request has fields this runner does not know: %s (a newer edgeconv made it: convert the "
                         "bundle again so it carries a matching runner)" % ", ".join(unknown))
    out = dict(REQUEST_DEFAULTS)
    out.update(request)
    if out["schema"] != REQUEST_SCHEMA:
        raise BadRequest("request schema %r; this runner reads schema %d" % (out["schema"], REQUEST_SCHEMA))
    if out["command"] not in ("validate", "profile"):
        raise BadRequest("request command %r: this runner runs validate and profile" % (out["command"],))
    if int(out["runs"]) < 1 or int(out["warmup"]) < 0:
        raise BadRequest("--runs must be >= 1 and --warmup >= 0")
    if out["max_accuracy_drop"] is not None and out["data"] is None:
        raise BadRequest("--max-accuracy-drop needs --data (a labelled .npz)")
    if out["outputs_file"] is not None and not str(out["outputs_file"]).endswith(".npz"):
        # numpy.savez would append .npz itself, and the file would not be where the request says
        raise BadRequest("outputs_file %r must end in .npz" % (out["outputs_file"],))
    if out["layers"]:
        if out["command"] != "profile":
            raise BadRequest("layers is a profile request's option, not %s's" % out["command"])
        given = [flag for k, flag in (("min_time_s", "--min-time"), ("budget_ms", "--budget-ms")) if out[k] is not None]
        if len(out["batch_sizes"] or [1]) != 1:
            given.append("several --batch-sizes")
        if given:
            raise BadRequest("--layers profiles one batch size with --runs and --warmup; it does not take %s" % ", ".join(given))
    return out


def reference(bundle_dir, manifest, art, io_layout):
    """reference.npz's inputs and outputs; with io_layout nhwc brought into the artifact's own layout."""
    with np.load(os.path.join(bundle_dir, "reference.npz")) as z:
        ref_in = dict((s["name"], z["input:" + s["name"]]) for s in manifest["inputs"])
        ref_out = [z["output:" + s["name"]] for s in manifest["outputs"]]
    if io_layout == "nhwc":
        perms = (art.get("runner_options") or {}).get("permutations") or {}
        ref_in = dict((k, v.transpose(perms[k]) if perms.get(k) else v) for k, v in ref_in.items())
        ref_out = [v.transpose(perms[s["name"]]) if perms.get(s["name"]) else v for s, v in zip(manifest["outputs"], ref_out)]
    return ref_in, ref_out


@contextlib.contextmanager
def _no_step(label):
    yield


EMULATED_LABEL = "emulated on this host (qemu), not device timing"
ISA_FAMILY = {"x86_64": "x86", "amd64": "x86", "i386": "x86", "i686": "x86", "aarch64": "arm", "arm64": "arm",
              "armv7l": "arm", "armv8l": "arm", "armv6l": "arm"}  # a 64-bit kernel runs its 32-bit sibling natively


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpuinfo_family(text):
    """The instruction-set family of the CPU /proc/cpuinfo describes ("x86", "arm"), or None when it does not say."""
    keys = set(line.split(":", 1)[0].strip() for line in (text or "").splitlines() if ":" in line)
    if "vendor_id" in keys and "flags" in keys:
        return "x86"
    if "CPU implementer" in keys or "CPU architecture" in keys:
        return "arm"
    return None


def emulation(machine=None, read=_read):
    """Evidence, read on this machine, that this process runs under a user-mode emulator (qemu-user through binfmt): the
    kernel's own architecture, or the CPU /proc/cpuinfo describes, is of another instruction set than this process;
    or a qemu binfmt handler for this process's own architecture is registered. None on a real board.

    What qemu-user 7.2 (Debian bookworm) shows an aarch64 process in a chroot on an x86-64 host: ``platform.machine()``
    and ``uname -m`` say aarch64 (qemu rewrites uname), /proc/sys/kernel/arch says x86_64 (the kernel's), /proc/cpuinfo is
    the host's (vendor_id, flags); the auxv/hwcaps are the emulated CPU's, so they prove nothing; binfmt_misc is not
    mounted inside the chroot. A real Raspberry Pi says aarch64 everywhere and its cpuinfo has "CPU implementer"."""
    machine = machine or platform.machine()
    mine = ISA_FAMILY.get(machine, machine)
    evidence = []
    kernel = (read("/proc/sys/kernel/arch") or "").strip()
    if kernel and ISA_FAMILY.get(kernel, kernel) != mine:
        evidence.append("the kernel is %s (/proc/sys/kernel/arch) but this process is %s" % (kernel, machine))
    cpu = cpuinfo_family(read("/proc/cpuinfo"))
    if cpu and cpu != mine:
        evidence.append("/proc/cpuinfo describes an %s CPU but this process is %s" % (cpu, machine))
    handler = read("/proc/sys/fs/binfmt_misc/qemu-%s" % machine)
    if handler and handler.startswith("enabled"):
        evidence.append("qemu's binfmt handler for %s is registered here (/proc/sys/fs/binfmt_misc/qemu-%s)" % (machine, machine))
    if not evidence:
        return None
    return {"label": EMULATED_LABEL, "emulator": "qemu-user (binfmt)", "evidence": evidence}


def distribution(read=_read):
    """The OS distribution's name (/etc/os-release PRETTY_NAME), or None."""
    for line in (read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def measured_on(art, backend, where):
    """Where and on what the numbers were measured. Under emulation the kind is :data:`EMULATED_LABEL`, whatever the
    request said, with the evidence (see :func:`emulation`)."""
    mo = {"host": socket.gethostname(), "machine": platform.machine(), "platform": platform.platform(),
          "distribution": distribution(), "python": platform.python_version(), "numpy": np.__version__,
          "kind": "host emulation, not device" if art.get("host_emulation") else where}
    mo.update(backend.info())
    if art.get("host_emulation"):
        mo["note"] = art.get("host_emulation_note")
    emulated = emulation()
    if emulated:
        mo["kind"] = emulated["label"]
        mo["emulation"] = emulated
    return mo


def execute(request, bundle_dir, manifest, art, backend, data=None, reopen=None, step=None):
    """Run a complete validate request on an open backend and return the report.

    ``backend``: ``prepare(feed)``, ``run(prepared) -> outputs``, ``last_s``, ``info()``, ``fixed_batch()``
    (and ``async_throughput(feed)`` where the runtime has one). ``data``: ``(feed, labels, record)`` with
    ``record = {path, sha256, count}``. ``reopen()``: a fresh backend, for the cold-start figure. ``step(label)``:
    a context manager announcing each step."""
    step = step or _no_step
    m = manifest
    report = {
        "bundle": str(bundle_dir), "target": m["target"]["profile"], "precision": m["precision"], "artifact": art["file"],
        "runner": art["runner"], "measured_on": measured_on(art, backend, request["where"]), "checks": [], "budgets": [],
        "calibration": m.get("calibration"), "io_layout": request["io_layout"],
    }
    batch = backend.fixed_batch()
    ref_in, ref_out = reference(bundle_dir, m, art, request["io_layout"])
    with step("Parity against reference.npz"):
        overrides = dict(m["tolerances"].get("overrides") or {})
        overrides.update(request["atol"] or {})
        actual = run_batched(backend, ref_in, batch)
        parity = compare_outputs("%s (%s) vs %s reference" % (art["file"], art["runner"], m["source"]["framework"]),
                                 [s["name"] for s in m["outputs"]], ref_out, actual,
                                 tolerance_of(m["tolerances"].get(m["precision"]) or {}), overrides)
        report["parity"] = parity
        report["checks"].append({"name": "parity", "ok": parity["ok"]})
        outputs = dict(("reference:" + s["name"], a) for s, a in zip(m["outputs"], actual))
    if data is not None:
        feed, labels, record = data
        if labels is None:
            if request["max_accuracy_drop"] is not None:
                raise BadRequest("--max-accuracy-drop needs labels: %s has no 'y' (save it with numpy.savez(path, x=..., y=...))"
                                 % record["path"])
            with step("Outputs on %s (no labels)" % os.path.basename(record["path"])):
                data_out = run_batched(backend, feed, batch)
                outputs.update(("data:" + s["name"], a) for s, a in zip(m["outputs"], data_out))
                report["outputs_on_data"] = outputs_on_data(data_out, record, request)
                report["checks"].append({"name": "finite outputs", "ok": report["outputs_on_data"]["finite"]})
    if data is not None and data[1] is not None:
        feed, labels, record = data
        with step("Accuracy on %s" % os.path.basename(record["path"])):
            out = run_batched(backend, feed, batch)
            outputs.update(("data:" + s["name"], a) for s, a in zip(m["outputs"], out))
            idx = classifier_output(out)
            if idx is None:
                raise BadRequest("--data needs a classifier output of shape (N, classes); this model has none")
            acc = {"artifact": topk_accuracy(out[idx], labels), "data": record}
            src = source_accuracy(m, record, request)
            acc["source"] = src
            acc["drop_points"] = None if src is None else (src["top1"] - acc["artifact"]["top1"]) * 100
            report["accuracy"] = acc
            if request["max_accuracy_drop"] is not None:
                if src is None:
                    raise BadRequest("--max-accuracy-drop needs the source model's accuracy on this data: pass --source MODEL, "
                                     "or convert with --data on the same file")
                report["budgets"].append({"name": "max_accuracy_drop_points", "limit": request["max_accuracy_drop"],
                                          "value": acc["drop_points"], "ok": acc["drop_points"] <= request["max_accuracy_drop"]})
    lat_batch = batch or 1
    one = dict((k, v[:lat_batch]) for k, v in ref_in.items())
    with step("Latency: %d warm-up + %d timed runs, batch %d" % (request["warmup"], request["runs"], lat_batch)):
        lat = summarize_latency(time_backend(backend, one, request["warmup"], request["runs"]), lat_batch)
        lat.update({"batch": lat_batch, "warmup": request["warmup"], "method": LATENCY_METHOD,
                    "measured": report["measured_on"]["kind"]})  # under emulation: EMULATED_LABEL
        report["latency"] = lat
    if hasattr(backend, "async_throughput"):
        with step("Throughput (async queue)"):
            tput = backend.async_throughput(one)
            if tput:
                report["throughput_async"] = tput
    if reopen is not None:
        with step("Cold start (load + first inference)"):
            report["cold_start"] = cold_start(reopen, one)
    if request["max_latency_ms"] is not None:
        report["budgets"].append({"name": "max_latency_ms_p50", "limit": request["max_latency_ms"], "value": lat["p50_ms"],
                                  "ok": lat["p50_ms"] <= request["max_latency_ms"]})
    report["ok"] = bool(all(c["ok"] for c in report["checks"]) and all(b["ok"] for b in report["budgets"]))
    report["request"] = request
    if request.get("outputs_file"):
        np.savez(request["outputs_file"], **outputs)
        report["outputs_file"] = request["outputs_file"]
    return report


def compare_machines(here, there):
    """The same artifact's outputs from two machines (``outputs_file`` contents: ``{"reference:NAME" or "data:NAME":
    array}``) compared on the data set where both ran it, else on reference.npz's inputs: per output the max abs
    difference and, for class scores (N, C), how often the top-1 class agrees."""
    kind = "data" if any(k.startswith("data:") for k in here) and any(k.startswith("data:") for k in there) else "reference"
    names = sorted(k for k in here if k.startswith(kind + ":") and k in there)
    rows = []
    for key in names:
        a, b = np.asarray(here[key]).astype(np.float64), np.asarray(there[key]).astype(np.float64)
        row = {"name": key.split(":", 1)[1], "shape": list(a.shape), "max_abs": None, "top1_agreement": None}
        if a.shape != b.shape:
            row["reason"] = "shape differs: %s vs %s" % (list(a.shape), list(b.shape))
        else:
            row["max_abs"] = float(np.abs(a - b).max()) if a.size else 0.0
            if a.ndim == 2 and a.shape[1] > 1:
                row["top1_agreement"] = float((a.argmax(1) == b.argmax(1)).mean())
                row["top1_disagreements"] = int((a.argmax(1) != b.argmax(1)).sum())
        rows.append(row)
    diffs = [r["max_abs"] for r in rows if r["max_abs"] is not None]
    agree = [r["top1_agreement"] for r in rows if r["top1_agreement"] is not None]
    return {"compared_on": kind, "samples": int(np.shape(here[names[0]])[0]) if names and np.ndim(here[names[0]]) else 0,
            "outputs": rows, "max_abs": max(diffs) if diffs else None, "top1_agreement": min(agree) if agree else None}


def outputs_on_data(out, record, request):
    """Unlabelled --data: the artifact on every item. Outputs must be finite; with class scores, how often the
    top-1 class agrees with the source's (``--source``: its predictions were computed on the host and sent)."""
    res = {"data": record, "finite": bool(all(np.isfinite(o).all() for o in out if o.dtype.kind == "f")),
           "note": "no labels: accuracy not measured"}
    idx = classifier_output(out)
    src = request.get("source_predictions")
    if idx is not None:
        top1 = out[idx].argmax(1)
        res["classes_predicted"] = int(len(np.unique(top1)))
        if src is not None:
            if len(src) != len(top1):
                raise BadRequest("the source's predictions cover %d items, the data has %d" % (len(src), len(top1)))
            res["top1_agreement"] = float((np.asarray(src) == top1).mean())
            res["note"] = "no labels: top-1 agreement with the source instead of accuracy"
    return res


def execute_profile(request, bundle_dir, manifest, art, backend, step=None):
    """A profile request's sweep on an open backend: the rows, and a note where the batch is fixed. The knee and the
    best batch under the budget are worked out by edgeconv's profile, wherever the rows were measured. A request with
    ``layers`` is a per-layer profile instead (:func:`execute_layers`)."""
    step = step or _no_step
    if request.get("layers"):
        return execute_layers(request, bundle_dir, manifest, art, backend, step)
    fixed = backend.fixed_batch()
    resizable = fixed is None or (art["runner"] == "litert" and not getattr(backend, "delegate", None))
    sizes = sorted(set(int(b) for b in (request["batch_sizes"] or [fixed or 1])))
    notes = []
    if not resizable and any(b != fixed for b in sizes):
        notes.append("the artifact has a fixed batch of %d, so only batch %d is profiled" % (fixed, fixed))
        sizes = [fixed]
    ref_in, _ = reference(bundle_dir, manifest, art, "source")
    tol = manifest["tolerances"].get(manifest["precision"]) or {}
    with step("Profiling batch sizes %s on %s" % (", ".join(map(str, sizes)), art["runner"])):
        rows = sweep(backend.prepare, backend.run, lambda: backend.last_s, ref_in, sizes, request["runs"], request["warmup"],
                     request["min_time_s"], tolerance_of(tol)["atol"], can_single=resizable or fixed == 1)
    return {"artifact": art["file"], "measured_on": measured_on(art, backend, request["where"]),
            "sweep": {"rows": rows, "notes": notes, "method": SWEEP_METHOD}, "request": request}


# -- per-layer times: the runtime's own profiler --------------------------------------------------------------
# Where a runtime gives no per-layer times, the reason (and where such times can be had instead).
NO_LAYER_PROFILER = {
    "litert": "LiteRT's Python interpreter exposes no per-op times (its op profiler is in the C++ benchmark_model tool: "
              "benchmark_model --graph=model.tflite --enable_op_profiling=true)",
    "tensorrt": "per-layer times from TensorRT's IProfiler are not wired into edgeconv's TensorRT runner yet (on the Jetson, "
                "trtexec --loadEngine=model.engine --dumpProfile --separateProfileRun gives them)",
    "ncnn": "edgeconv's ncnn runner has no per-layer timing (ncnn's benchncnn times whole models only)",
    "executorch": "edgeconv's ExecuTorch runner has no per-operator timing (ExecuTorch's ETDump/Inspector is not wired in)",
}
LAYERS_WORK_ON = "ONNX Runtime (onnx, jetson host emulation) and OpenVINO bundles"


class NoLayerProfiler(BadRequest):
    """The runtime gives no per-layer times (exit 2): --layers cannot be honoured for this bundle here."""


def ort_trace_layers(events, keep=0):
    """ONNX Runtime's profiling trace (the JSON list ``enable_profiling`` writes) as per-run kernel times.

    ``keep``: one flag per ``model_run`` in order (False: a warm-up run, not counted), or a number of leading warm-up runs.
    Returns ``(runs, layers)``: ``runs`` one ``{node name: seconds}`` per kept ``model_run`` event, ``layers``
    ``{node name: {"op", "exec_type", "order"}}``. A node event (``cat`` "Node", name ``<node>_kernel_time``) counts for
    the ``model_run`` whose span holds its start; fence events, session loading and initialisation are not counted. A node
    that runs more than once in one run (inside a loop) adds up."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    kernels = sorted((e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")),
                     key=lambda e: e["ts"])
    if not isinstance(keep, list):
        keep = [i >= keep for i in range(len(runs))]
    if len(keep) != len(runs):
        raise BadRequest("ONNX Runtime's profile has %d runs where %d were made" % (len(runs), len(keep)))
    per_run, layers = [], {}
    k = 0
    for i, r in enumerate(runs):
        start, end = r["ts"], r["ts"] + r["dur"]
        times = {}
        while k < len(kernels) and kernels[k]["ts"] < start:
            k += 1
        while k < len(kernels) and kernels[k]["ts"] <= end:
            e = kernels[k]
            k += 1
            if not keep[i]:
                continue
            name = e["name"][:-len("_kernel_time")]
            args = e.get("args") or {}
            if name not in layers:
                layers[name] = {"op": args.get("op_name"), "exec_type": args.get("provider"), "order": len(layers)}
            times[name] = times.get(name, 0.0) + e["dur"] * 1e-6
        if keep[i]:
            per_run.append(times)
    return per_run, layers


def summarize_layers(prof, e2e):
    """The per-layer table from a layer profiler's ``finish()`` and the end-to-end latency (measured without the profiler).

    ``prof``: ``{"runs": [{layer: seconds} per timed run], "layers": {layer: {op, exec_type, order}}, "wall_s": [seconds
    of each profiled run], "not_executed", "profiler"}``. Rows sorted by p50, slowest first: p50/mean/min/max in ms over
    the runs (0 in a run the layer did not run in; ``runs``: how many it ran in) and the share of the sum of the p50s. ``sum_ms`` (that sum) against ``end_to_end.p50_ms`` says how much of
    the runtime call the layers account for; ``profiled`` is the end-to-end time of the profiled runs themselves, so the
    profiler's own overhead shows too."""
    rows = []
    for name, meta in prof["layers"].items():
        # a layer the runtime skipped in some runs (OpenVINO: status NOT_RUN that time) took no time in those runs
        ms = np.asarray([r.get(name, 0.0) for r in prof["runs"]], dtype=np.float64) * 1e3
        if not ms.size:
            continue
        rows.append({"name": name, "op": meta.get("op"), "exec_type": meta.get("exec_type"), "order": meta.get("order"),
                     "runs": sum(1 for r in prof["runs"] if name in r), "p50_ms": round(float(np.median(ms)), 6), "mean_ms": round(float(ms.mean()), 6),
                     "min_ms": round(float(ms.min()), 6), "max_ms": round(float(ms.max()), 6)})
    total = sum(r["p50_ms"] for r in rows)
    for r in rows:
        r["share"] = r["p50_ms"] / total if total > 0 else 0.0
    rows.sort(key=lambda r: (-r["p50_ms"], r["order"]))
    per_run_sums = [sum(r.values()) * 1e3 for r in prof["runs"]]
    profiled = summarize_latency(prof["wall_s"]) if prof["wall_s"] else None
    # one inference's node times cannot add up to more than its wall time (a microsecond of timer rounding per node
    # allowed); where they do, the runtime's counters are not a breakdown of that run (seen: OpenVINO 2026.4's brgemm
    # FullyConnected reporting 4x the whole inference on a busy 2-core machine)
    over = [(s, w * 1e3, r) for s, w, r in zip(per_run_sums, prof["wall_s"], prof["runs"]) if s > w * 1e3 + 1e-3 * len(r)]
    over_wall = {"runs": len(over), "of": len(per_run_sums)}
    if over:
        worst = max(over, key=lambda o: o[0] / o[1])
        over_wall.update({"worst_ratio": worst[0] / worst[1],
                          "worst_layer": max(worst[2], key=worst[2].get) if worst[2] else None})
    return {
        "statistic": "p50", "rows": rows, "count": len(rows), "not_executed": prof.get("not_executed", 0),
        "sum_ms": total, "per_run_sum_p50_ms": float(np.median(per_run_sums)) if per_run_sums else None,
        "counters_over_wall": over_wall,
        "end_to_end": e2e, "profiled": profiled,
        "sum_vs_end_to_end": total / e2e["p50_ms"] if e2e["p50_ms"] else None,
        "profiler_overhead": profiled["p50_ms"] / e2e["p50_ms"] - 1.0 if profiled and e2e["p50_ms"] else None,
        "profiler": prof["profiler"],
    }


LAYER_ROUNDS = 10  # blocks of each kind, alternating, so that drift on a shared machine lands on both
LAYERS_METHOD = ("end-to-end: the runtime call timed as validate times it, with the profiler off; per-layer: the same "
                 "number of runs with the runtime's own profiler on (a second session or compiled model with the same "
                 "options); after the warm-up of each, the timed runs alternate between the two in %d blocks (order "
                 "alternating, one untimed run opening each block); per layer the p50 over its timed runs; share = p50 / "
                 "sum of the layers' p50s" % LAYER_ROUNDS)


def execute_layers(request, bundle_dir, manifest, art, backend, step=None):
    """A per-layer profile on an open backend, one batch size: the runtime's own per-layer profiler
    (``backend.layer_profiler(feed)``: ``run(n, keep)``, ``finish()``, and ``close()``, always called) against the
    end-to-end latency with the profiler off, their timed runs interleaved in blocks. A backend without a profiler is
    refused with the reason (:data:`NO_LAYER_PROFILER`). Source names are added by edgeconv (it reads the ONNX graph),
    wherever the times were measured."""
    step = step or _no_step
    make_profiler = getattr(backend, "layer_profiler", None)
    if make_profiler is None:
        why = NO_LAYER_PROFILER.get(art["runner"], "the %s runner has no per-layer profiler" % art["runner"])
        raise NoLayerProfiler("profile --layers cannot time layers of %s: %s" % (art["file"], why),
                              hint="--layers works on %s; `edgeconv profile BUNDLE` (without --layers) times the whole "
                                   "model on this runtime" % LAYERS_WORK_ON)
    fixed = backend.fixed_batch()
    sizes = request.get("batch_sizes") or [fixed or 1]
    if len(sizes) != 1:
        raise BadRequest("--layers profiles one batch size; --batch-sizes gave %s" % ",".join(map(str, sizes)))
    batch = int(sizes[0])
    notes = []
    if fixed is not None and batch != fixed and not getattr(backend, "resizes_batch", False):
        notes.append("the artifact has a fixed batch of %d, so batch %d is profiled" % (fixed, fixed))
        batch = fixed
    ref_in, _ = reference(bundle_dir, manifest, art, "source")
    feed = tile(ref_in, batch)
    warmup, runs = int(request["warmup"]), int(request["runs"])
    rounds = min(LAYER_ROUNDS, runs)
    blocks = [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]
    with step("Per-layer times from %s's profiler against the end-to-end time: %d warm-up + %d timed runs each, batch %d"
              % (art["runner"], warmup, runs, batch)):
        prepared = backend.prepare(feed)
        for _ in range(warmup):
            backend.run(prepared)
        profiler = make_profiler(feed)
        try:
            profiler.run(warmup, False)
            samples = []
            for i, n in enumerate(blocks):
                for kind in (("e2e", "layers") if i % 2 == 0 else ("layers", "e2e")):
                    if kind == "e2e":
                        backend.run(prepared)
                        for _ in range(n):
                            backend.run(prepared)
                            samples.append(backend.last_s)
                    else:
                        profiler.run(1, False)
                        profiler.run(n, True)
            e2e = summarize_latency(samples, batch)
            e2e.update({"batch": batch, "warmup": warmup, "method": LATENCY_METHOD})
            layers = summarize_layers(profiler.finish(), e2e)
        finally:  # whatever failed in between: the profiler's session and trace do not outlive the run
            profiler.close()
    layers.update({"batch": batch, "warmup": warmup, "runs": runs, "method": LAYERS_METHOD})
    return {"artifact": art["file"], "runner": art["runner"], "measured_on": measured_on(art, backend, request["where"]),
            "layers": layers, "notes": notes, "request": request}


# -- the command line on the device -------------------------------------------------------------------------
def request_from_args(args):
    if args.request:
        with open(args.request) as f:
            request = json.load(f)
        given = [k for k in ("runs", "warmup", "threads", "data", "batch_sizes", "min_time", "layers") if getattr(args, k) is not None]
        if given:
            raise BadRequest("--request carries the options; do not also pass %s"
                             % ", ".join("--" + k.replace("_", "-") for k in given))
        request = complete_request(request)
        here = os.path.dirname(os.path.abspath(args.request))  # relative paths in a request are relative to its file
        if request["data"] and not os.path.isabs(request["data"]["file"]):
            request["data"] = dict(request["data"], file=os.path.join(here, request["data"]["file"]))
        if request["outputs_file"] and not os.path.isabs(request["outputs_file"]):
            request["outputs_file"] = os.path.join(here, request["outputs_file"])
        return request
    request = {"runs": args.runs if args.runs is not None else 100, "warmup": args.warmup if args.warmup is not None else 10,
               "threads": args.threads, "where": "device"}
    if args.batch_sizes or args.layers:
        if args.data:
            raise BadRequest("--data applies to a validate run; --%s makes this a profile run"
                             % ("layers" if args.layers else "batch-sizes"))
        request.update(command="profile", batch_sizes=[int(v) for v in (args.batch_sizes or "").split(",") if v.strip()] or None,
                       min_time_s=args.min_time, layers=bool(args.layers))
    elif args.data:
        request["data"] = {"file": os.path.abspath(args.data), "path": args.data}
    return complete_request(request)


def _stderr_step(label):
    sys.stderr.write("%s\n" % label)
    sys.stderr.flush()
    return _no_step(label)


def run(args):
    """Open the bundle and the backend, execute the request, print the report; returns the exit code."""
    request = request_from_args(args)
    with open(os.path.join(args.bundle, "manifest.json")) as f:
        manifest = json.load(f)
    art, options = artifact_to_run(manifest)
    options = runner_options(art, options, request)
    backend = open_backend(args.bundle, art, options, request["threads"])
    try:
        if request["command"] == "profile":
            report = execute_profile(request, os.path.abspath(args.bundle), manifest, art, backend, _stderr_step)
            report["ok"] = True
        else:
            data = None
            if request["data"]:
                path = request["data"]["file"]
                digest = file_sha256(path)
                if request["data"].get("sha256") not in (None, digest):
                    raise BadRequest("%s changed on its way here (sha256 differs from the request's)" % path)
                feed, labels = load_labelled(path, [s["name"] for s in manifest["inputs"]])
                data = (feed, labels, {"path": request["data"].get("path") or path, "sha256": digest,
                                       "count": int(len(next(iter(feed.values()))))})
            report = execute(request, os.path.abspath(args.bundle), manifest, art, backend, data,
                             reopen=lambda: open_backend(args.bundle, art, options, request["threads"]), step=_stderr_step)
    finally:
        backend.close()
    if args.json:
        print(json.dumps(report, indent=2))
    elif "layers" in report:
        lay = report["layers"]
        for row in lay["rows"][:20]:
            print("  %8.3f ms %5.1f%%  %-16s %s" % (row["p50_ms"], 100 * row["share"], row["op"], row["name"]))
        print("sum of layers %.3f ms vs end-to-end p50 %.3f ms (%d layers, p50 over %d runs, batch %d)" % (
            lay["sum_ms"], lay["end_to_end"]["p50_ms"], lay["count"], lay["runs"], lay["batch"]))
    elif request["command"] == "profile":
        for row in report["sweep"]["rows"]:
            what = row.get("error") or "p50 %.3f ms, %.0f items/s" % (row["p50_ms"], row["throughput_items_s"])
            print("  batch %-4d %s" % (row["batch"], what))
    else:
        mo, lat = report["measured_on"], report["latency"]
        print("%s on %s (%s): %s, p50 %.3f ms, p99 %.3f ms over %d runs" % (
            report["artifact"], mo["runtime"], mo["host"], "ok" if report["ok"] else "FAILED", lat["p50_ms"], lat["p99_ms"],
            lat["runs"]))
        if "accuracy" in report:
            acc = report["accuracy"]
            print("  top-1 %.2f%% (drop %s points)" % (100 * acc["artifact"]["top1"],
                                                      "unknown" if acc["drop_points"] is None else "%.2f" % acc["drop_points"]))
        for r in report["parity"]["outputs"]:
            print("  %-20s %s" % (r["name"], "ok" if r["ok"] else "FAILED %s" % r["reason"]))
        for b in report["budgets"]:
            print("  %-20s %s (%.4g, limit %s)" % (b["name"], "ok" if b["ok"] else "FAILED", b["value"], b["limit"]))
    return EXIT_OK if report["ok"] else EXIT_CHECK


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run an edgeconv bundle on this device.")
    ap.add_argument("bundle", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--request", default=None, help="a request.json written by edgeconv (validate or profile)")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", default=None, help="labelled .npz (x, y): top-1 accuracy on the device")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 1,2,4,8: a latency/throughput sweep")
    ap.add_argument("--min-time", type=float, default=None, help="sweep: run each batch size for at least this many seconds")
    ap.add_argument("--layers", action="store_true", default=None,
                    help="per-layer times from the runtime's own profiler (ONNX Runtime) instead of the sweep")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except RunnerError as exc:
        sys.stderr.write("error: %s\n" % exc.message + ("hint: %s\n" % exc.hint if exc.hint else ""))
        if args.json:
            print(json.dumps({"ok": False, "error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                                                     "exit_code": exc.exit_code}}, indent=2))
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
