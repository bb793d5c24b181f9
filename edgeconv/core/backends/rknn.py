"""Rockchip RKNN on the board: a ``.rknn`` on the NPU through RKNNLite (rknn-toolkit-lite2, aarch64, over the board's
librknnrt.so). The device runner has it, and edgeconv's rknn runner uses it on the board (on a host it answers from the
simulator's record instead: edgeconv/runners/rknn.py).

A ``.rknn`` keeps no input/output metadata RKNNLite can give back, so the I/O comes from the record the build wrote
beside it (``rknn/simulator.json``: names, shapes, the precision), checked against the artifact's sha256. Inputs are
fed as RKNNLite's ``inference`` takes them by default: a 4-D input in NHWC, converted from the layout the ONNX graph
takes (and the bundle's feeds carry), which the toolkit reads as NCHW (:func:`rknn_layout`); the build job's simulator
was told ``data_format="nchw"`` for the same samples. The .rknn has a batch of 1: a batch is a loop of single-sample
inferences, timed together. See docs/architecture.md, "NPU toolchains"."""

import json
import os
import time

import numpy as np

from ..data import file_sha256
from ..errors import ArtifactRefused, BadInput, MissingDependency
from .base import Backend, missing_inputs

STORE_DIR = "rknn"
STORE_INDEX = "simulator.json"
INSTALL = ("pip install rknn-toolkit-lite2 on the board (aarch64, CPython 3.8-3.12); it needs the board's librknnrt.so "
           "(Rockchip's rknpu2 runtime, /usr/lib/librknnrt.so) and the rknpu kernel driver")
# RKNNLite.init_runtime(core_mask=...): the NPU cores a model may use (RK3588: 3, RK3576: 2; others ignore it)
CORE_MASKS = ("auto", "0", "1", "2", "0_1", "0_1_2", "all")


def record_path(artifact):
    return os.path.join(os.path.dirname(str(artifact)), STORE_DIR, STORE_INDEX)


def read_record(artifact):
    """The build's record of the .rknn's inputs and outputs (``rknn/simulator.json`` beside it); one written for
    another artifact (sha256) is refused."""
    path = record_path(artifact)
    if not os.path.exists(path):
        raise ArtifactRefused("%s: %s/%s (its inputs and outputs) is missing beside it"
                              % (os.path.basename(str(artifact)), STORE_DIR, STORE_INDEX))
    with open(path) as f:
        record = json.load(f)
    if record.get("artifact_sha256") != file_sha256(str(artifact)):
        raise ArtifactRefused("%s describes another %s (sha256 %s…): its inputs and outputs cannot stand for this one"
                              % (path, os.path.basename(str(artifact)), str(record.get("artifact_sha256"))[:12]))
    return record


def rknn_layout(array):
    """One input as RKNNLite's ``inference`` takes it by default: float32, C order, a 4-D tensor in NHWC from the ONNX
    graph's own layout (read by the toolkit as NCHW); any other rank as it is."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 4:
        a = a.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(a)


def rknn_samples(feed, inputs):
    """``feed`` (batches in the ONNX layout) as RKNNLite's inputs: one list per sample, one array per input, in the
    record's input order, each a batch of one in :func:`rknn_layout`."""
    missing_inputs(inputs, feed)
    n = len(feed[inputs[0]["name"]])
    return [[rknn_layout(np.asarray(feed[e["name"]])[i:i + 1]) for e in inputs] for i in range(n)]


def as_recorded(array, shape, name):
    """An output RKNNLite gave back, in the shape the record (and the ONNX graph) has: the same values with the same
    non-unit dimensions in the same order may be reshaped; anything else is refused, never reshuffled."""
    a = np.asarray(array, dtype=np.float32)
    want = [int(d) for d in shape]
    if list(a.shape) == want:
        return a
    if [d for d in a.shape if d != 1] == [d for d in want if d != 1]:
        return a.reshape(want)
    raise ArtifactRefused("RKNNLite gave output %s with shape %s; the model's is %s" % (name, list(a.shape), want))


def core_mask_of(lite_class, core_mask):
    """RKNNLite's constant for a ``--runner-option core_mask`` (None: the runtime's default); an unknown one is refused."""
    if core_mask is None:
        return None
    key = str(core_mask).lower()
    if key not in CORE_MASKS or not hasattr(lite_class, "NPU_CORE_" + key.upper()):
        raise BadInput("core_mask %r: RKNNLite takes %s" % (core_mask, ", ".join(CORE_MASKS)))
    return getattr(lite_class, "NPU_CORE_" + key.upper())


def import_rknnlite():
    try:
        from rknnlite.api import RKNNLite
    except ImportError:
        raise MissingDependency("rknnlite is not installed: RKNNLite runs a .rknn on a Rockchip board's NPU", hint=INSTALL)
    return RKNNLite


class RknnBackend(Backend):
    """A ``.rknn`` on the NPU through RKNNLite; times the inferences of a batch (one sample each)."""

    name = "rknn"
    accepted_options = ("core_mask",)

    def __init__(self, path, threads=None, core_mask=None):
        lite_class = import_rknnlite()
        self.path = str(path)
        record = read_record(self.path)
        self.precision, self.platform = record.get("precision"), record.get("platform")
        self.inputs = [self._entry(s) for s in record["inputs"]]
        self.outputs = [self._entry(s) for s in record["outputs"]]
        mask = core_mask_of(lite_class, core_mask)
        self.core_mask = core_mask or "runtime default"
        self.lite = lite_class(verbose=False)
        if self.lite.load_rknn(self.path) != 0:
            self.close()
            raise ArtifactRefused("RKNNLite could not load %s" % self.path)
        if (self.lite.init_runtime() if mask is None else self.lite.init_runtime(core_mask=mask)) != 0:
            self.close()
            raise MissingDependency("RKNNLite could not start the NPU runtime for %s (%s): no RKNN NPU here, or "
                                    "librknnrt.so / the rknpu driver missing or too old for this .rknn"
                                    % (os.path.basename(self.path), self.platform), hint=INSTALL)
        self.version = _lite_version()
        self.last_s = 0.0

    @staticmethod
    def _entry(spec):
        return {"name": spec["name"], "shape": list(spec["shape"]), "dtype": np.dtype("float32"), "layout": spec.get("layout")}

    def prepare(self, feed):
        return rknn_samples(feed, self.inputs)

    def run(self, prepared):
        got = []
        t0 = time.perf_counter()
        for sample in prepared:
            outs = self.lite.inference(inputs=sample)
            if outs is None:
                raise ArtifactRefused("RKNNLite returned no outputs for %s (its log says why)" % self.path)
            got.append(outs)
        self.last_s = time.perf_counter() - t0
        return [np.concatenate([as_recorded(outs[j], e["shape"], e["name"]) for outs in got])
                for j, e in enumerate(self.outputs)]

    def info(self):
        return {"runtime": "rknn", "version": self.version, "device": "NPU (RKNNLite, %s)" % self.platform,
                "emulated": False, "threads": None, "core_mask": self.core_mask, "precision": self.precision}

    def close(self):
        lite, self.lite = getattr(self, "lite", None), None
        if lite is not None:
            lite.release()


def _lite_version():
    """rknn-toolkit-lite2's version, from its installed distribution's folder name (Python 3.6 has no importlib.metadata)."""
    import glob
    import sys

    for folder in sys.path:
        for found in glob.glob(os.path.join(folder or ".", "rknn_toolkit_lite2-*.dist-info")):
            return os.path.basename(found)[len("rknn_toolkit_lite2-"):-len(".dist-info")]
    return None
