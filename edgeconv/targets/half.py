"""An fp16 ONNX graph with some nodes kept in fp32: what the onnx target's fp16 artifact and the Jetson bundle's strongly
typed TensorRT graph are (edgeconv/convert/fp16_fallback.py keeps the layers; docs/architecture.md).

ONNX Runtime's ``convert_float_to_float16(node_block_list=...)`` keeps the listed nodes' math in fp32 but still rounds
through fp16 around each of them: it converts their weights to fp16 and casts them back, and casts every blocked
node's output to fp16 and back even when the next node is blocked too, so a value past 65504 still overflows between
two fp32 nodes. ``half_with_fp32_nodes`` undoes both: blocked nodes read the original fp32 weights and each other's
outputs directly; the graph casts only where fp16 and fp32 parts meet.

TFLite's float16 model (TFLiteConverter ``supported_types=[tf.float16]``) stores each float weight as an fp16 constant
read through a DEQUANTIZE op, and has no per-op denylist for it. ``tflite_with_fp32_ops`` rewrites that flatbuffer: the
ops that compute the kept nodes read their weights in fp32, taken from the same SavedModel converted without
optimizations (TFLiteConverter names a weight the same in both). LiteRT's CPU path (XNNPACK) computes an fp16-weight
model's activations in fp32 unless told otherwise (TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16, or fp16 hardware with the
model's reduced-precision metadata, which edgeconv does not write), so in that model only the weights are fp16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _float(model) -> dict[str, Any]:
    from onnx import TensorProto

    return {i.name: i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}


def half_with_fp32_nodes(src: Path, blocked: list[str]):
    """``src`` (fp32) converted to fp16 with float32 inputs and outputs, the ``blocked`` nodes (by name) in fp32."""
    import onnx
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import convert_float_to_float16

    original = onnx.load(str(src))
    fp32_weights = _float(original)
    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, node_block_list=list(blocked) or None)
    if not blocked:
        sort_nodes(half.graph)
        return half
    graph = half.graph
    cast_to = {n.output[0]: (n.input[0], n.attribute[0].i) for n in graph.node if n.op_type == "Cast"}
    names = set(blocked)
    # a blocked node reads x through Cast(fp32)(Cast(fp16)(x)) where x is another blocked node's output: read x itself;
    # and its weights through Cast(fp32)(w16): read the original fp32 weight
    restored: dict[str, str] = {}
    for node in graph.node:
        if node.name not in names:
            continue
        for k, inp in enumerate(node.input):
            if cast_to.get(inp, (None, None))[1] != TensorProto.FLOAT:
                continue
            mid = cast_to[inp][0]
            if mid in fp32_weights:
                restored[mid] = f"{mid}.fp32"
                node.input[k] = restored[mid]
            elif cast_to.get(mid, (None, None))[1] == TensorProto.FLOAT16:
                node.input[k] = cast_to[mid][0]
    for name, new in restored.items():
        w = onnx.TensorProto()
        w.CopyFrom(fp32_weights[name])
        w.name = new
        graph.initializer.append(w)
    _prune(half)
    _restore_names(graph)
    return half


CAST_SUFFIX = "_cast_to_fp16"  # the converter renames a blocked node's fp32 output X to X_cast_to_fp16, Cast(X) → X


def _restore_names(graph) -> None:
    """A blocked node's output whose fp16 copy nothing reads any more gets its own name back (what edgeconv debug
    matches the fp32 graph's tensors by)."""
    produced = {o for n in graph.node for o in n.output}
    renames = {o: o[: -len(CAST_SUFFIX)] for o in produced if o.endswith(CAST_SUFFIX) and o[: -len(CAST_SUFFIX)] not in produced}
    for vi in [v for v in graph.value_info if v.name in renames or v.name in renames.values()]:
        graph.value_info.remove(vi)  # the fp16 copy's type no longer holds
    for n in graph.node:
        for seq in (n.input, n.output):
            for k, name in enumerate(seq):
                if name in renames:
                    seq[k] = renames[name]


def _prune(model) -> None:
    """Drop the nodes and initializers nothing reads any more (the casts the rewiring bypassed)."""
    graph = model.graph
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    sort_nodes(graph)


def sort_nodes(graph) -> None:
    """Nodes in topological order (the converter appends its casts at the end; TensorRT's parser reads in order)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # a cycle or an input from outside: leave the rest as it was
            ordered += pending
            break
        for n in ready:
            ordered.append(n)
            known.update(n.output)
            pending.remove(n)
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _opcode(model, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def _op_layers(name: bytes) -> set[str]:
    """``model_2/tf.nn.relu_1/Relu;model_2/tf.nn.convolution_1/convolution`` → the Keras layers of every fused part."""
    return {part.split("/")[1] for part in name.decode().split(";") if part.count("/") >= 1}


def tflite_with_fp32_ops(fp16: bytes, fp32: bytes, nodes: set[str], layer_node: dict[str, str]) -> tuple[bytes, dict[str, Any]]:
    """The fp16 TFLite model with the ops that compute ``nodes`` (ONNX node names; ``layer_node``: onnx2tf's Keras layer
    → ONNX node map, edgeconv/debug/capture.py) reading their weights in fp32 from ``fp32``, the DEQUANTIZE ops nothing
    reads any more dropped. Returns the model and ``{ops, weights}``: the ops changed and the weights now in fp32."""
    import copy

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils as fb

    half, full = fb.read_model_from_bytearray(bytearray(fp16)), fb.read_model_from_bytearray(bytearray(fp32))
    dequantize = schema.BuiltinOperator.DEQUANTIZE
    report: dict[str, Any] = {"ops": [], "weights": []}
    for g16, g32 in zip(half.subgraphs, full.subgraphs, strict=True):
        weights32 = {t.name: t for t in g32.tensors if t.type == schema.TensorType.FLOAT32 and t.buffer > 0
                     and full.buffers[t.buffer].data is not None and len(full.buffers[t.buffer].data)}
        made_by = {int(o): op for op in g16.operators for o in op.outputs}
        for op in g16.operators:
            names = [g16.tensors[o].name for o in op.outputs]
            if _opcode(half, op) == dequantize or not {layer_node.get(x) for n in names for x in _op_layers(n)} & nodes:
                continue
            for k, i in enumerate(op.inputs):
                src = made_by.get(int(i))
                if src is None or _opcode(half, src) != dequantize:
                    continue
                w16 = g16.tensors[src.inputs[0]]
                twin = weights32.get(w16.name)
                if w16.type != schema.TensorType.FLOAT16 or twin is None or list(twin.shape) != list(w16.shape):
                    continue
                half.buffers.append(copy.deepcopy(full.buffers[twin.buffer]))
                t = copy.deepcopy(twin)
                t.buffer, t.name = len(half.buffers) - 1, twin.name + b"_fp32"
                g16.tensors.append(t)
                op.inputs[k] = len(g16.tensors) - 1
                report["weights"].append(twin.name.decode())
                if names[0].decode() not in report["ops"]:
                    report["ops"].append(names[0].decode())
        _drop_dead_dequantize(half, g16, dequantize)
    return bytes(fb.convert_object_to_bytearray(half)), report


def _drop_dead_dequantize(model, graph, dequantize: int) -> None:
    """The DEQUANTIZE ops nothing reads any more go, and the fp16 weights only they read with them (their buffers
    emptied: the tensor stays, unread, so no index moves)."""
    read = {int(i) for op in graph.operators for i in op.inputs} | {int(o) for o in graph.outputs}
    dead = [op for op in graph.operators if _opcode(model, op) == dequantize and not any(int(o) in read for o in op.outputs)]
    graph.operators = [op for op in graph.operators if not any(op is d for d in dead)]
    still = {int(i) for op in graph.operators for i in op.inputs}
    for op in dead:
        w = int(op.inputs[0])
        shared = any(t.buffer == graph.tensors[w].buffer for k, t in enumerate(graph.tensors) if k != w)
        if w not in still and not shared:
            model.buffers[graph.tensors[w].buffer].data = None
