"""Graph lifting: a torch.export program made into an ``nn.Module`` that Torch-Pruning can follow and that trains.

``ExportedProgram.module()`` calls the layers as ATen functions on its weights (``aten.conv2d(x, w, b)``), which
Torch-Pruning cannot follow and which cannot train (``train()`` is refused, batch norm is frozen in inference form).
Each convolution, Linear and batch norm whose weights only it uses becomes a real ``nn.Conv*``/``nn.Linear``/
``nn.BatchNorm*`` module at the name the weights had (``features.0.weight`` -> module ``features.0``), holding the
same tensors; the rest of the graph is kept as it is. :data:`BUILDERS` says which ATen call becomes which module:
a new layer kind is one builder and one row. See docs/architecture.md.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import partial
from typing import Any

from edgeconv.compress.recurrent import flat_recurrent


@dataclass
class Lift:
    """One ATen call made a module: the module, its name in the root, the graph inputs it takes, and the node whose
    uses it takes over (the call itself, or the ``getitem`` that reads the call's first result)."""

    module: Any
    name: str
    inputs: tuple
    replace: Any


class Lifter:
    """The program's graph module being lifted, the new root module its layers go into, and the names taken."""

    def __init__(self, torch, gm):
        self.torch, self.nn, self.gm, self.graph = torch, torch.nn, gm, gm.graph
        self.root = torch.nn.Module()
        self.used: set[str] = set()

    def fetch(self, target: str):
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def attr(self, node):
        """The tensor a ``get_attr`` node reads, when the node has only this one user (else None: the weight is shared)."""
        if getattr(node, "op", None) == "get_attr" and len(node.users) == 1:
            return self.fetch(node.target)
        return None

    def name_for(self, weight_node, kind: str) -> str:
        # "features.0.weight" -> "features.0", "lstm.weight_ih_l0" -> "lstm", "attn.in_proj_weight" -> "attn.in_proj"
        parent, _, last = weight_node.target.rpartition(".")
        if last == "weight" or last.startswith("weight_"):
            base = parent or f"_compress_{kind}"
        else:
            base = ".".join(filter(None, (parent, last.removesuffix("_weight"))))
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def param(self, t):
        return self.nn.Parameter(t.detach().clone(), requires_grad=True)  # a copy: the program stays the source

    def holder(self, dotted: str) -> tuple[Any, str]:
        """The module under the root that holds ``dotted`` (created on the way) and the last part of the name."""
        parts = dotted.split(".")
        holder = self.root
        for p in parts[:-1]:
            if not hasattr(holder, p):
                holder.add_module(p, self.nn.Module())
            holder = getattr(holder, p)
        return holder, parts[-1]

    def swap(self, node, lift: Lift) -> None:
        """Install ``lift.module`` and call it in place of ``node`` (and of the getitem it replaces)."""
        holder, leaf = self.holder(lift.name)
        holder.add_module(leaf, lift.module)
        with self.graph.inserting_before(node):
            new = self.graph.create_node("call_module", lift.name, lift.inputs)  # the name is in the new root only
        new.meta = dict(lift.replace.meta)
        lift.replace.replace_all_uses_with(new)
        if lift.replace is not node:
            self.graph.erase_node(lift.replace)
        self.graph.erase_node(node)

    def keep_attributes(self) -> list[str]:
        """Every tensor the graph still reads moved under the root (parameters copied and trainable). Returns the ATen
        calls that use a parameter as a function argument: the layers left functional."""
        for node in [n for n in self.graph.nodes if n.op == "get_attr" and not n.users]:
            self.graph.erase_node(node)
        functional = []
        for node in self.graph.nodes:
            if node.op != "get_attr":
                continue
            value = self.fetch(node.target)
            holder, leaf = self.holder(node.target)
            if isinstance(value, self.nn.Parameter):
                holder.register_parameter(leaf, self.param(value))
                functional += [f"{u.target} on {node.target}" for u in node.users if u.op == "call_function"]
            elif isinstance(value, self.torch.Tensor):
                holder.register_buffer(leaf, value.detach().clone())
            else:
                setattr(holder, leaf, value)
        return functional


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _conv_module(lf: Lifter, node, args: list, stride, padding, dilation, groups) -> Lift | None:
    w, b = lf.attr(args[1]), (lf.attr(args[2]) if args[2] is not None else None)
    if w is None or (args[2] is not None and b is None) or isinstance(padding, str):
        return None
    cls = {3: lf.nn.Conv1d, 4: lf.nn.Conv2d, 5: lf.nn.Conv3d}.get(w.dim())
    if cls is None:
        return None
    module = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_tuple(stride), padding=_tuple(padding),
                 dilation=_tuple(dilation), groups=groups, bias=b is not None)
    module.weight = lf.param(w)
    if b is not None:
        module.bias = lf.param(b)
    return Lift(module, lf.name_for(args[1], "conv"), (args[0],), node)


def _conv(lf: Lifter, node) -> Lift | None:
    """``aten.conv{1,2,3}d(x, w, b, stride, padding, dilation, groups)``, arguments given or by keyword."""
    args = list(node.args) + [None] * 9
    stride, padding, dilation, groups = (args[3] or 1), (args[4] if args[4] is not None else 0), (args[5] or 1), (args[6] or 1)
    kw = node.kwargs
    return _conv_module(lf, node, args, kw.get("stride", stride), kw.get("padding", padding), kw.get("dilation", dilation),
                        kw.get("groups", groups))


def _convolution(lf: Lifter, node) -> Lift | None:
    """``aten.convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups)``; not transposed."""
    args = list(node.args) + [None] * 9
    stride, padding, dilation, transposed, _, groups = args[3], args[4], args[5], args[6], args[7], args[8]
    if transposed:
        return None
    return _conv_module(lf, node, args, stride, padding, dilation, groups)


def _linear(lf: Lifter, node) -> Lift | None:
    args = list(node.args) + [None] * 3
    w, b = lf.attr(args[1]), (lf.attr(args[2]) if args[2] is not None else None)
    if w is None or (args[2] is not None and b is None):
        return None
    module = lf.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    module.weight = lf.param(w)
    if b is not None:
        module.bias = lf.param(b)
    return Lift(module, lf.name_for(args[1], "linear"), (args[0],), node)


def _bn_module(lf: Lifter, x, w_n, b_n, mean_n, var_n, momentum, eps, replace) -> Lift | None:
    mean, var = lf.attr(mean_n), lf.attr(var_n)
    w = lf.attr(w_n) if w_n is not None else None
    b = lf.attr(b_n) if b_n is not None else None
    rank = x.meta.get("val").dim() if "val" in x.meta else None
    cls = {2: lf.nn.BatchNorm1d, 3: lf.nn.BatchNorm1d, 4: lf.nn.BatchNorm2d, 5: lf.nn.BatchNorm3d}.get(rank)
    if cls is None or mean is None or var is None or (w_n is not None and w is None) or (b_n is not None and b is None):
        return None
    module = cls(mean.shape[0], eps=eps, momentum=momentum, affine=w is not None)
    if w is not None:
        module.weight, module.bias = lf.param(w), lf.param(b)
    module.running_mean.copy_(mean)
    module.running_var.copy_(var)
    return Lift(module, lf.name_for(w_n if w_n is not None else mean_n, "bn"), (x,), replace)


def _batch_norm(lf: Lifter, node) -> Lift | None:
    """``aten.batch_norm(x, w, b, mean, var, training, momentum, eps, ...)`` in inference form."""
    x, w_n, b_n, mean_n, var_n, training, momentum, eps = list(node.args)[:8]
    if training:
        return None
    return _bn_module(lf, x, w_n, b_n, mean_n, var_n, momentum, eps, node)


def _native_batch_norm(lf: Lifter, node) -> Lift | None:
    """``aten._native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)``, whose first result only is read."""
    x, w_n, b_n, mean_n, var_n, momentum, eps = list(node.args)[:7]
    users = list(node.users)
    if any(u.target is not operator.getitem or u.args[1] != 0 for u in users) or len(users) != 1:
        return None
    return _bn_module(lf, x, w_n, b_n, mean_n, var_n, momentum, eps, users[0])


def _affine(lf: Lifter, module, w_n, b_n) -> bool:
    """``module``'s weight and bias set from the graph's (None nodes leave them out); False when one is shared."""
    w = lf.attr(w_n) if w_n is not None else None
    b = lf.attr(b_n) if b_n is not None else None
    if (w_n is not None and w is None) or (b_n is not None and b is None):
        return False
    module.weight = lf.param(w) if w is not None else None
    module.bias = lf.param(b) if b is not None else None
    return True


def _prelu(lf: Lifter, node) -> Lift | None:
    """``aten.prelu(x, w)``: one slope per channel (or one for all)."""
    x, w_n = node.args[:2]
    w = lf.attr(w_n)
    if w is None or w.dim() != 1:
        return None
    module = lf.nn.PReLU(num_parameters=w.numel())
    module.weight = lf.param(w)
    return Lift(module, lf.name_for(w_n, "prelu"), (x,), node)


def _layer_norm(lf: Lifter, node) -> Lift | None:
    """``aten.layer_norm(x, normalized_shape, w, b, eps)``."""
    args = list(node.args) + [None] * 5
    x, shape, w_n, b_n = args[:4]
    eps = node.kwargs.get("eps", args[4] if args[4] is not None else 1e-5)
    if w_n is None:
        return None
    module = lf.nn.LayerNorm(list(shape), eps=eps, elementwise_affine=True, bias=b_n is not None)
    return Lift(module, lf.name_for(w_n, "layer_norm"), (x,), node) if _affine(lf, module, w_n, b_n) else None


def _group_norm(lf: Lifter, node) -> Lift | None:
    """``aten.group_norm(x, groups, w, b, eps)``."""
    args = list(node.args) + [None] * 5
    x, groups, w_n, b_n = args[:4]
    eps = node.kwargs.get("eps", args[4] if args[4] is not None else 1e-5)
    w = lf.attr(w_n) if w_n is not None else None
    if w is None:
        return None
    module = lf.nn.GroupNorm(groups, w.numel(), eps=eps)
    return Lift(module, lf.name_for(w_n, "group_norm"), (x,), node) if _affine(lf, module, w_n, b_n) else None


def _embedding(lf: Lifter, node) -> Lift | None:
    """``aten.embedding(w, indices, padding_idx)``: a lookup table whose width (the embedding dim) prunes."""
    args = list(node.args) + [None] * 3
    w_n, indices, padding_idx = args[:3]
    w = lf.attr(w_n)
    if w is None or w.dim() != 2:
        return None
    pad = padding_idx if isinstance(padding_idx, int) and padding_idx >= 0 else None
    module = lf.nn.Embedding(w.shape[0], w.shape[1], padding_idx=pad)
    module.weight = lf.param(w)
    return Lift(module, lf.name_for(w_n, "embedding"), (indices,), node)


def _recurrent(lf: Lifter, node, kind: str) -> Lift | None:
    """``aten.lstm.input``/``aten.gru.input`` with zero initial states: a :mod:`recurrent` module returning the op's
    flat tuple (output, h_n[, c_n]), which builds its own zero states (no width left written into the graph)."""
    x, hx, params, has_biases, num_layers, _, train, bidirectional, batch_first = node.args[:9]
    states = hx if isinstance(hx, (list, tuple)) else [hx]
    if train or not all(getattr(h, "target", None) == lf.torch.ops.aten.zeros.default for h in states):
        return None
    weights = [lf.attr(p) for p in params]
    if any(w is None for w in weights):
        return None
    gates = 4 if kind == "lstm" else 3
    module = flat_recurrent(lf.torch, kind)(weights[0].shape[1], weights[0].shape[0] // gates, num_layers=num_layers,
                                            bias=has_biases, batch_first=batch_first, bidirectional=bidirectional)
    for name, w in zip(module._flat_weights_names, weights, strict=True):
        setattr(module, name, lf.param(w))
    return Lift(module, lf.name_for(params[0], kind), (x,), node)


# ATen op (its ``.default`` overload) -> the builder of the module that replaces it
BUILDERS = {
    "conv1d": _conv,
    "conv2d": _conv,
    "conv3d": _conv,
    "convolution": _convolution,
    "linear": _linear,
    "batch_norm": _batch_norm,
    "_native_batch_norm_legit_no_training": _native_batch_norm,
    "prelu": _prelu,
    "layer_norm": _layer_norm,
    "group_norm": _group_norm,
    "embedding": _embedding,
}
# ATen op (its ``.input`` overload) -> recurrent kind; the module returns the op's tuple, so its getitems stay
RECURRENT = {"lstm": "lstm", "gru": "gru"}


def trainable_from_program(torch, program):
    """An ``nn.Module`` to prune and fine-tune from a torch.export program (see the module's docstring). Returns the
    module and the ATen calls left functional."""
    lf = Lifter(torch, program.module())
    graph = lf.graph
    for node in [n for n in graph.nodes if n.op == "call_module" and n.target.startswith("_guards")]:
        if not node.users:
            graph.erase_node(node)
    builders = {getattr(torch.ops.aten, op).default: build for op, build in BUILDERS.items()}
    builders |= {getattr(torch.ops.aten, op).input: partial(_recurrent, kind=kind) for op, kind in RECURRENT.items()}
    for node in list(graph.nodes):
        build = builders.get(node.target) if node.op == "call_function" else None
        lift = build(lf, node) if build is not None else None
        if lift is not None:
            lf.swap(node, lift)
    functional = lf.keep_attributes()
    module = torch.fx.GraphModule(lf.root, graph)
    module.graph.eliminate_dead_code()  # the zero states a recurrent layer now builds itself
    module.graph.lint()  # against the new root, which holds the lifted layers
    module.recompile()
    return module.eval(), functional
