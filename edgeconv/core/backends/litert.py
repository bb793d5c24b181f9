"""LiteRT / TFLite, and the Edge TPU through its delegate: ai-edge-litert where it exists, else tflite_runtime
(Coral, older boards), else TensorFlow's interpreter. See docs/architecture.md."""

import sys
import time

import numpy as np

from ..errors import ArtifactRefused, BadInput, MissingDependency
from .base import Backend, inverse_perm, missing_inputs


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
        raise MissingDependency("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)")


def _interpreter(path, threads, delegate):
    mod = tflite_interpreter_module()
    kwargs = {"model_path": str(path), "num_threads": threads}
    if delegate:
        try:
            kwargs["experimental_delegates"] = [mod.load_delegate(delegate)]
        except (ValueError, OSError) as exc:
            raise MissingDependency("cannot load the delegate %s: %s" % (delegate, exc))
    try:
        interp = mod.Interpreter(**kwargs)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:  # a damaged model, or a kernel/delegate that refuses an op
        raise ArtifactRefused("LiteRT cannot load %s: %s" % (path, exc))
    return interp


class LiteRtBackend(Backend):
    """Tensors by the manifest's names, in the source layout, float in and out (quantized tensors are
    quantized/dequantized with their own scale and zero point). Times ``invoke()``."""

    name = "litert"
    accepted_options = ("tensor_names", "permutations", "io_layout", "delegate")

    def __init__(self, path, threads=None, tensor_names=None, permutations=None, io_layout="source", delegate=None):
        if io_layout not in ("source", "artifact"):
            raise BadInput("--io-layout must be source or artifact, not %r" % (io_layout,))
        self.interp = _interpreter(path, threads, delegate)
        self.delegate, self.io_layout, self.threads = delegate, io_layout, threads
        self.inputs, self.outputs = [], []
        self._entries(tensor_names, permutations or {})
        self.last_s = 0.0

    def _entries(self, tensor_names, perms):
        if self.interp.get_signature_list():
            sig = self.interp.get_signature_runner()
            tables = (("in", sig.get_input_details()), ("out", sig.get_output_details()))
        else:  # a file without a SignatureDef (onnx2tf's float files): the graph's own inputs and outputs, by tensor name
            tables = (("in", dict((d["name"], d) for d in self.interp.get_input_details())),
                      ("out", dict((d["name"], d) for d in self.interp.get_output_details())))
        details = {}
        for kind, table in tables:
            for key, d in table.items():
                details[key] = dict(d, kind=kind)
        names = tensor_names or dict((k, k) for k in details)
        for public, sig_name in names.items():
            d = details[sig_name]
            perm = perms.get(public) if self.io_layout == "source" else None
            shape = [int(x) for x in d["shape"]]
            public_shape = shape if perm is None else [shape[i] for i in inverse_perm(perm)]
            scale, zero = float(d["quantization"][0]), int(d["quantization"][1])
            entry = {"name": public, "index": int(d["index"]), "dtype": np.dtype(d["dtype"]), "perm": perm,
                     "shape": public_shape, "scale": scale, "zero": zero}
            (self.inputs if d["kind"] == "in" else self.outputs).append(entry)

    @property
    def resizes_batch(self):
        # the interpreter resizes input tensors; a delegate's compiled graph (Edge TPU) has its shapes baked in
        return not self.delegate

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
            x = np.asarray(x, dtype=e["dtype"], order="C")
            current = [int(v) for v in self.interp.get_tensor_details()[e["index"]]["shape"]]
            if x.ndim == 0 and current == [1]:  # a 0-d input the converter wrote as [1] (onnx2tf): the same value
                x = x.reshape(1)
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
        package = sys.modules.get(type(self.interp).__module__.split(".")[0])
        dtypes = sorted(set(e["dtype"].name for e in self.inputs + self.outputs))
        return {"runtime": "litert", "version": getattr(package, "__version__", None),  # ai_edge_litert, tflite_runtime, tf
                "device": "CPU", "threads": self.threads or "default", "delegate": self.delegate or "XNNPACK (default CPU)",
                "io_layout": self.io_layout, "precision": ", ".join(dtypes) + " I/O tensors"}
