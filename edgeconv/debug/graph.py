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


def _keras_scopes(name: str) -> list[str]:
    """tf2onnx names nodes and tensors after the TensorFlow op: ``model/block_1_BN_1/batchnorm/add_1:0`` → the scopes
    ``model``, ``block_1_BN_1``, ``batchnorm`` (outermost first; the op's own name dropped)."""
    parts = [p for p in re.sub(r":\d+$", "", name).split("/") if p and not p.startswith("StatefulPartitionedCall")]
    return parts[:-1]


class KerasScopes:
    """TensorFlow uniquifies the name scopes of a re-traced Keras model: layer ``conv2d`` runs under ``conv2d_1`` and
    layer ``conv2d_1`` under ``conv2d_1_2``. Given the model's layer names in order (a nested model's layers as
    ``outer/inner``), each scope, in the order the graph first uses it, goes to the first layer not yet taken whose name
    it is or extends with ``_<n>``. A node's layer is its innermost scope that is a layer: ``block_1_BN_1`` in
    ``model/block_1_BN_1/batchnorm/add_1``, not the op scope ``batchnorm`` inside it."""

    def __init__(self, layer_names: list[str] | None):
        self.free = list(layer_names or [])
        self.known: dict[str, str] = {}

    def _resolve(self, scope: str) -> str | None:
        if scope not in self.known:
            hit = next((n for n in self.free
                        if scope == (leaf := n.rsplit("/", 1)[-1]) or re.fullmatch(re.escape(leaf) + r"_\d+", scope)), None)
            if hit is None:
                return None
            self.free.remove(hit)
            self.known[scope] = hit
        return self.known[scope]

    def layer(self, scopes: list[str]) -> str | None:
        for scope in reversed(scopes):
            hit = self._resolve(scope)
            if hit is not None:
                return hit
        return scopes[-1] if scopes else None  # no layer names (or none fits): the innermost scope as TensorFlow wrote it


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
        return _keras_source(node, keras or KerasScopes(None)), None
    return _torchscript_path(node.name), None


def _keras_source(node, keras: KerasScopes) -> str | None:
    """The Keras layer of a tf2onnx node. A node tf2onnx made itself (``Conv__235``, a Conv with the BatchNorm after it
    folded in) has no scope; its weight and bias keep theirs: ``Conv1_1/convolution/merged_input:0`` and
    ``bn_Conv1_1/batchnorm/sub:0`` → ``Conv1 (+bn_Conv1)``."""
    scopes = _keras_scopes(node.name)
    if scopes or node.op_type not in WEIGHTED or len(node.input) < 2:
        return keras.layer(scopes)
    weight = keras.layer(_keras_scopes(node.input[1]))
    bias = keras.layer(_keras_scopes(node.input[2])) if len(node.input) > 2 and node.input[2] else None
    return f"{weight} (+{bias})" if weight and bias and bias != weight else weight or bias


def _keras_scopes_of(model, layer_names: list[str] | None) -> KerasScopes:
    """The Keras layers of a tf2onnx graph's scopes, assigned in the order the graph first uses them (every node: a
    layer's first op may be folded in; a weighted node's weight and bias too, for nodes tf2onnx made itself)."""
    keras = KerasScopes(layer_names)
    for node in model.graph.node:
        for name in [node.name, *(node.input[1:3] if node.op_type in WEIGHTED else [])]:
            keras.layer(_keras_scopes(name))
    return keras


def keras_layer_nodes(model, layer_names: list[str] | None) -> dict[str, str]:
    """Keras layer → the last node of the canonical (tf2onnx) graph computed for it, in graph order: what a tool that
    traced the same Keras model on its own (TFLiteConverter) names its tensors after."""
    keras = _keras_scopes_of(model, layer_names)
    out: dict[str, str] = {}
    for node in model.graph.node:
        source = _keras_source(node, keras)
        for name in re.findall(r"[^()+ ]+", source or ""):
            out[name] = node.name
    return out


def layers_of(model, framework: str, float_tensors: set[str], layer_names: list[str] | None = None) -> list[Layer]:
    """The canonical graph's layers in graph order; only nodes with float outputs the reference run produced.
    ``layer_names``: a Keras model's layer names in order (the manifest keeps them), to undo TensorFlow's scope names."""
    graph = model.graph
    keras = _keras_scopes_of(model, layer_names) if framework == "keras" else None
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
