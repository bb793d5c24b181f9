"""The canonical ONNX step: what older or odd exporters wrote is upgraded once, so every target sees one clean graph.

:func:`canonicalize` takes the exported graph and, in this order:

1. turns graph inputs that are really constants into initializers (``constant_inputs``: tf2onnx lists a
   ``tf.function``'s captured tensors, e.g. a Keras ``Normalization`` layer's mean and variance, as graph inputs;
   :func:`lifted_constants` recovers their values);
2. takes initializers out of the graph inputs (IR < 4 required every initializer to be listed as an input: they
   are weights, not the model's inputs) and drops inputs no node reads when they are not the model's inputs;
3. upgrades an old opset with ``onnx.version_converter`` (never above the device's ``max_opset``), or lowers a graph
   newer than ``lower_to`` (the device's parser limit: TensorRT 8.2 on Jetson Nano/TX2 reads opset 13, the dynamo
   exporter writes 18) with the same converter, ops whose newer versions only widened their types kept as they are;
4. folds constants and simplifies with onnxslim (weights built at run time: ConstantOfShape, Shape → Gather →
   Concat chains on static shapes, Conv+BatchNorm) — keeping the graph's inputs and outputs (names, order, types,
   dynamic dims) and the source's node names and ``metadata_props`` where a node survives under its name;
5. lists control-flow and recurrent nodes (If/Loop/Scan, LSTM/GRU/RNN) so a target's preflight can refuse them
   with the node named.

Everything it changed is said in :class:`CanonicalRecord` (``manifest["export"]["canonical"]``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import ConversionFailed
from edgeconv.lazy import require, version_of
from edgeconv.onnx_tools import opset_of

# Where an old opset is upgraded to: every target's converter (ONNX Runtime, TensorRT ≥ 8.4, onnx2tf, OpenVINO,
# pnnx) reads 17, and it is what the exporters write by default.
UPGRADE_OPSET = 17
# Below this an opset is "old" and gets upgraded (13: Split/Squeeze/Unsqueeze/ReduceSum take their axes as inputs,
# QuantizeLinear gets per-channel ``axis``; int8 Q/DQ graphs need it).
MIN_OPSET = 13
CONTROL_FLOW_OPS = ("If", "Loop", "Scan", "LSTM", "GRU", "RNN")


@dataclass
class CanonicalRecord:
    """What the canonical step changed; goes into ``manifest["export"]["canonical"]``."""

    changes: list[str] = field(default_factory=list)  # one human sentence per change, in the order they were made
    opset_before: int = 0
    opset_after: int = 0
    ir_before: int = 0
    ir_after: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    # control-flow / recurrent nodes still in the graph, for targets' preflights: [{"node": name, "op": "Loop"}]
    control_flow: list[dict[str, str]] = field(default_factory=list)
    tools: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was looked at and left alone, and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def canonicalize(proto, *, min_opset: int = MIN_OPSET, max_opset: int | None = None, keep_inputs: list[str] | None = None,
                 constant_inputs: dict[str, np.ndarray] | None = None, fold: bool = True, lower_to: int | None = None):
    """The canonical graph of ``proto`` (not modified) and the record of what changed.

    ``min_opset``: an opset below it is upgraded to :data:`UPGRADE_OPSET`, or to ``max_opset`` (the device's limit)
    when that is lower. A graph newer than ``max_opset`` is left alone (the target's preflight refuses it) unless
    ``lower_to`` is given: a graph newer than ``lower_to`` is lowered to it (:func:`lower_opset`).
    ``keep_inputs``: the model's inputs (the source's input names). Graph inputs outside it that no node reads are
    dropped; one that a node reads and that has no value is an error. ``None``: every graph input that is not an
    initializer is a model input. ``constant_inputs``: graph inputs that are constants, with their values.
    ``fold``: run onnxslim (constant folding and simplification); raises MissingDependency when it is not installed.
    """
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    rec = CanonicalRecord(opset_before=opset_of(model), ir_before=int(model.ir_version), nodes_before=len(graph.node))
    rec.tools["onnx"] = onnx.__version__

    _constant_inputs_to_initializers(graph, constant_inputs or {}, rec)
    if _drop_non_model_inputs(graph, keep_inputs, rec) and model.ir_version < 4:
        model.ir_version = 4  # before the converter: at IR < 4 it only sees initializers that are also inputs
    _upgrade_opset(model, min_opset, max_opset, rec)
    if lower_to is not None and opset_of(model) > lower_to:
        lower_opset(model, lower_to, rec)
    _bump_ir(model, rec)
    invariants = _loop_invariants_out_of_state(model.graph)
    if invariants:
        rec.changes.append(f"{invariants} loop-carried value(s) that every Loop iteration passes through unchanged "
                           "(TensorFlow While captures, as tf2onnx writes them) read from the outer scope instead")
    if fold:
        reason = fold_trigger(model.graph)
        if reason is None:
            rec.notes.append("onnxslim not run: nothing to fold or simplify (no Constant, Shape/Size, Identity/Dropout or "
                             "BatchNormalization node, no node computed from weights alone, no unused node)")
        else:
            model = _fold(model, rec)
    _metadata_note(proto, model, restore_node_names(proto, model), rec)
    rec.opset_after = opset_of(model)
    rec.ir_after = int(model.ir_version)
    rec.nodes_after = len(model.graph.node)
    rec.control_flow = control_flow_nodes(model)
    return model, rec


def canonicalize_file(path: Path, **options) -> CanonicalRecord:
    """:func:`canonicalize` the ONNX file at ``path`` in place (weights in ``<name>.data`` beside it over 2 GB)."""
    import onnx

    from edgeconv.onnx_tools import TWO_GB, load_onnx

    model, rec = canonicalize(load_onnx(path), **options)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx.save appends to an existing data file: the old weights would stay in it
    big = model.ByteSize() > TWO_GB
    onnx.save(model, str(path), save_as_external_data=big, location=data.name if big else None)
    return rec


# -- 1. constants an exporter lifted into graph inputs ---------------------------------------------------------------
def _constant_inputs_to_initializers(graph, constants: dict[str, np.ndarray], rec: CanonicalRecord) -> None:
    if not constants:
        return
    from onnx import helper, numpy_helper

    inits = {i.name for i in graph.initializer}
    for vi in list(graph.input):
        if vi.name not in constants:
            continue
        elem = vi.type.tensor_type.elem_type
        value = np.asarray(constants[vi.name])
        if elem:
            value = value.astype(helper.tensor_dtype_to_np_dtype(elem), copy=False)
        graph.input.remove(vi)
        shape = "x".join(map(str, value.shape)) or "scalar"
        what = f"input {vi.name!r} was a constant the exporter lifted into the graph inputs ({shape} {value.dtype})"
        if not _is_read(graph, vi.name):
            rec.changes.append(f"{what}, read by no node: removed")
            continue
        if vi.name not in inits:
            graph.initializer.append(numpy_helper.from_array(value, vi.name))
        rec.changes.append(f"{what}: made a weight")


def _is_read(graph, name: str) -> bool:
    return any(name in n.input for n in graph.node) or any(name in _subgraph_inputs(n) for n in graph.node)


def _subgraph_inputs(node) -> set[str]:
    """Every tensor name the subgraphs of ``node`` read (outer-scope names included)."""
    names: set[str] = set()
    for attr in node.attribute:
        for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for n in g.node:
                names.update(n.input)
                names |= _subgraph_inputs(n)
    return names


# -- 2. initializers listed as inputs (IR < 4), inputs that are not the model's ---------------------------------------
def _drop_non_model_inputs(graph, keep_inputs: list[str] | None, rec: CanonicalRecord) -> bool:
    """Returns whether initializers were taken out of the inputs (the graph then needs IR 4 or newer)."""
    keep = set(keep_inputs) if keep_inputs is not None else None
    inits = {i.name for i in graph.initializer}
    as_inputs = [vi for vi in graph.input if vi.name in inits and (keep is None or vi.name not in keep)]
    if as_inputs:
        for vi in as_inputs:
            graph.input.remove(vi)
        why = f"IR {rec.ir_before}: " if rec.ir_before < 4 else ""
        rec.changes.append(f"{why}{len(as_inputs)} initializer(s) removed from the graph inputs (weights, not model inputs)")
    if keep is None:
        return bool(as_inputs)
    missing_values = []
    for vi in list(graph.input):
        if vi.name in keep or vi.name in inits:
            continue
        if _is_read(graph, vi.name):
            missing_values.append(vi.name)
        else:
            graph.input.remove(vi)
            rec.changes.append(f"graph input {vi.name!r} is not a model input and no node reads it: removed")
    if missing_values:
        raise ConversionFailed(
            f"the exported graph has inputs that are not the model's inputs ({sorted(keep)}) and have no value: "
            f"{missing_values}",
            hint="an exporter lifted constants into graph inputs (tf2onnx does this with a tf.function's captured "
                 "tensors); their values must be given as constant_inputs",
        )
    return bool(as_inputs)


# -- loop invariants --------------------------------------------------------------------------------------------------
def _loop_invariants_out_of_state(graph) -> int:
    """Take the loop-carried values that a Loop body passes through unchanged out of the loop state; returns how many.

    A TensorFlow ``While`` carries everything its body captured (a Keras LSTM/GRU's kernels and biases) as loop
    variables, and tf2onnx writes them as loop-carried ONNX values whose body output is the body input itself.
    OpenVINO's ONNX frontend (2026.4, ``op/loop.cpp``) counts one body parameter too many for each of them and refuses
    the Loop ("loop body graph canonical inputs size (10), does not match the sum of loop carried dependencies and
    two mandatory inputs (7)": a stacked Keras GRU, three pass-through weights). A value every iteration returns
    unchanged is a loop invariant: the body reads it from the outer scope (ONNX's own way for invariants), and
    consumers of its final value read the initial value, which it equals. Nested bodies are handled first."""
    count = 0
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                count += _loop_invariants_out_of_state(sub)
    for node in graph.node:
        if node.op_type != "Loop":
            continue
        body = next(a.g for a in node.attribute if a.name == "body")
        n_state = len(node.input) - 2
        body_defined = {o for n in body.node for o in n.output} | {i.name for i in body.initializer}
        graph_outputs = {o.name for o in graph.output}
        drop = []
        for k in range(n_state):
            b_in, b_out, init = body.input[2 + k].name, body.output[1 + k].name, node.input[2 + k]
            if b_in != b_out or not init or init in body_defined or node.output[k] in graph_outputs:
                continue
            drop.append(k)
        if not drop:
            continue
        renames = {body.input[2 + k].name: node.input[2 + k] for k in drop}
        finals = {node.output[k]: node.input[2 + k] for k in drop}
        _rename_reads(body, renames)
        for other in graph.node:
            if other is not node:
                for i, name in enumerate(other.input):
                    if name in finals:
                        other.input[i] = finals[name]
                _rename_reads_in_subgraphs(other, finals)
        keep = [k for k in range(n_state) if k not in drop]
        b_inputs = list(body.input[:2]) + [body.input[2 + k] for k in keep]
        b_outputs = [body.output[0]] + [body.output[1 + k] for k in keep] + list(body.output[1 + n_state:])
        n_inputs = list(node.input[:2]) + [node.input[2 + k] for k in keep]
        n_outputs = [node.output[k] for k in keep] + list(node.output[n_state:])
        del body.input[:], body.output[:], node.input[:], node.output[:]
        body.input.extend(b_inputs), body.output.extend(b_outputs), node.input.extend(n_inputs), node.output.extend(n_outputs)
        count += len(drop)
    return count


def _rename_reads(graph, renames: dict[str, str]) -> None:
    """Rename the tensors that the nodes of ``graph`` (and of its subgraphs) read."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
        _rename_reads_in_subgraphs(node, renames)


def _rename_reads_in_subgraphs(node, renames: dict[str, str]) -> None:
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            shadowed = {i.name for i in sub.input} | {o for n in sub.node for o in n.output}
            _rename_reads(sub, {k: v for k, v in renames.items() if k not in shadowed})


# -- 3. opset upgrade ------------------------------------------------------------------------------------------------
def target_opset(have: int, min_opset: int = MIN_OPSET, max_opset: int | None = None) -> int:
    """The opset the canonical graph gets: ``have`` unless it is below ``min_opset``; never above ``max_opset``,
    never lower than ``have``."""
    if have >= min_opset:
        return have
    return max(upgrade_ceiling(max_opset), have)


def upgrade_ceiling(max_opset: int | None) -> int:
    """The opset an old graph is upgraded to for a device whose parser reads up to ``max_opset``: the only way
    ``max_opset`` changes what the canonical step does."""
    return UPGRADE_OPSET if max_opset is None else min(UPGRADE_OPSET, max_opset)


def _upgrade_opset(model, min_opset: int, max_opset: int | None, rec: CanonicalRecord) -> None:
    have = opset_of(model)
    want = target_opset(have, min_opset, max_opset)
    if want == have:
        return
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, want)
    except Exception as exc:
        raise ConversionFailed(f"onnx.version_converter cannot upgrade the graph from opset {have} to {want}: "
                               f"{_converter_culprit(model, str(exc))}",
                               hint="re-export the model at a newer opset (--opset for torch sources)") from exc
    renamed = _restore_tensor_names(model, converted)
    model.CopyFrom(converted)
    rec.changes.append(f"opset {have} → {want} (onnx.version_converter)")
    if renamed:
        rec.changes.append(f"{renamed} tensor name(s) the version converter had replaced (_v_N) given back their source names")


# Ops whose newer versions only widened their types, but whose values or attributes mean more: never kept as they are.
LOWER_NEVER_KEEP = ("Pad", "ScatterElements", "ScatterND", "If", "Loop", "Scan")
HELD_DOMAIN = "edgeconv.held"  # where kept nodes wait while onnx.version_converter lowers the others


def lower_opset(model, want: int, rec: CanonicalRecord) -> None:
    """Lower ``model`` (edited in place) to opset ``want`` with ``onnx.version_converter``. Its C++ converter has no
    downward adapter for many ops whose newer versions only widened their types (Relu-14 added integer types, Add-14
    small integers, Identity-16 optionals): such a node, when its tensors' types are ones the old version takes and
    its signature (inputs, outputs, attributes) is the old one, is the same node at ``want`` and is kept as it is (the
    converter does not see it); the converter lowers the rest. An op it cannot lower is a ConversionFailed (exit 4)
    naming the node. The canonical graph is then checked against the source like every other change."""
    from onnx import version_converter

    have = opset_of(model)
    idle = _drop_idle_allowzero(model.graph) if want < 14 else 0
    kept = _type_only_nodes(model, have, want)
    for node in kept:
        node.domain = HELD_DOMAIN
    model.opset_import.add(domain=HELD_DOMAIN, version=1)
    try:
        converted = version_converter.convert_version(model, want)
    except Exception as exc:  # noqa: BLE001 - the converter's C++ assertions arrive as RuntimeError or others
        _release_held(model)
        raise ConversionFailed(
            f"onnx.version_converter cannot lower the graph from opset {have} to {want}: {_converter_culprit(model, str(exc))}",
            hint=f"the device's parser reads opset {want} at most: replace that op in the model, or export a TorchScript "
                 "source (.pt) with --opset, which writes the old opset directly") from exc
    _release_held(model)
    _release_held(converted)
    renamed = _restore_tensor_names(model, converted)
    model.CopyFrom(converted)
    held = ", ".join(f"{c} {op}" for op, c in sorted(Counter(n.op_type for n in kept).items()))
    rec.changes.append(f"opset {have} → {want} (onnx.version_converter, lowered to the device's limit)"
                       + (f"; kept as they are (newer versions only widened their types): {held}" if held else ""))
    if idle:
        rec.changes.append(f"allowzero=1 dropped from {idle} Reshape node(s) whose constant shape has no 0 (it changes "
                           "nothing there; Reshape before opset 14 has no such attribute)")
    if renamed:
        rec.changes.append(f"{renamed} tensor name(s) the version converter had replaced (_v_N) given back their source names")
    model.ir_version = min(int(model.ir_version), _lowest_ir(model))  # for older parsers; _bump_ir records it


def _drop_idle_allowzero(graph) -> int:
    """Reshape's ``allowzero=1`` (torch's exporter writes it) means something only when the shape holds a 0: where the
    shape is a constant without one, the attribute is dropped, so the node is a Reshape of any opset. Returns how many."""
    from onnx import numpy_helper

    consts = {i.name: i for i in graph.initializer}
    consts |= {n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"}
    count = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        for i, attr in enumerate(node.attribute):
            if attr.name == "allowzero" and attr.i == 1 and 0 not in numpy_helper.to_array(consts[node.input[1]]).tolist():
                del node.attribute[i]
                count += 1
                break
    return count


def _release_held(model) -> None:
    """The nodes :func:`lower_opset` kept out of the converter's sight back in the default domain."""
    for node in model.graph.node:
        if node.domain == HELD_DOMAIN:
            node.domain = ""
    for i, o in enumerate(model.opset_import):
        if o.domain == HELD_DOMAIN:
            del model.opset_import[i]
            return


def _lowest_ir(model) -> int:
    from onnx import helper

    return max(4, helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))


def _type_only_nodes(model, have: int, want: int) -> list:
    """Top-level default-domain nodes whose op at opset ``want`` has the same signature as at ``have`` and accepts
    the node's tensor types (from shape inference): the node is valid at ``want`` unchanged."""
    from onnx import defs

    types = _tensor_types(model)
    kept = []
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in LOWER_NEVER_KEEP:
            continue
        try:
            new, old = defs.get_schema(node.op_type, have, ""), defs.get_schema(node.op_type, want, "")
        except defs.SchemaError:
            continue
        if new.since_version == old.since_version:
            continue  # the same version at both opsets: nothing to lower (the converter just relabels it)
        if _same_signature(new, old, node) and _types_allowed(old, node, types):
            kept.append(node)
    return kept


def _same_signature(new, old, node) -> bool:
    """The same inputs and outputs at both versions, and every attribute the node sets means the same in the old one:
    an attribute the newer version added (Reshape-14's ``allowzero``) only where the node leaves it at its default."""
    from onnx import helper

    def io(schema) -> tuple:
        return [(p.name, p.option) for p in schema.inputs], [(p.name, p.option) for p in schema.outputs]

    if io(new) != io(old):
        return False
    for name, a in old.attributes.items():
        b = new.attributes.get(name)
        if b is None or (a.type, a.required) != (b.type, b.required):
            return False
    for attr in node.attribute:
        if attr.name in old.attributes:
            continue
        default = new.attributes[attr.name].default_value if attr.name in new.attributes else None
        if default is None or not default.name or helper.get_attribute_value(default) != helper.get_attribute_value(attr):
            return False
    return True


def _tensor_types(model) -> dict[str, str]:
    """``name -> "tensor(float)"`` for every tensor of the top-level graph whose element type shape inference knows."""
    from onnx import TensorProto, shape_inference

    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            out[vi.name] = f"tensor({TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()})"
    for init in g.initializer:
        out[init.name] = f"tensor({TensorProto.DataType.Name(init.data_type).lower()})"
    return out


def _types_allowed(schema, node, types: dict[str, str]) -> bool:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    for formals, names in ((schema.inputs, node.input), (schema.outputs, node.output)):
        for i, name in enumerate(names):
            if not name:
                continue
            if not formals or name not in types:
                return False
            formal = formals[min(i, len(formals) - 1)]
            if types[name] not in allowed.get(formal.type_str, {formal.type_str}):
                return False
    return True


def _restore_tensor_names(before, after) -> int:
    """onnx.version_converter names the output of every node it replaces ``_v_N``: give such tensors back their
    names, found where a node that kept its name reads or writes them. Top-level graph only. Returns the count."""
    def tensors(g) -> set[str]:
        names = {v.name for v in list(g.input) + list(g.output)} | {i.name for i in g.initializer}
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
        return names

    old, new = tensors(before.graph), tensors(after.graph)
    new_by_name = {n.name: n for n in after.graph.node if n.name}
    rename: dict[str, str] = {}
    for n0 in before.graph.node:
        n1 = new_by_name.get(n0.name) if n0.name else None
        if n1 is None:
            continue
        for a, b in list(zip(n1.input, n0.input)) + list(zip(n1.output, n0.output)):
            if a and b and a != b and a not in old and b not in new and b not in rename.values():
                rename.setdefault(a, b)
    if not rename:
        return 0
    for n in after.graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = rename.get(name, name)
        for i, name in enumerate(n.output):
            n.output[i] = rename.get(name, name)
    for v in after.graph.value_info:
        v.name = rename.get(v.name, v.name)
    return len(rename)


def _converter_culprit(model, message: str) -> str:
    """The converter's C++ assertion text names the op but not the node (and sometimes mangles the op name with the
    versions appended, e.g. ``FooBar917``): name the nodes whose op it mentions, and ops ONNX has no schema for."""
    from onnx import defs

    text = first_line(message, 300) or "no message"
    nodes = [n for n in model.graph.node if n.domain in ("", "ai.onnx")]
    named = [n for n in nodes if n.op_type and re.search(rf"\b{re.escape(n.op_type)}\b", message)]
    unknown = [n for n in nodes if not defs.has(n.op_type)]
    culprits = {(n.name or "(unnamed)", n.op_type) for n in named + unknown}
    if not culprits:
        return text
    listed = ", ".join(f"node {name!r} ({op})" for name, op in sorted(culprits)[:10])
    return f"{listed} — {text}"


def _bump_ir(model, rec: CanonicalRecord) -> None:
    from onnx import helper

    need = max(int(model.ir_version), helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))
    model.ir_version = need
    if need != rec.ir_before:
        rec.changes.append(f"IR version {rec.ir_before} → {need} (the oldest that opset {opset_of(model)} allows"
                           + (" without initializers listed as inputs)" if rec.ir_before < 4 and need == 4 else ")"))


# -- 4. folding with onnxslim ----------------------------------------------------------------------------------------
# Nodes that onnxslim folds or fuses away wherever they are: constants kept as nodes, shape arithmetic that static
# shapes decide, no-ops at inference, BatchNormalization (into the Conv before it).
FOLD_OPS = ("Constant", "ConstantOfShape", "Shape", "Size", "Identity", "Dropout", "BatchNormalization")


def fold_trigger(graph) -> str | None:
    """Why onnxslim has work on this graph, or None when it has none: then it is not run (importing it alone costs
    half a second). Conservative: any subgraph, foldable op, node computed from weights alone or unused node."""
    consts = {i.name for i in graph.initializer} | {""}
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for n in graph.node:
        if any(a.g.node or a.graphs for a in n.attribute):
            return f"node {n.name or n.op_type} has a subgraph"
        if n.op_type in FOLD_OPS:
            return f"{n.op_type} node {n.name!r}"
        if n.input and all(i in consts for i in n.input):
            return f"{n.op_type} node {n.name!r} computes from weights alone"
        if not any(o in used for o in n.output):
            return f"{n.op_type} node {n.name!r} is not used"
    return None


def _fold(model, rec: CanonicalRecord):
    import onnx

    onnxslim = require("onnxslim", why="to fold constants in the canonical ONNX graph")
    rec.tools["onnxslim"] = version_of("onnxslim")
    before = onnx.ModelProto()
    before.CopyFrom(model)
    try:
        slim = onnxslim.slim(model)  # its freeze() edits the graph it is given: ``before`` is the untouched copy
    except Exception as exc:
        raise ConversionFailed(f"onnxslim {rec.tools['onnxslim']} could not fold the graph: {type(exc).__name__}: "
                               f"{first_line(str(exc), 300)}") from exc
    if slim is None:
        raise ConversionFailed(f"onnxslim {rec.tools['onnxslim']} returned no graph")
    _restore_interface(before, slim, rec)
    ops_before = Counter(n.op_type for n in before.graph.node)
    ops_after = Counter(n.op_type for n in slim.graph.node)
    n0, n1 = len(before.graph.node), len(slim.graph.node)
    if ops_before != ops_after:
        gone = ops_before - ops_after
        new = ops_after - ops_before
        diff = ", ".join([f"−{c} {op}" for op, c in gone.most_common()] + [f"+{c} {op}" for op, c in new.most_common()])
        rec.changes.append(f"constants folded and graph simplified (onnxslim {rec.tools['onnxslim']}): "
                           f"{n0} → {n1} nodes ({diff})")
    return slim


def _restore_interface(before, after, rec: CanonicalRecord) -> None:
    """The graph's inputs and outputs as they were: names, order, types and dynamic dims (onnxslim drops inputs no
    node reads and may rewrite dims through its own shape inference); model-level fields it does not carry over."""
    g0, g1 = before.graph, after.graph
    out_names = [o.name for o in g1.output]
    if out_names != [o.name for o in g0.output]:
        raise ConversionFailed(f"onnxslim changed the graph outputs from {[o.name for o in g0.output]} to {out_names}")
    del g1.input[:]
    g1.input.extend(g0.input)
    del g1.output[:]
    g1.output.extend(g0.output)
    inits = {i.name for i in g1.initializer}
    for o in g0.output:
        if o.name in inits:
            rec.changes.append(f"output {o.name!r} is a constant: it does not depend on the inputs")
    for name in ("doc_string", "domain", "model_version"):
        setattr(after, name, getattr(before, name))
    after.graph.name = before.graph.name
    have_props = {p.key for p in after.metadata_props}
    for p in before.metadata_props:
        if p.key not in have_props:
            after.metadata_props.add(key=p.key, value=p.value)


def restore_node_names(source, model) -> tuple[int, int]:
    """Give ``model``'s nodes back the names, ``metadata_props`` and ``doc_string`` they had in ``source``.

    onnx.version_converter drops every node's ``metadata_props`` (where torch's dynamo exporter writes the source
    module and stack trace) and the name of each node it replaces (Upsample → Resize); onnxslim's graph IR drops
    ``metadata_props`` and ``doc_string`` too, and names a fused node after its first input node's output tensor
    (Conv+BatchNorm → ``/c1/Conv_output_0``). A node is matched to its source node by name, else by the tensor it
    writes (or the tensor its fused name says). Returns (nodes with metadata now, nodes with metadata in source).
    """
    src_nodes = list(source.graph.node)
    by_name = {n.name: n for n in src_nodes if n.name}
    by_output = {n.output[0]: n for n in src_nodes if n.output and n.output[0]}
    taken = {n.name for n in model.graph.node if n.name}
    for n in model.graph.node:
        orig = by_name.get(n.name) if n.name else None
        if orig is None:
            orig = by_output.get(n.name) or (by_output.get(n.output[0]) if n.output else None)
            if orig is None or not orig.name or orig.name in taken:
                continue
            taken.discard(n.name)
            n.name = orig.name
            taken.add(orig.name)
        if not n.metadata_props:
            n.metadata_props.extend(orig.metadata_props)
        if not n.doc_string:
            n.doc_string = orig.doc_string
    had = sum(1 for n in src_nodes if n.metadata_props)
    kept = sum(1 for n in model.graph.node if n.metadata_props)
    return kept, had


def _metadata_note(source, model, counts: tuple[int, int], rec: CanonicalRecord) -> None:
    kept, had = counts
    if not had or kept >= had:
        return
    names = {n.name for n in model.graph.node}
    gone = Counter(n.op_type for n in source.graph.node if n.metadata_props and n.name not in names)
    listed = ", ".join(f"{c} {op}" for op, c in gone.most_common())
    new = sum(1 for n in model.graph.node if not n.metadata_props)
    rec.changes.append(f"source metadata (metadata_props) kept on {kept} of the {had} nodes that had it"
                       + (f"; folded or fused away: {listed}" if listed else "")
                       + (f"; {new} node(s) made by fusions have none" if new else ""))


# -- 5. control flow -------------------------------------------------------------------------------------------------
def control_flow_nodes(model) -> list[dict[str, str]]:
    """Control-flow and recurrent nodes, nested ones included (``node`` is ``outer/inner`` for those)."""
    found: list[dict[str, str]] = []

    def walk(nodes, prefix: str) -> None:
        for n in nodes:
            name = n.name or f"({n.op_type})"
            if n.op_type in CONTROL_FLOW_OPS and n.domain in ("", "ai.onnx"):
                found.append({"node": prefix + name, "op": n.op_type})
            for attr in n.attribute:
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    walk(g.node, f"{prefix}{name}/")

    walk(model.graph.node, "")
    return found


def scalar_if_outputs_as_rank1(model) -> list[str]:
    """Every ``If`` (nested ones included) whose output is 0-d in both branches gets it as ``[1]`` and reshaped back to
    0-d after the ``If``: the same values, both branches kept. onnx2tf 1.28 evaluates both branches and picks with
    Keras' ``switch``, which refuses a condition of higher rank than the branch outputs; onnx2tf writes a 0-d input
    (a sample rate the condition is computed from) as ``[1]``, so an ``If`` on it with 0-d branch outputs failed
    ("Rank of `condition` should be less than or equal to rank of `then_expression`"). Returns the ``If`` nodes
    rewritten; rewrites ``model`` in place (docs/architecture.md)."""
    from onnx import TensorProto, helper

    changed: list[str] = []

    def shape_const(graph, name: str, dims: list[int]) -> str:
        graph.node.append(helper.make_node("Constant", [], [name], name=name, value=helper.make_tensor(
            name, TensorProto.INT64, [len(dims)], dims)))
        return name

    def visit(graph) -> None:
        nodes = list(graph.node)
        del graph.node[:]
        for node in nodes:
            for attr in node.attribute:
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    visit(g)
            graph.node.append(node)
            node = graph.node[-1]  # the graph's copy (append copies a message)
            if node.op_type != "If" or node.domain not in ("", "ai.onnx"):
                continue
            branches = [a.g for a in node.attribute if a.name in ("then_branch", "else_branch")]
            name = node.name or node.output[0]
            for i, out in enumerate(node.output):
                if not out or not all(_declared_0d(b.output[i]) for b in branches):
                    continue
                for b in branches:
                    vi = b.output[i]
                    wide = f"{name}/{b.name}/{vi.name}/rank1"
                    b.node.append(helper.make_node("Reshape", [vi.name, shape_const(b, wide + "_shape", [1])], [wide],
                                                   name=wide))
                    vi.CopyFrom(helper.make_tensor_value_info(wide, vi.type.tensor_type.elem_type, [1]))
                elem = branches[0].output[i].type.tensor_type.elem_type
                node.output[i] = f"{out}/rank1"
                graph.value_info.append(helper.make_tensor_value_info(node.output[i], elem, [1]))
                graph.node.append(helper.make_node("Reshape", [node.output[i], shape_const(graph, f"{out}/0d_shape", [])],
                                                   [out], name=f"{out}/0d"))
                changed.append(name)

    visit(model.graph)
    return sorted(set(changed))


def _declared_0d(value_info) -> bool:
    t = value_info.type
    return t.HasField("tensor_type") and t.tensor_type.HasField("shape") and not t.tensor_type.shape.dim


# -- tf2onnx: constants it lifts into graph inputs --------------------------------------------------------------------
def lifted_constants(fn, input_signature) -> dict[str, np.ndarray]:
    """Values of the graph inputs tf2onnx invents for ``fn`` (a ``tf.function``): its captured tensors.

    ``tf2onnx.convert.from_function`` declares every non-resource input of the concrete function as an ONNX graph
    input — the model's own inputs, and also the tensors the function captured by value. Keras 3's
    ``Normalization`` keeps its adapted (or given) mean and variance as such tensors, so its ONNX graph asks for
    ``…/normalization/Sub/y:0`` and ``…/Sqrt/x:0`` as inputs (read by a node, or by none once TensorFlow's
    optimizer folded them). The names are the capture placeholders' names, which tf2onnx keeps. Variables
    (resource captures) are frozen into initializers by tf2onnx and are not listed here.
    """
    import tensorflow as tf

    concrete = fn.get_concrete_function(*input_signature)  # the one from_function traced: tf.function caches it
    out = {}
    for external, internal in concrete.graph.captures:
        if internal.dtype == tf.resource or not hasattr(external, "numpy"):
            continue
        out[internal.name] = np.asarray(external.numpy())
    return out
