"""Keras / TensorFlow sources → ONNX with tf2onnx: ``.keras``, ``.h5`` and SavedModel directories.

``.keras`` and ``.h5`` load with Keras' safe mode on: a Lambda layer (arbitrary Python) is refused unless
``--trust-pickle``. An ``.h5`` written by Keras 2 (its ``keras_version`` attribute) is loaded by Keras 2 itself
(``tf_keras``): Keras 3 cannot rebuild every Keras 2 layer config (MobileNetV3's BatchNormalization, TFOpLambda).
An ``.h5`` written by Keras 3 whose functional graph calls Keras ops directly (``x + 3.0`` in MobileNetV3's hard-swish)
is loaded from its config with those nodes' module put back (see :func:`_restore_op_modules`).
tf2onnx's ``from_keras`` does not follow Keras 3 output naming, so the model is wrapped in a ``tf.function`` and
exported with ``from_function``.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import BadInput, ConversionFailed, MissingDependency
from edgeconv.frontends.base import ExportRecord, LoadOptions, SourceModel, import_user_module, source_output_names
from edgeconv.lazy import require, version_of
from edgeconv.specs import TensorSpec, guess_layout

DEFAULT_OPSET = 17


def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", why="to load Keras / TensorFlow models")


def _erfc_as_one_minus_erf(ctx, node, name, args):
    """tf2onnx handler for TensorFlow's Erfc, which it leaves as an op ONNX does not have (Keras 3's exact GELU
    is 0.5·x·erfc(−x/√2)): erfc(x) = 1 − erf(x), with ONNX's Erf."""
    from tf2onnx import utils

    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
    node.type = "Sub"
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    return node


def _rfft_as_dft(ctx, node, name, args):
    """tf2onnx handler for TensorFlow's RFFT whose real and imaginary parts are read apart (``tf.signal.stft`` in Keras'
    STFTSpectrogram/MelSpectrogram: |X|² as Real² + Imag²), which tf2onnx's own RFFT refuses: ONNX's DFT (opset 17),
    onesided, on the last axis, giving [..., bins, 2]; the Real and Imag after it pick their half (``_complex_part``).
    Any other RFFT goes to tf2onnx's own implementation."""
    from onnx import TensorProto
    from tf2onnx import utils
    from tf2onnx.onnx_opset.signal import RFFTOp

    consumers = ctx.find_output_consumers(node.output[0])
    shape = ctx.get_shape(node.input[0])
    if (ctx.opset < 17 or not consumers or {c.type for c in consumers} - {"Real", "Imag"} or shape is None
            or not ctx.is_const(node.input[1])):
        return RFFTOp.version_13(ctx, node)
    n_fft = int(np.asarray(ctx.get_tensor_value(node.input[1], as_list=False)).reshape(-1)[0])
    last = ctx.make_const(utils.make_name(f"{node.name}_last"), np.array([-1], np.int64))
    signal = ctx.make_node("Unsqueeze", [node.input[0], last.output[0]], op_name_scope=node.name)
    length = ctx.make_const(utils.make_name(f"{node.name}_length"), np.array(n_fft, np.int64))
    inputs = [signal.output[0], length.output[0]]
    node.type = "DFT"
    for attr in list(node.attr):
        del node.attr[attr]
    node.set_attr("onesided", 1)
    if ctx.opset >= 20:  # the axis became an input
        inputs.append(ctx.make_const(utils.make_name(f"{node.name}_axis"), np.array(-2, np.int64)).output[0])
    else:
        node.set_attr("axis", len(shape) - 1)
    ctx.replace_inputs(node, inputs)
    ctx.set_dtype(node.output[0], TensorProto.FLOAT)
    ctx.set_shape(node.output[0], list(shape[:-1]) + [n_fft // 2 + 1, 2])
    return node


def _complex_part(ctx, node, name, args):
    """tf2onnx handler for TensorFlow's Real / Imag of an RFFT ``_rfft_as_dft`` made a DFT: its half of the last axis."""
    from onnx import TensorProto
    from tf2onnx import utils

    producer = ctx.get_node_by_output(node.input[0])
    if producer is None or producer.type != "DFT":
        raise ValueError(f"{node.type} of {producer.type if producer else node.input[0]} (a complex tensor not from an "
                         "RFFT): ONNX has no complex tensors")
    index = ctx.make_const(utils.make_name(f"{node.name}_index"), np.array(0 if node.type == "Real" else 1, np.int64))
    for attr in list(node.attr):
        del node.attr[attr]
    node.type = "Gather"
    node.set_attr("axis", -1)
    ctx.replace_inputs(node, [node.input[0], index.output[0]])
    ctx.set_dtype(node.output[0], TensorProto.FLOAT)
    return node


class KerasSource(SourceModel):
    framework = "keras"
    frontend = "OnnxFromKeras"
    default_opset = DEFAULT_OPSET
    layout_default = "NHWC"

    def __init__(self, path: Path, options: LoadOptions):
        super().__init__(path)
        tf = _tf()
        self.model = None
        self.signature = None
        if path.is_dir():
            self._load_saved_model(tf)
        else:
            self._load_keras(options)

    def _load_keras(self, options: LoadOptions) -> None:
        self.format = "keras-h5" if self.path.suffix in (".h5", ".hdf5") else "keras"
        written_by, config = _h5_header(self.path) if self.format == "keras-h5" else (None, None)
        if written_by is not None and written_by.startswith("2."):
            self._load_keras2_h5(written_by, config, options)
            return
        keras = require("keras", why="to load Keras models")
        if options.model_class:  # the code that defines (and registers) the model's custom layers
            import_user_module(options.model_class.rpartition(":")[0] or options.model_class)
        op_nodes = _restore_op_modules(config) if written_by is not None and config is not None else 0
        try:
            if op_nodes:
                self.model = _model_from_restored_h5(keras, self.path, config, safe_mode=not options.trust_pickle)
            else:
                self.model = keras.models.load_model(self.path, compile=False, safe_mode=not options.trust_pickle)
        except Exception as exc:
            msg = str(exc)
            if "safe_mode" in msg or "Lambda" in msg and "unsafe" in msg:
                raise BadInput(
                    f"{self.path} contains a Lambda layer (arbitrary Python code), which Keras' safe mode refuses.",
                    hint="pass --trust-pickle only if you made this file yourself",
                ) from exc
            custom = _custom_classes(config if config is not None else _keras_zip_config(self.path))
            if custom:
                raise BadInput(
                    f"{self.path} uses custom class(es) {', '.join(custom[:5])} that Keras cannot rebuild here "
                    f"({type(exc).__name__}: {first_line(msg, 200)})",
                    hint="pass --model-class path/to/module.py (or pkg.module): the code that defines them, registered "
                         "with @keras.saving.register_keras_serializable(); it is imported before loading")
            raise BadInput(
                f"{self.path} is not a readable Keras model: {type(exc).__name__}: {msg.splitlines()[0] if msg else ''}",
                hint="edgeconv reads .keras (Keras 3), .h5 (legacy) and SavedModel directories",
            ) from exc
        self._set_inputs()

    def _set_inputs(self) -> None:
        for t in self.model.inputs:
            shape = [d if isinstance(d, int) or d is None else getattr(d, "value", None) for d in t.shape]
            name = t.name.split(":")[0]
            dtype = t.dtype.name if hasattr(t.dtype, "as_numpy_dtype") else str(t.dtype)
            if dtype in ("string", "object", "str"):
                raise BadInput(
                    f"{self.path}: input {name!r} is a string tensor{self._string_consumer(t)}; ONNX export and the edge "
                    "runtimes (TFLite builtins, OpenVINO, TensorRT, ONNX Runtime mobile) take numeric tensors only",
                    hint="keep text preprocessing (TextVectorization, StringLookup, tokenizers) on the host: convert the "
                         "model from its first numeric layer on, e.g. keras.Model(vectorized_input, model.output) saved "
                         "as .keras, and feed it the vectorizer's token ids")
            dtype = str(np.dtype(dtype))
            self.inputs.append(TensorSpec(name, shape, dtype, guess_layout(shape, self.layout_default)))

    def _string_consumer(self, tensor) -> str:
        """`` read by layer text_vectorization (TextVectorization)``, or nothing when the graph does not say."""
        for layer in getattr(self.model, "layers", []):
            try:
                inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
            except (AttributeError, ValueError):
                continue
            if any(i is tensor for i in inputs) and type(layer).__name__ != "InputLayer":
                return f", read by layer {layer.name} ({type(layer).__name__})"
        return ""

    def _load_keras2_h5(self, written_by: str, config: dict | None, options: LoadOptions) -> None:
        """An .h5 that Keras 2 wrote, loaded by Keras 2 (tf_keras). Its h5 loader rebuilds a Lambda layer from
        marshalled Python bytecode with no safe mode: edgeconv refuses one itself (found in ``config``, the file's
        model config) unless --trust-pickle."""
        lambdas = _lambda_layers(config)
        if lambdas and not options.trust_pickle:
            raise BadInput(f"{self.path} contains Lambda layer(s) {', '.join(lambdas[:5])} (arbitrary Python code), which "
                           "edgeconv does not load without consent.",
                           hint="pass --trust-pickle only if you made this file yourself")
        try:
            import tf_keras
        except ImportError as exc:
            raise MissingDependency(f"{self.path} was written by Keras {written_by}; loading it needs Keras 2 (tf_keras), "
                                    "which is not installed (Keras 3 cannot rebuild every Keras 2 layer)",
                                    hint="pip install --no-deps 'tf_keras~=2.21.0' (matching your TensorFlow's version)") from exc
        self.format = "keras2-h5"  # the manifest's source format; versions() adds tf_keras
        try:
            self.model = tf_keras.models.load_model(self.path, compile=False)
        except Exception as exc:
            msg = str(exc)
            raise BadInput(f"{self.path} is not a readable Keras {written_by} model: {type(exc).__name__}: "
                           f"{msg.splitlines()[0] if msg else ''}") from exc
        self._set_inputs()

    def _load_saved_model(self, tf) -> None:
        self.format = "savedmodel"
        if not (self.path / "saved_model.pb").is_file():
            raise BadInput(f"{self.path} is a directory but not a TensorFlow SavedModel (no saved_model.pb)")
        try:
            loaded = tf.saved_model.load(str(self.path))
        except Exception as exc:
            raise BadInput(f"{self.path} is not a readable SavedModel: {type(exc).__name__}: {exc}") from exc
        sigs = getattr(loaded, "signatures", {})
        if "serving_default" not in sigs:
            raise BadInput(f"{self.path} has no 'serving_default' signature (it has {sorted(sigs)})")
        self._loaded = loaded  # keeps the variables alive
        self.signature = sigs["serving_default"]
        _, kwargs = self.signature.structured_input_signature
        for name, spec in sorted(kwargs.items()):
            shape = [d if isinstance(d, int) else None for d in spec.shape.as_list()]
            self.inputs.append(TensorSpec(name, shape, spec.dtype.name, guess_layout(shape, self.layout_default)))
        self._output_keys = sorted(self.signature.structured_outputs)

    # -- running and exporting -------------------------------------------------------------------------
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.signature is not None:
            out = self.signature(**{s.name: feed[s.name] for s in self.inputs})
            return [np.asarray(out[k]) for k in self._output_keys]
        xs = [feed[s.name] for s in self.inputs]
        out = self.model(xs if len(xs) > 1 else xs[0], training=False)
        return [np.asarray(o) for o in self.ordered_outputs(out)[1]]

    def ordered_outputs(self, out) -> tuple[list[str] | None, list]:
        """The model's outputs in the order the exported graph keeps, with the source's names (None: it has none): a
        dict's keys in the model's ``output_names`` order when those are its keys, else sorted (as TensorFlow flattens a
        dict); several outputs of a list are named by the model's ``output_names`` (the output layers' names)."""
        declared = [str(n) for n in getattr(self.model, "output_names", None) or []]
        if isinstance(out, dict):
            keys = [k for k in declared if k in out] if sorted(declared) == sorted(map(str, out)) else sorted(out)
            return [str(k) for k in keys], [out[k] for k in keys]
        if not isinstance(out, (list, tuple)):
            return None, [out]
        return (declared if len(declared) == len(out) > 1 else None), list(out)

    def named_outputs(self, out) -> dict:
        """``{name: output}`` in the exported graph's order and with its names (a signature's outputs, for TFLite)."""
        names, outs = self.ordered_outputs(out)
        return dict(zip(source_output_names(names, len(outs), [s.name for s in self.inputs]), outs))

    def _export_function(self, tf, inputs: list[TensorSpec]):
        """The ``tf.function`` tf2onnx exports (its outputs a list, in ``ordered_outputs``' order), and a dict whose
        ``names`` are the source's output names once the function is traced (None: the defaults)."""
        traced: dict[str, list[str] | None] = {}

        def ordered(out):
            traced["names"], outs = self.ordered_outputs(out)
            return outs

        if self.signature is not None:
            traced["names"] = self._output_keys if len(self._output_keys) > 1 else None
            return tf.function(lambda *xs: [self.signature(**{s.name: x for s, x in zip(inputs, xs)})[k]
                                            for k in self._output_keys]), traced
        if len(inputs) == 1:
            return tf.function(lambda x: ordered(self.model(x, training=False))), traced
        return tf.function(lambda *xs: ordered(self.model(list(xs), training=False))), traced

    def export_onnx(self, dest: Path, *, inputs: list[TensorSpec], opset: int | None, dynamic_batch: bool) -> ExportRecord:
        tf = _tf()
        tf2onnx = require("tf2onnx", why="to convert Keras models to ONNX")
        from edgeconv.onnx_tools import rename_outputs

        sig = [
            tf.TensorSpec([None if (i == 0 and dynamic_batch) else d for i, d in enumerate(s.shape)], s.dtype, name=s.name)
            for s in inputs
        ]
        fn, traced = self._export_function(tf, inputs)
        opset = opset or DEFAULT_OPSET
        import logging

        tf2onnx_log = logging.getLogger("tf2onnx")
        level, handlers, propagate = tf2onnx_log.level, tf2onnx_log.handlers[:], tf2onnx_log.propagate
        # tf2onnx logs a traceback when one of its optional graph optimizers fails and goes on without it (the
        # transpose optimizer on some Keras 2 models): not an error of the export, and not the user's to read. A node
        # it cannot convert it logs (with a traceback) and leaves in the graph: that is the export's failure, said here.
        failed_nodes = _FailedNodes()
        tf2onnx_log.setLevel(logging.ERROR)
        tf2onnx_log.handlers, tf2onnx_log.propagate = [failed_nodes], False
        try:
            model_proto, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=opset,
                                                           custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, []),
                                                                               "RFFT": (_rfft_as_dft, []),
                                                                               "Real": (_complex_part, []),
                                                                               "Imag": (_complex_part, [])})
        except Exception as exc:
            raise ConversionFailed(
                f"Keras → ONNX (tf2onnx {tf2onnx.__version__}) failed: {type(exc).__name__}: {first_line(str(exc), 400)}",
                hint="run with --debug for the full traceback",
                details="\n".join(failed_nodes.nodes + failed_nodes.unread) or None,
            ) from exc
        finally:
            tf2onnx_log.setLevel(level)
            tf2onnx_log.handlers, tf2onnx_log.propagate = handlers, propagate
        left = failed_nodes.left_in(model_proto)  # what tf2onnx's optimizers did not remove after all
        if left:
            raise ConversionFailed(
                f"Keras → ONNX (tf2onnx {tf2onnx.__version__}) cannot convert {len(left)} TensorFlow op(s): "
                + "; ".join(left[:3]) + (" …" if len(left) > 3 else ""),
                hint="replace that op in the model (e.g. compute it outside the model), or try another --opset")
        rename_outputs(model_proto, source_output_names(traced.get("names"), len(model_proto.graph.output),
                                                        [s.name for s in inputs]))
        import onnx

        from edgeconv.canonical import lifted_constants

        onnx.save(model_proto, str(dest))
        return ExportRecord(exporter=f"tf2onnx {tf2onnx.__version__} from_function (tensorflow {tf.__version__})", opset=opset,
                            constant_inputs=lifted_constants(fn, sig))

    def versions(self) -> dict[str, str | None]:
        keras = {"tf_keras": version_of("tf_keras")} if self.format == "keras2-h5" else {"keras": version_of("keras")}
        return {"tensorflow": version_of("tensorflow-cpu") or version_of("tensorflow"), **keras, "tf2onnx": version_of("tf2onnx")}


class _FailedNodes:
    """A logging handler for tf2onnx's logger: keeps its "Failed to convert node" errors (node, op, reason) and its
    "Unsupported ops" (ops it has no handler for), prints nothing."""

    level = 0

    def __init__(self) -> None:
        self.nodes: list[str] = []
        self._keys: list[tuple[str, str]] = []  # ("node", name) or ("op", type), to look for in the graph
        self.unread: list[str] = []  # records of another form, with why they could not be read

    def left_in(self, model_proto) -> list[str]:
        """The failures whose node or op is still in the exported graph."""
        names = {n.name for n in model_proto.graph.node}
        ops = {n.op_type for n in model_proto.graph.node}
        return [text for text, (kind, key) in zip(self.nodes, self._keys) if key in (names if kind == "node" else ops)]

    def handle(self, record) -> None:
        try:
            self._keep(record)
        except Exception as exc:  # noqa: BLE001 - a logging handler must never raise inside tf2onnx's logging call
            # a record of another form: kept (where it was logged, why it could not be read) for the failure's details
            self.unread.append(f"tf2onnx log record at {record.module}:{record.lineno} not read: "
                               f"{type(exc).__name__}: {first_line(str(exc), 200)}")

    def _keep(self, record) -> None:
        if str(record.msg).startswith("Unsupported ops"):  # ops with no tf2onnx handler at all (logging keeps a lone
            counts = record.args if isinstance(record.args, dict) else (record.args or [{}])[0]  # mapping as args)
            for op, count in dict(counts).items():
                self.nodes.append(f"{op} ({count} node(s)): tf2onnx has no conversion for it")
                self._keys.append(("op", str(op)))
            return
        if not str(record.msg).startswith("Failed to convert node"):
            return
        node = record.args[0] if record.args else "?"
        op = re.search(r"OP=(\w+)", str(record.args[2])) if len(record.args) > 2 else None
        reason = (f"{type(record.exc_info[1]).__name__}: {first_line(str(record.exc_info[1]), 200)}"
                  if record.exc_info else "")
        self.nodes.append(f"{node} ({op.group(1) if op else '?'}): {reason}")
        self._keys.append(("node", str(node)))


def _keras_zip_config(path: Path) -> dict | None:
    """A .keras file's model config (its config.json), or None."""
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _custom_classes(config) -> list[str]:
    """The classes a Keras config names from outside Keras (custom layers, losses, …): ``package>Name`` as registered,
    else ``module.Name``."""
    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            module, registered = node.get("module"), node.get("registered_name")
            if "class_name" in node and "config" in node and (
                    (isinstance(module, str) and module.split(".")[0] not in ("keras", "tf_keras", "builtins"))
                    or (module is None and registered)):
                found.append(registered or f"{module}.{node['class_name']}")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return list(dict.fromkeys(found))


def _h5_header(path: Path) -> tuple[str | None, dict | None]:
    """Who wrote an .h5 model file (its ``keras_version`` attribute) and its model config, or None for either."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            version, config = f.attrs.get("keras_version"), f.attrs.get("model_config")
    except (ImportError, OSError):
        return None, None
    def text(v):
        return v.decode() if isinstance(v, bytes) else (None if v is None else str(v))

    return text(version), None if config is None else json.loads(text(config))


# Where Keras 3 keeps the Operation classes a functional graph records for a direct op call (``x + 3.0`` is
# ``keras.src.ops.numpy.Add``). The native ``.keras`` format writes these module paths itself.
_KERAS_OPS_MODULES = ("numpy", "nn", "math", "core", "image", "linalg", "einops")


def _restore_op_modules(config: dict) -> int:
    """Put back the ``module`` of the op nodes in a Keras-3-written ``.h5`` model config (in place); returns how many.

    Keras 3 writes an ``.h5`` config with its legacy serializer, which drops every node's ``module``; its ``.h5``
    loader then looks each bare class name up among ``keras.layers``. A node that is a Keras op called on a tensor
    rather than a layer (``x + 3.0`` → the Operation ``keras.src.ops.numpy.Add``, config ``{"name": ...}``) is
    rebuilt as the layer of the same name (the merge layer ``keras.layers.Add``), which refuses the constant: "Only
    input tensors may be passed as positional arguments". Keras' functional deserializer reads an entry that has a
    ``module`` the way the ``.keras`` format writes it, so the entry gets the module of its op class back. An op
    node is told from a layer of the same name by its config: a layer's always has ``trainable``, an op's never."""
    import importlib

    keras = require("keras", why="to load Keras models")
    ops_by_name: dict[str, str] = {}
    for short in _KERAS_OPS_MODULES:
        try:
            mod = importlib.import_module(f"keras.src.ops.{short}")
        except ImportError:
            continue
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and obj.__module__ == mod.__name__ and issubclass(obj, keras.Operation)
                    and not issubclass(obj, keras.layers.Layer)):
                ops_by_name.setdefault(name, mod.__name__)
    restored = 0
    for node in _dicts(config):  # a model's config, nested models' too
        layers = (node.get("config") or {}).get("layers") if isinstance(node.get("config"), dict) else None
        for entry in layers if isinstance(layers, list) else []:
            if (isinstance(entry, dict) and "module" not in entry and entry.get("class_name") in ops_by_name
                    and isinstance(entry.get("config"), dict) and "trainable" not in entry["config"]):
                entry["module"] = ops_by_name[entry["class_name"]]
                entry["registered_name"] = entry["class_name"]
                restored += 1
    return restored


def _model_from_restored_h5(keras, path: Path, config: dict, *, safe_mode: bool):
    """The model of a Keras-3-written ``.h5`` from its (restored) config, then its weights: what Keras' own ``.h5``
    loader does, through its public API. The top-level model gets its module too, as the ``.keras`` format writes it."""
    if "module" not in config and config.get("class_name") == "Functional":
        from keras.src.models.functional import Functional

        config = {**config, "module": Functional.__module__}
    model = keras.saving.deserialize_keras_object(config, safe_mode=safe_mode)
    model.load_weights(str(path))
    return model


def _lambda_layers(config) -> list[str]:
    """Names of the Lambda layers in a Keras model config (nested models included)."""
    return [str((d.get("config") or {}).get("name", "?")) for d in _dicts(config) if d.get("class_name") == "Lambda"]


def _dicts(node):
    """Every dict in a JSON-like config, parents before their children (a caller may change a child it was handed
    through its parent before the walk reaches it)."""
    if isinstance(node, dict):
        yield node
        for v in list(node.values()):
            yield from _dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dicts(v)
