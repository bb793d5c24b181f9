"""An fp16 ONNX graph with some nodes kept in fp32: what the onnx target's fp16 artifact and the Jetson bundle's strongly
typed TensorRT graph are (edgeconv/convert/fp16_fallback.py keeps the layers; docs/architecture.md).

ONNX Runtime's ``convert_float_to_float16(node_block_list=...)`` keeps the listed nodes' math in fp32 but still rounds
through fp16 around each of them: it converts their weights to fp16 and casts them back, and casts every blocked
node's output to fp16 and back even when the next node is blocked too, so a value past 65504 still overflows between
two fp32 nodes. ``half_with_fp32_nodes`` undoes both: blocked nodes read the original fp32 weights and each other's
outputs directly; the graph casts only where fp16 and fp32 parts meet.
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
