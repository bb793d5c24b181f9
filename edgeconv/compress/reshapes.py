"""Widths written into a lifted program's graph, made safe for channel pruning (docs/architecture.md, "compress").

torch.export writes every reshape with its target shape as numbers (``view(x, [-1, 2048])``), so a graph pruned
by Torch-Pruning stops running where a pruned width meets one. :func:`derive_reshapes` rewrites each reshape whose
shape change is a merge of dimensions (``flatten``) or inserts/drops size-1 dimensions (``unsqueeze``/``squeeze``)
into that form, which reads its widths from its input; a split of one dimension into several (attention heads,
channel shuffles, ``chunk``) cannot be derived, so :func:`pinned_nodes` names it, and the layers whose channels
reach it (:func:`producers`) keep their width. The pruned model is run before it is written.
"""

from __future__ import annotations

from typing import Any

_RESHAPES = ("view", "reshape", "_unsafe_view")
_SPLITS = ("split", "split_with_sizes", "unflatten", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle")


def _shape(node) -> list[int] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    shape = getattr(val, "shape", None)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return list(shape)


def _aligned(s: list[int], o: list[int]) -> tuple[int, list[int], list[int]]:
    """Where ``s`` becomes ``o``: the common prefix length and the differing middles of each."""
    p = 0
    while p < min(len(s), len(o)) and s[p] == o[p]:
        p += 1
    q = 0
    while q < min(len(s), len(o)) - p and s[len(s) - 1 - q] == o[len(o) - 1 - q]:
        q += 1
    return p, s[p:len(s) - q], o[p:len(o) - q]


def _derived(aten, x, s: list[int], o: list[int]) -> tuple[Any, tuple] | None:
    """The call that turns shape ``s`` into ``o`` reading widths from its input, or None (a split)."""
    p, ms, mo = _aligned(s, o)
    if not ms and not mo:
        return None if s != o else (aten.alias.default, (x,))
    if len(mo) == 1 and len(ms) >= 1:
        return aten.flatten.using_ints, (x, p, p + len(ms) - 1)
    if not ms and all(d == 1 for d in mo) and len(mo) == 1:
        return aten.unsqueeze.default, (x, p)
    if not mo and all(d == 1 for d in ms):
        return aten.squeeze.dims, (x, list(range(p, p + len(ms))))
    return None


def derive_reshapes(torch, gm) -> tuple[list[str], list[tuple[Any, str]]]:
    """Every reshape of ``gm`` with a derivable shape change rewritten in place (see the module's docstring). Returns the
    names of those rewritten and the nodes that keep a written width, each with the reason."""
    aten = torch.ops.aten
    reshapes = {getattr(aten, op).default for op in _RESHAPES}
    packets = [getattr(aten, op) for op in _SPLITS if hasattr(aten, op)]
    splits = {getattr(packet, o) for packet in packets for o in packet.overloads()}
    rewritten, pinned = [], []
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in splits:
            pinned.append((node, f"{node.name} ({node.target}) splits a dimension into sizes written in the graph"))
            continue
        if node.target not in reshapes:
            continue
        s, o = _shape(node.args[0]), _shape(node)
        call = _derived(aten, node.args[0], s, o) if s is not None and o is not None else None
        if call is None:
            pinned.append((node, f"{node.name} reshapes {s} to {o}: a split whose sizes the pruned widths do not give"))
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(call[0], call[1])
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        rewritten.append(node.name)
    gm.graph.lint()
    gm.recompile()
    return rewritten, pinned


def functional_nodes(torch, gm) -> list[tuple[Any, str]]:
    """Calls that use a parameter as a plain argument (a layer left as a function): their inputs keep their width."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        params = [a for a in node.args if getattr(a, "op", None) == "get_attr"
                  and isinstance(_fetch(gm, a.target), torch.nn.Parameter)]
        if params:
            found.append((node, f"{node.target} on {params[0].target} stays a function on raw weights"))
    return found


def _fetch(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def producers(gm, node, roots: tuple) -> list[str]:
    """The layers (modules of the types ``roots``) whose output channels reach ``node``, walking back through every
    other call (activations, norms, element-wise ops, views) to the nearest such layer on each path."""
    found, seen = [], set()
    stack = [a for a in node.all_input_nodes]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), roots):
            if n.target not in found:
                found.append(n.target)
            continue
        stack.extend(n.all_input_nodes)
    return found
