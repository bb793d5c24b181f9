"""Intermediate tensors, captured by each runtime's own mechanism and keyed by the canonical ONNX graph's tensor names.

- fp32 reference and Q/DQ ONNX: onnxruntime.quantization.qdq_loss_debug (every float tensor made a graph output;
  for Q/DQ, the value after its QuantizeLinear → DequantizeLinear pair, which is what the next op reads).
- OpenVINO IR: ``Model.add_outputs`` on every op whose output port carries an ONNX tensor name (the ONNX frontend
  keeps them); a FakeQuantize's output stands for the tensor it quantizes.
- TFLite: LiteRT's ``experimental_preserve_all_tensors`` on the builtin kernels; int8 tensors dequantized with
  their own scale and zero point, NHWC → NCHW; matched to ONNX nodes by name through the map the conversion recorded
  (``<model>.onnx-names.json``: onnx2tf's Keras layer → ONNX node), else by shape, order and values.

Each returns ``{onnx tensor name: array (samples, ...)}`` plus notes on how it ran.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import IntermediatesUnavailable


@dataclass
class Captured:
    tensors: dict[str, np.ndarray]
    how: str
    names: dict[str, str] = field(default_factory=dict)  # onnx tensor → the artifact's own name for it
    # onnx tensor → the artifact's names of tensors only it has, derived from that one (an inserted TRANSPOSE)
    derived: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # onnx tensor → how its artifact tensor was found: "name" (the artifact names it), "values" (shape, order, cosine)
    matched_by: dict[str, str] = field(default_factory=dict)


def _quiet_ort_logs():
    import logging

    f = logging.Filter()
    f.filter = lambda record: "pre-processing before quantization" not in str(record.msg)
    return f


def _shapes(model) -> dict[str, list]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def _inferable(model_path: Path, work: Path) -> Path:
    """An fp16 graph from ONNX Runtime's float16 converter keeps value_info of the fp32 graph it came from, which
    shape inference then refuses: a copy without it (the augmenting re-infers every shape)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    if not any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return model_path
    from edgeconv.targets.half import sort_nodes

    model = onnx.load(str(model_path))
    del model.graph.value_info[:]
    sort_nodes(model.graph)  # the converter appends its casts at the end, which shape inference cannot follow
    dest = work / f"{model_path.stem}.no-value-info.onnx"
    onnx.save(model, str(dest))
    return dest


def _collect(model_path: Path, feeds: list[dict[str, np.ndarray]], work: Path) -> dict[str, list[np.ndarray]]:
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    augmented = work / f"{model_path.stem}.augmented.onnx"
    modify_model_output_intermediate_tensors(str(_inferable(model_path, work)), str(augmented))
    return collect_activations(str(augmented), Reader())


def _stack(flat: dict[str, list[np.ndarray]], shapes: dict[str, list]) -> dict[str, np.ndarray]:
    """qdq_loss_debug flattens every saved tensor; give each its shape back (samples first)."""
    out = {}
    for name, runs in flat.items():
        arr = np.concatenate([np.asarray(r).reshape(-1) for r in runs])
        shape = shapes.get(name)
        rest = shape[1:] if shape else None
        if rest is not None and all(isinstance(d, int) and d > 0 for d in rest):
            n = int(np.prod(rest)) if rest else 1
            if arr.size % n == 0:
                out[name] = arr.reshape(-1, *rest)
                continue
        out[name] = arr.reshape(len(runs), -1)
    return out


def onnx_reference(onnx_path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every float tensor of the fp32 canonical graph on ``feeds``."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgeconv-debug-") as tmp:
        flat = _collect(onnx_path, feeds, Path(tmp))
    return _stack(flat, _shapes(onnx.load(str(onnx_path))))


def qdq_onnx(qdq_path: Path, feeds: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray],
             order: list[str] | None = None) -> Captured:
    """A Q/DQ ONNX graph: every tensor after its Q/DQ pair (qdq_loss_debug's activation matching), else as computed."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    with tempfile.TemporaryDirectory(prefix="edgeconv-debug-") as tmp:
        flat = _collect(qdq_path, feeds, Path(tmp))
    matched = create_activation_matching(flat)
    shapes = _shapes(onnx.load(str(qdq_path)))
    stacked = _stack(flat, shapes)
    out, names = {}, {}
    for name in reference:
        if name in matched:
            post = _stack({name: matched[name]["post_qdq"]}, {name: shapes.get(name) or [None, *reference[name].shape[1:]]})
            out[name] = post[name]
            names[name] = name
        elif name in stacked:
            out[name] = stacked[name]
            names[name] = name
    notes = []
    missing = [t for t in (order or reference) if t not in out]
    if missing:
        notes.append(f"{len(missing)} tensor(s) of the canonical graph are not in {qdq_path.name} (e.g. {missing[0]}): folded "
                     "into the op after them before quantization, whose layer carries their error")
    return Captured(out, "onnxruntime.quantization.qdq_loss_debug: the Q/DQ graph run unfused on ONNX Runtime's CPU "
                         "kernels (each tensor after its Quantize/DequantizeLinear pair)", names, notes=notes,
                    matched_by=dict.fromkeys(names, "name"))


DEBUG_NAME = "edgeconv.debug:"


def openvino_ir(xml: Path, feeds: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray],
                order: list[str] | None = None) -> Captured:
    """``order``: the canonical graph's tensors in graph order. A port that carries several of their names is an op
    OpenVINO fused (a depthwise Conv and the BatchNorm Multiply after it): it computes the last of them only."""
    from edgeconv.runners.openvino import load_openvino

    ov = load_openvino()
    core = ov.Core()
    model = core.read_model(str(xml))
    rank = {t: i for i, t in enumerate(order or [])}
    rank |= {t: len(rank) + i for i, t in enumerate(t for t in reference if t not in rank)}
    wanted: dict[str, Any] = {}  # onnx tensor -> port
    names: dict[str, str] = {}
    fused: dict[str, list[str]] = {}  # the tensor a port computes -> the earlier tensors fused into it

    def computed(port_names) -> str | None:
        here = sorted((t for t in port_names if t in reference), key=rank.__getitem__)
        if len(here) > 1:
            fused.setdefault(here[-1], []).extend(here[:-1])
        return here[-1] if here else None

    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Result", "Constant", "Parameter"):
            continue
        if kind == "FakeQuantize":
            src = op.input_value(0)
            if src.get_node().get_type_name() == "Constant":
                continue
            t = computed(src.get_names())  # what the next op reads: the quantized value stands for this tensor
            if t is not None:
                wanted[t] = op.output(0)
                names[t] = f"{op.get_friendly_name()} (FakeQuantize)"
            continue
        for port in op.outputs():
            t = computed(port.get_names())
            if t is not None and not names.get(t, "").endswith("(FakeQuantize)"):
                wanted[t] = port
                names[t] = op.get_friendly_name()
    if not wanted:
        raise IntermediatesUnavailable(f"{xml.name}: no OpenVINO op output carries a tensor name of the canonical ONNX graph",
                                       hint="the IR was not converted from this bundle's model.onnx")
    order = list(wanted)
    for t in order:  # a name of our own per port: a port may already be an output, or carry no name (FakeQuantize)
        wanted[t].get_tensor().add_names({DEBUG_NAME + t})
    model.add_outputs([wanted[t] for t in order])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    runs: dict[str, list[np.ndarray]] = {t: [] for t in order}
    request = compiled.create_infer_request()
    in_names = [p.get_any_name() for p in compiled.inputs]
    ports = {}
    for t in order:
        port = next((o for o in compiled.outputs if DEBUG_NAME + t in o.get_names()), None)
        # a tensor that already was a model output keeps its Result's names only
        ports[t] = port if port is not None else next(o for o in compiled.outputs if t in o.get_names())
    for feed in feeds:
        res = request.infer({n: feed[n] for n in in_names})
        for t in order:
            runs[t].append(np.array(res[ports[t]], copy=True))
    out = {t: np.concatenate(v) for t, v in runs.items()}
    notes = []
    folded = {e: t for t, earlier in fused.items() for e in dict.fromkeys(earlier) if e not in wanted}
    if folded:
        example = next(iter(folded))
        notes.append(f"{len(folded)} tensor(s) of the canonical graph exist only inside an op OpenVINO fused (e.g. {example} "
                     f"into {names.get(folded[example], folded[example])}); their layers have no values of their own, and "
                     "the fused op's layer carries their error")
    return Captured(out, f"OpenVINO {ov.__version__} Model.add_outputs, CPU plugin, f32 inference precision (int8 where the IR "
                         "has FakeQuantize ops; a FakeQuantize's output stands for the tensor it quantizes)", names,
                    notes=notes, matched_by=dict.fromkeys(names, "name"))


ONNX_NAMES_SUFFIX = ".onnx-names.json"


def onnx_names_path(tflite: Path) -> Path:
    """Where the conversion keeps the map of a .tflite's tensor names to the ONNX nodes they come from."""
    return tflite.with_name(tflite.stem + ONNX_NAMES_SUFFIX)


def record_onnx2tf_names() -> dict[str, Any]:
    """Call in onnx2tf's own process before its ``main``/``convert`` runs; returns the dict that fills as it converts:
    ``{"layers": {Keras layer: ONNX node}, "nodes": {ONNX node: [its output tensors]}}`` (onnx2tf's sanitized names,
    nodes in conversion order). Write it as JSON to ``onnx_names_path(tflite)``.

    Why: onnx2tf passes ``name=graph_node.name`` to its TensorFlow calls, but tf_keras' TFOpLambda drops ``name`` and
    names each layer after its function (``tf.nn.convolution_3``), so no ONNX name reaches the .tflite. Its tensor names
    do keep those layer names (``model_25/tf.nn.convolution_3/convolution1``; ops TFLite fused: their names joined by
    ``;``), and onnx2tf builds every layer inside one ONNX node's ``make_node``: noting the node around each layer's
    construction gives the exact map. The names are the same on every run of the same graph in a fresh process."""
    import importlib

    import onnx2tf.onnx2tf as core
    from tf_keras.src.engine import base_layer

    record: dict[str, Any] = {"layers": {}, "nodes": {}}
    stack: list[str] = []
    layer_init = base_layer.Layer.__init__

    def init(self, *args, **kwargs):
        layer_init(self, *args, **kwargs)
        if stack and stack[-1]:
            record["layers"].setdefault(self.name, stack[-1])

    class Importer:  # onnx2tf imports each node's op module by name: hand back its make_node, wrapped
        def __getattr__(self, name):
            return getattr(importlib, name)

        def import_module(self, name, *args):
            mod = importlib.import_module(name, *args)
            make_node = getattr(mod, "make_node", None)
            if name.startswith("onnx2tf.ops.") and make_node is not None and not getattr(make_node, "edgeconv", False):
                def wrapped(*a, **kw):
                    node = kw.get("graph_node")
                    stack.append(getattr(node, "name", None) or (stack[-1] if stack else ""))
                    if node is not None:
                        record["nodes"].setdefault(node.name, [o.name for o in node.outputs])
                    try:
                        return make_node(*a, **kw)
                    finally:
                        stack.pop()

                wrapped.edgeconv = True
                mod.make_node = wrapped
            return mod

    base_layer.Layer.__init__ = init
    core.importlib = Importer()
    return record


def _onnx2tf_sanitized(name: str) -> str:
    """onnx2tf's renaming of ONNX names before conversion (onnx2tf.py ``sanitizing``; ``wa/`` under -osd/-oiqt)."""
    name = name.replace(":", "__")
    return "wa/" + name[1:] if name.startswith("/") else name


def _keras_layers(tensor_name: str) -> list[str]:
    """``model_25/tf.nn.relu_1/Relu;model_25/tf.nn.convolution_1/convolution`` → the layer names after the model's."""
    return [part.split("/")[1] for part in tensor_name.split(";") if part.count("/") >= 1 and part.split("/")[1]]


def _keras_record(keras_nodes: dict[str, str], node_outputs: dict[str, list[str]], layer_names: list[str]):
    """A Keras model's own TFLite (TFLiteConverter traced the model itself): its tensors are named after TensorFlow
    scopes, as tf2onnx's nodes are, uniquified by another trace. Both sides go back to the Keras layer names; the record
    maps each layer to its last node of the canonical graph, in the recorded map's form, and ``keys_of`` a TFLite tensor
    name to its layers."""
    from edgeconv.debug.graph import KerasScopes, _keras_scopes

    scopes = KerasScopes(layer_names)  # this trace's own scope → layer assignment, in execution order
    record = {"layers": keras_nodes, "nodes": {n: [_onnx2tf_sanitized(o) for o in outs] for n, outs in node_outputs.items()}}
    return record, lambda name: [scopes.layer(_keras_scopes(part)) for part in name.split(";")]


def litert(tflite: Path, runner_options: dict[str, Any], feeds: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray],
           order: list[str], keras: tuple[dict[str, str], dict[str, list[str]], list[str]] | None = None) -> Captured:
    """``order``: the reference tensors in graph order (to match by position what no name resolves). ``keras``: for a
    Keras source, (layer → its last canonical node, node → outputs in graph order, the layer names), to match by name
    a .tflite that TFLiteConverter made from the Keras model (no onnx2tf, so no recorded map)."""
    import json

    from edgeconv.core.backends.litert import LiteRtBackend, tflite_interpreter_module

    mod = tflite_interpreter_module()
    backend = LiteRtBackend(tflite, None, **{k: v for k, v in runner_options.items() if k in ("tensor_names", "permutations")})
    kwargs: dict[str, Any] = {"model_path": str(tflite), "experimental_preserve_all_tensors": True}
    resolver = getattr(getattr(mod, "OpResolverType", None), "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
    if resolver is not None:  # XNNPACK would keep the intermediates inside its delegate
        kwargs["experimental_op_resolver_type"] = resolver
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp = mod.Interpreter(**kwargs)
    interp.allocate_tensors()
    backend.interp = interp  # same model file, same tensor indices: the runner's own I/O handling, all tensors kept
    ops = interp._get_ops_details()  # the interpreter's op list in execution order (no public twin)
    details = {d["index"]: d for d in interp.get_tensor_details()}
    produced = [(op, int(t)) for op in ops for t in op["outputs"] if t >= 0]
    runs: dict[int, list[np.ndarray]] = {t: [] for _, t in produced}
    for feed in feeds:
        backend.run(backend.prepare(feed))
        for t, kept in runs.items():
            kept.append(np.array(interp.get_tensor(t), copy=True))
    values: dict[int, np.ndarray] = {}
    for t, arrs in runs.items():
        if arrs[0].ndim == 0:  # a scalar (a Rescaling layer's constant): no per-sample layer output to compare
            continue
        d = details[t]
        a = np.concatenate(arrs)
        scale, zero = d["quantization"]
        if scale and a.dtype.kind in "iu":
            a = (a.astype(np.float32) - zero) * scale
        values[t] = a.astype(np.float32, copy=False)
    names_file = onnx_names_path(tflite)
    record = json.loads(names_file.read_text()) if names_file.is_file() else None
    keys_of, named_by = _keras_layers, f"the ONNX node each onnx2tf layer came from, {names_file.name}"
    if record is None and keras is not None:
        record, keys_of = _keras_record(*keras)
        named_by = "the Keras layer TensorFlow's scopes name on both sides"
    # the graph's outputs by the signature's names (the runner's map: ONNX name → signature name → tensor)
    signature = next(iter((interp._get_full_signature_list() or {}).values()), {}).get("outputs", {})
    io = {onnx: int(signature[sig]) for onnx, sig in (runner_options.get("tensor_names") or {}).items()
          if onnx in reference and sig in signature}
    produced = [(op, t) for op, t in produced if t in values]
    m = _match_tflite(produced, details, values, reference, order, record, io, keys_of)
    if not m.tensors:
        raise IntermediatesUnavailable(f"{tflite.name}: none of its tensors could be matched to the canonical ONNX graph")
    by_name = sum(1 for v in m.matched_by.values() if v == "name")
    notes = [(f"{len(m.tensors)} of {len(order)} ONNX tensors matched to TFLite tensors: {by_name} by name ({named_by}), "
              f"{len(m.tensors) - by_name} by shape, order and values")]
    if record is None:
        notes.append(f"no {names_file.name} beside {tflite.name} (converted before edgeconv recorded onnx2tf's names): every "
                     "match is by values, and a broken layer can be taken for a neighbour of the same shape")
    m.how = ("LiteRT experimental_preserve_all_tensors on the builtin kernels (no XNNPACK delegate); quantized tensors "
             "dequantized, NHWC moved back to NCHW")
    m.notes = notes + m.notes
    return m


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1).astype(np.float64)
    b = b.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def _layouts(arr: np.ndarray, ref_shape: tuple) -> list[np.ndarray]:
    """The TFLite tensor in the reference's layout: as it is and/or channel-last moved back to channel-first. Both when
    both fit: a 1x32x32x32 tensor (C == H == W, a stride-2 stem at 64 px) fits either way, and only the values tell
    which order it is in (the callers keep the closer one)."""
    found = []
    if tuple(arr.shape[1:]) == tuple(ref_shape[1:]):
        found.append(arr)
    if arr.ndim >= 3:
        moved = arr.transpose([0, arr.ndim - 1, *range(1, arr.ndim - 1)])
        if tuple(moved.shape[1:]) == tuple(ref_shape[1:]):
            found.append(moved)
    return found


def _in_layout(arr: np.ndarray, ref: np.ndarray) -> np.ndarray | None:
    """``arr`` in ``ref``'s layout; where both layouts fit (e.g. C == W), the one closer to it: which tensor it is was
    settled by name, only the axis order is left to the values."""
    fits = [a for a in _layouts(arr, ref.shape) if a.shape == ref.shape]
    return max(fits, key=lambda a: _cosine(a, ref)) if fits else None


# ops onnx2tf and TFLiteConverter add around the ONNX graph's own (layout changes, padding, I/O conversion)
LAYOUT_OPS = {"QUANTIZE", "DEQUANTIZE", "DELEGATE", "TRANSPOSE", "PAD", "PADV2"}
RESHAPE_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS"}  # the same values, another shape
BACK_MATCH_COSINE = 0.9
# how many ONNX tensors past the last match a TFLite tensor may skip (onnx2tf fuses and TFLite folds a few)
WINDOW = 8


def _match_by_name(produced, details, values, reference, record,
                   keys_of=_keras_layers) -> tuple[dict[str, int], dict[int, set], list[str]]:
    """ONNX tensor → the TFLite tensor holding it, through the recorded map (Keras layer → ONNX node).

    A TFLite tensor's name lists the layers of every op TFLite fused into it, so it stands for the latest of their ONNX
    nodes (graph order). A node TFLite split into several ops (HardSigmoid → mul, add, clamp; HardSwish) has several
    such tensors: its output is the last, the one the next node reads. A node whose ops were fused into a later node's
    tensor (a Conv whose output HardSigmoid's x/6 + 0.5 was folded into) has no tensor of its own: it stays unmatched
    (returned in ``fused``), never given a neighbour's."""
    node_pos = {n: i for i, n in enumerate(record.get("nodes", {}))}
    layer_node = record.get("layers", {})
    original = {_onnx2tf_sanitized(r): r for r in reference}
    nodes_of: dict[int, set] = {}
    finals: dict[str, list[int]] = {}
    for op, t in produced:
        ns = {layer_node[name] for name in keys_of(details[t]["name"]) if name in layer_node} & set(node_pos)
        nodes_of[t] = ns
        # a TRANSPOSE TFLite adds after an op takes that op's tensor name: the op's own tensor is the match (the
        # transpose becomes its derived name, as by values), what a float fallback's denylist must name
        if ns and op["op_name"] not in LAYOUT_OPS:
            finals.setdefault(max(ns, key=node_pos.__getitem__), []).append(t)
    found: dict[str, int] = {}
    fused = []
    for node, outs in record.get("nodes", {}).items():
        outs = [original[o] for o in outs if o in original]
        if not outs:
            continue
        tensors = finals.get(node, [])
        if not tensors:
            if any(node in ns for ns in nodes_of.values()):
                fused.append(node)
            continue
        if len(outs) == 1:  # the last of its tensors that fits the shape: what the next node reads
            hit = next((t for t in reversed(tensors) if _in_layout(values[t], reference[outs[0]]) is not None), None)
            if hit is not None:
                found[outs[0]] = hit
            continue
        free = list(tensors)  # several outputs (Split): in order, each the first free tensor of its shape
        for o in outs:
            hit = next((t for t in free if _in_layout(values[t], reference[o]) is not None), None)
            if hit is not None:
                found[o] = hit
                free.remove(hit)
    # A reshape TFLite merged into the next node's own (a Flatten/view followed by the Gemm's input flatten: one RESHAPE
    # named after both) stands for the later node, but that node's output is a later tensor: the reshape's holds this
    # node's output unchanged, a reshape does no arithmetic. (A tensor that did arithmetic, such as a Conv's output
    # folded into HardSigmoid's x/6 + 0.5, stays unmatched.)
    used = set(found.values())
    for node, outs in record.get("nodes", {}).items():
        outs = [original[o] for o in outs if o in original]
        if len(outs) != 1 or outs[0] in found:
            continue
        hit = next((t for op, t in reversed(produced) if op["op_name"] in RESHAPE_OPS and t not in used
                    and node in nodes_of.get(t, ()) and _in_layout(values[t], reference[outs[0]]) is not None), None)
        if hit is not None:
            found[outs[0]] = hit
            used.add(hit)
            if node in fused:
                fused.remove(node)
    return found, nodes_of, fused


def _match_tflite(produced, details, values, reference, order, record=None, io=None, keys_of=_keras_layers) -> Captured:
    """By name first (``record``, the map the conversion wrote; see ``_match_by_name``). What no name resolves — every
    tensor, for a .tflite converted without the map — is matched by what it holds: in execution order, each TFLite op
    output goes to the unmatched ONNX tensor near the last match (graph order) whose shape fits in either layout and
    whose values agree best (cosine). That is biased toward good agreement (a layer int8 broke can be taken for a
    healthy neighbour of the same shape, and a split op's intermediate for its output: on timm's mobilenetv3_small, 12 of
    99 value matches disagree with the names), so every match says how it was made (``matched_by``). Nearest-first
    did worse there (18 of 87). Name matches anchor the search, and tensors a name resolved (including a split op's
    intermediates) are never matched by values to something else. ``io``: ONNX graph outputs → their TFLite tensors,
    by the signature's names."""
    out: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    matched_by: dict[str, str] = {}
    derived: dict[str, list[str]] = {}
    notes: list[str] = []
    by_name: dict[int, str] = {}
    nodes_of: dict[int, set] = {}
    if record:
        found, nodes_of, fused = _match_by_name(produced, details, values, reference, record, keys_of)
        by_name = {t: o for o, t in found.items()}
        if fused:
            notes.append(f"{len(fused)} ONNX node(s) have no TFLite tensor of their own, fused into a later node's op (a Conv "
                         "into its Relu, or into HardSigmoid's scale and shift; the layer shows the later tensor where it "
                         f"has one): {', '.join(fused[:5])}{' …' if len(fused) > 5 else ''}")
    for o, t in (io or {}).items():
        if t not in by_name and o not in by_name.values() and _in_layout(values[t], reference[o]) is not None:
            by_name[t] = o
    pos_of = {name: i for i, name in enumerate(order)}
    named = set(by_name.values())
    source_of: dict[int, str] = {}  # TFLite tensor → the ONNX tensor it holds (or is a re-layout of)
    last = -1
    for op, t in produced:
        if t in by_name:
            onnx_name = by_name[t]
            out[onnx_name] = _in_layout(values[t], reference[onnx_name])
            names[onnx_name], matched_by[onnx_name] = details[t]["name"], "name"
            source_of[t] = onnx_name
            last = max(last, pos_of.get(onnx_name, last))
            continue
        if op["op_name"] in LAYOUT_OPS:
            src = source_of.get(int(op["inputs"][0])) if len(op["inputs"]) else None
            if src is not None and op["op_name"] not in ("QUANTIZE", "DEQUANTIZE"):
                source_of[t] = src
                derived.setdefault(src, []).append(details[t]["name"])
            continue
        if nodes_of.get(t):  # a named node's own intermediate (HardSigmoid's x/6 + 0.5): not another tensor's match
            continue
        ahead, behind = [], []
        for pos in [*range(last + 1, min(last + 1 + WINDOW, len(order))), *range(last, max(last - WINDOW, -1), -1)]:
            onnx_name = order[pos]
            if onnx_name in out or onnx_name in named:
                continue
            ref = reference[onnx_name]
            for arr in _layouts(values[t], ref.shape):
                if arr.shape == ref.shape:
                    (ahead if pos > last else behind).append((_cosine(arr, ref), pos, arr))
        # ahead, the right shape is evidence enough (a layer int8 broke has a poor cosine); behind, only a clear likeness
        # (an intermediate of an op TFLite decomposes, e.g. HardSigmoid's x+3, is not a match)
        best = max([*ahead, *(c for c in behind if c[0] >= BACK_MATCH_COSINE)], key=lambda c: c[0], default=None)
        if best is None:
            continue
        _, pos, arr = best
        onnx_name = order[pos]
        out[onnx_name], names[onnx_name], matched_by[onnx_name] = arr, details[t]["name"], "values"
        source_of[t] = onnx_name
        last = max(last, pos)
    return Captured(out, "", names, derived, notes, matched_by)
