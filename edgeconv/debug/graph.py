"""The canonical ONNX graph as the debugger sees it: layers in graph order, each with its tensors and the name the
user wrote (PyTorch module path, Keras layer name).

A *layer* is a computing node plus the value-preserving nodes right after it (Relu, Clip, MaxPool, Reshape, ...):
backends fuse them, and a quantizer one backend puts after the Conv and another before the next Gemm quantizes the
same values. Grouping them makes the answer the same on every backend: the layer whose values int8 loses.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

# ops that move, select or clip values without mixing them: a quantizer after one sees the producer's value range
PASSTHROUGH = {"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
               "GlobalMaxPool", "Pad", "Slice", "Split", "DepthToSpace", "SpaceToDepth", "Gather", "Expand", "Tile"}
# ops that carry weights a backend quantizes: the nodes a float fallback excludes
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"}


@dataclass
class Layer:
    index: int
    name: str  # the head node's name in the canonical ONNX graph
    op: str
    nodes: list[str]  # the head node and the passthrough nodes folded into it, in graph order
    tensors: list[str]  # their float outputs, in graph order (the last is what the next layer reads)
    inputs: list[str]  # tensors this layer reads from other layers or the graph inputs
    source: str | None = None  # PyTorch module path / Keras layer name
    source_class: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _scopes(node) -> tuple[str | None, str | None]:
    """(module path, module class) from the torch dynamo exporter's metadata: ``pkg.torch.onnx.name_scopes`` is
    ``['', 'features', 'features.3', 'conv2d_1']`` (the last entry is the op), ``class_hierarchy`` the classes."""
    props = {p.key: p.value for p in node.metadata_props}
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if not scopes:
        return None, None
    try:
        names = ast.literal_eval(scopes)
        classes = ast.literal_eval(props.get("pkg.torch.onnx.class_hierarchy", "[]"))
    except (ValueError, SyntaxError):
        return None, None
    path = next((n for n in reversed(names[:-1]) if n), None)
    cls = classes[-2].rsplit(".", 1)[-1] if len(classes) >= 2 and path else None
    return path, cls


def _torchscript_path(name: str) -> str | None:
    """``/features/features.3/Conv`` or ``/features/3/Conv`` (the TorchScript exporter's scoped names) → ``features.3``."""
    if not name.startswith("/"):
        return None
    parts = [p for p in name.strip("/").split("/")[:-1] if p]
    path = ""
    for p in parts:
        path = p if path and p.startswith(path + ".") else (f"{path}.{p}" if path else p)
    return path or None


def _keras_layer(name: str) -> str | None:
    """tf2onnx names nodes after the TensorFlow op: ``model/conv2d_1/BiasAdd`` → the scope ``conv2d_1``."""
    parts = [p for p in name.split("/") if p and not p.startswith("StatefulPartitionedCall")]
    if len(parts) >= 3:
        return parts[-2]
    return parts[0] if len(parts) == 2 else None


class KerasScopes:
    """TensorFlow uniquifies the name scopes of a re-traced Keras model: layer ``conv2d`` runs under ``conv2d_1`` and
    layer ``conv2d_1`` under ``conv2d_1_2``. Given the model's layer names in order, each scope, in the order the graph
    first uses it, goes to the first layer not yet taken whose name it is or extends with ``_<n>``."""

    def __init__(self, layer_names: list[str] | None):
        self.free = list(layer_names or [])
        self.known: dict[str, str] = {}

    def layer(self, scope: str | None) -> str | None:
        if scope is None or not self.free and scope not in self.known:
            return scope
        if scope not in self.known:
            hit = next((n for n in self.free if scope == n or re.fullmatch(re.escape(n) + r"_\d+", scope)), None)
            if hit is None:
                return scope
            self.free.remove(hit)
            self.known[scope] = hit
        return self.known[scope]


def _weight_module(node, initializers: set[str]) -> str | None:
    """A Conv/Gemm reads its weight under the parameter's name (``features.0.weight``) → ``features.0``."""
    if node.op_type not in WEIGHTED or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    m = re.fullmatch(r"(.+)\.weight", node.input[1])
    return m.group(1) if m else None


def source_name(node, framework: str, initializers: set[str], keras: KerasScopes | None = None) -> tuple[str | None, str | None]:
    path, cls = _scopes(node)
    weight = _weight_module(node, initializers)
    if path and weight and weight != path:
        # e.g. a BatchNorm the exporter folded into its Conv keeps the BatchNorm's scope; the weight names the Conv
        return f"{weight} (+{path})", cls
    if path or weight:
        return path or weight, cls
    if framework == "keras":
        return (keras or KerasScopes(None)).layer(_keras_layer(node.name)), None
    return _torchscript_path(node.name), None


def layers_of(model, framework: str, float_tensors: set[str], layer_names: list[str] | None = None) -> list[Layer]:
    """The canonical graph's layers in graph order; only nodes with float outputs the reference run produced.
    ``layer_names``: a Keras model's layer names in order (the manifest keeps them), to undo TensorFlow's scope names."""
    graph = model.graph
    keras = KerasScopes(layer_names) if framework == "keras" else None
    if keras is not None:  # scopes in the order the graph first uses them, every node (a layer's first op may be folded in)
        for node in graph.node:
            keras.layer(_keras_layer(node.name))
    initializers = {i.name for i in graph.initializer}
    producer_layer: dict[str, Layer] = {}
    layers: list[Layer] = []
    for node in graph.node:
        outs = [o for o in node.output if o in float_tensors]
        if not outs:
            continue
        ins = [i for i in node.input if i and i not in initializers and i in float_tensors]
        owner = producer_layer.get(ins[0]) if ins else None
        if (node.op_type in PASSTHROUGH and owner is not None and ins[0] == owner.tensors[-1]
                and all(i == ins[0] or i not in producer_layer for i in ins[1:])):
            owner.nodes.append(node.name)
            owner.tensors += outs
            for o in outs:
                producer_layer[o] = owner
            continue
        src, cls = source_name(node, framework, initializers, keras)
        layer = Layer(len(layers), node.name, node.op_type, [node.name], outs, list(dict.fromkeys(ins)), src, cls)
        layers.append(layer)
        for o in outs:
            producer_layer[o] = layer
    return layers
