"""ONNX Runtime (edgeconv's own ONNX Runtime runner is this backend), and its per-node profiler for ``--layers``.
See docs/architecture.md."""

import json
import os
import time

import numpy as np

from ..errors import ArtifactRefused, MissingDependency
from ..layers import ort_trace_layers
from .base import Backend, missing_inputs

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
            raise MissingDependency("onnxruntime is not installed: pip install onnxruntime")
        self.ort, self.path, self.providers = ort, str(path), providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.session = self.open_session(self._session_options(), "")
        self.inputs = [self._entry(a) for a in self.session.get_inputs()]
        self.outputs = [self._entry(a) for a in self.session.get_outputs()]
        self.output_names = [o["name"] for o in self.outputs]
        self.version = ort.__version__
        self.last_s = 0.0

    def _session_options(self):
        so = self.ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return so

    def open_session(self, options, why):
        """A session on this model with ``options``; a model ONNX Runtime refuses is ArtifactRefused in its own words."""
        try:
            return self.ort.InferenceSession(self.path, options, providers=self.providers)
        except Exception as exc:  # a damaged or unsupported model: ONNX Runtime's own words
            raise ArtifactRefused("ONNX Runtime cannot load %s%s: %s" % (self.path, why, exc)) from exc

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
        return dict((e["name"], np.asarray(feed[e["name"]], dtype=e["dtype"], order="C")) for e in self.inputs)

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

        so = backend._session_options()
        so.enable_profiling = True
        self.tmp = tempfile.mkdtemp(prefix="edgeconv-ort-profile-")
        so.profile_file_prefix = os.path.join(self.tmp, "ort")
        self.session = None
        try:
            self.session = backend.open_session(so, " with profiling on")
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
        """Profiling ended (ending it twice is harmless) and its directory, trace included, deleted: no trace left
        behind on the device. Idempotent."""
        import shutil

        session, self.session = self.session, None
        if session is not None:  # ends profiling, so that the session, when it goes, writes no trace of its own
            session.end_profiling()
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
