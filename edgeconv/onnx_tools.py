"""The canonical ONNX graph: load, check, infer shapes, read I/O specs, summarise (ops, parameters, MACs)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import BadInput, ConversionFailed
from edgeconv.specs import TensorSpec, guess_layout

TWO_GB = 2**31 - 1


def load_onnx(path: Path, *, load_external_data: bool = True):
    """Load an ONNX file (with external data) or raise BadInput saying what is wrong with it."""
    import onnx

    if path.stat().st_size == 0:
        raise BadInput(f"{path} is empty (0 bytes)", hint="re-export the model")
    try:
        proto = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:
        raise BadInput(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {first_line(str(exc), 200)})",
            hint="the file may be truncated, or not ONNX at all; re-export it",
        ) from exc
    if not proto.graph.node and not proto.graph.output:
        raise BadInput(f"{path} parsed as ONNX but holds no graph (is it really an ONNX file?)")
    return proto


def opset_of(proto) -> int:
    return int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))


def check_and_infer(path: Path):
    """Run onnx.checker and strict shape inference on ``path``, rewrite it with the inferred shapes."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=False)
        proto = onnx.load(str(path))
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, data_prop=True)
    except Exception as exc:
        raise ConversionFailed(f"the exported ONNX graph fails onnx.checker / shape inference: {exc}") from exc
    big = proto.ByteSize() > TWO_GB if hasattr(proto, "ByteSize") else False
    onnx.save(proto, str(path), save_as_external_data=big, location=path.name + ".data" if big else None)
    return proto


_ONNX_TO_NP = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
               11: "float64", 12: "uint32", 13: "uint64"}


def _value_spec(v, layout_default: str | None) -> TensorSpec:
    tt = v.type.tensor_type
    shape: list[Any] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            shape.append(d.dim_param)
        else:
            shape.append(None)
    dtype = _ONNX_TO_NP.get(tt.elem_type, f"onnx:{tt.elem_type}")
    return TensorSpec(v.name, shape, dtype, guess_layout(shape, layout_default))


def io_specs(proto, layout_default: str | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inits = {i.name for i in proto.graph.initializer}
    ins = [_value_spec(v, layout_default) for v in proto.graph.input if v.name not in inits]
    outs = [_value_spec(v, None) for v in proto.graph.output]
    return ins, outs


def rename_outputs(proto, names: list[str]) -> None:
    """Give graph outputs stable names (exporters invent ``Identity:0``, ``linear_1`` …)."""
    mapping = {o.name: n for o, n in zip(proto.graph.output, names) if o.name != n}
    if not mapping:
        return
    for node in proto.graph.node:
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
    for o in proto.graph.output:
        o.name = mapping.get(o.name, o.name)


def set_input_shapes(proto, inputs: list[TensorSpec], dynamic_batch: bool) -> None:
    """Write the resolved input shapes into the graph (batch symbolic when ``dynamic_batch``)."""
    by_name = {s.name: s for s in inputs}
    for v in proto.graph.input:
        spec = by_name.get(v.name)
        if spec is None or not spec.shape:
            continue
        dims = v.type.tensor_type.shape.dim
        del dims[:]
        for i, d in enumerate(spec.shape):
            dim = dims.add()
            if i == spec.batch_axis and dynamic_batch:  # the first axis, or the one the graph names batch (a state's)
                dim.dim_param = "batch"
            elif isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d


def _shape_map(proto) -> dict[str, list[int | None]]:
    shapes = {}
    for v in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output):
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
    for init in proto.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count_macs(proto) -> tuple[int, list[str]]:
    """Multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul from inferred shapes (batch as given).

    Returns the count and the nodes that could not be counted (unknown shapes). Other ops are not counted:
    on vision models these four carry almost all the arithmetic.
    """
    shapes = _shape_map(proto)
    total, unknown = 0, []
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        try:
            if node.op_type in ("Conv", "ConvTranspose"):
                w = shapes[node.input[1]]
                out = shapes[node.output[0]] if node.op_type == "Conv" else shapes[node.input[0]]
                if None in w or None in out[1:]:
                    raise KeyError
                batch = out[0] or 1
                # Conv: each output element costs (C_in/group x kernel); ConvTranspose: each input element
                # costs (C_out/group x kernel). Both are prod(w[1:]) per element of the tensor chosen above.
                macs = batch * int(np.prod(out[1:])) * int(np.prod(w[1:]))
            else:
                a, b = shapes[node.input[0]], shapes[node.input[1]]
                if node.op_type == "Gemm":
                    trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
                    trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
                    m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
                    n = b[0] if trans_b else b[1]
                    macs = (m or 1) * k * n
                else:
                    k, n = a[-1], b[-1]
                    lead = [d or 1 for d in a[:-1]]
                    macs = int(np.prod(lead)) * k * n
            total += int(macs)
        except (KeyError, IndexError, TypeError):
            unknown.append(node.name or node.op_type)
    return total, unknown


def summarize(proto, layout_default: str | None = None) -> dict[str, Any]:
    """What ``edgeconv inspect`` shows: I/O with dynamic dims, opset, op histogram, parameters, MACs."""
    import onnx

    method = "Conv/ConvTranspose/Gemm/MatMul from inferred shapes, batch as in the graph (dynamic = 1)"
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inspect describes what it can: a graph shape inference refuses still has
        # its I/O, ops and parameters; its MACs are counted from the shapes the graph states, and the method says why
        inferred = proto
        method = ("Conv/ConvTranspose/Gemm/MatMul from the shapes the graph states, batch as in the graph (dynamic = 1): "
                  f"ONNX shape inference failed ({type(exc).__name__}: {first_line(str(exc), 200)})")
    ins, outs = io_specs(proto, layout_default)
    params = sum(int(np.prod(i.dims)) for i in proto.graph.initializer)
    macs, unknown = count_macs(inferred)
    ops = Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in proto.graph.node)
    return {
        "inputs": [s.to_dict() | {"dynamic_dims": s.dynamic_dims} for s in ins],
        "outputs": [s.to_dict() | {"dynamic_dims": s.dynamic_dims} for s in outs],
        "opset": opset_of(proto),
        "opsets": {o.domain or "ai.onnx": int(o.version) for o in proto.opset_import},
        "ir_version": int(proto.ir_version),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "nodes": len(proto.graph.node),
        "ops": dict(ops.most_common()),
        "parameters": params,
        "macs": macs,
        "macs_method": method,
        "macs_uncounted_nodes": unknown,
    }


def fold_pads_into_convs(proto) -> list[str]:
    """Fold each zero constant ``Pad`` on the spatial axes whose one reader is a ``Conv`` into that Conv's ``pads``
    (what Keras' ZeroPadding2D before a strided convolution becomes), in place; the names of the Pads folded. The graph
    computes the same values. rknn-toolkit2 2.5.0's own fold of this pattern crashes ("assignment destination is
    read-only"), so the rknn target hands it graphs where there is nothing left to fold."""
    from onnx import helper

    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    folded, dropped = [], set()
    for pad in list(graph.node):
        conv = _foldable_conv(pad, readers, outputs)
        spatial = _pad_amounts(pad, inits) if conv is not None else None
        if spatial is None:
            continue
        old = next((list(helper.get_attribute_value(a)) for a in conv.attribute if a.name == "pads"), [0] * len(spatial))
        keep = [a for a in conv.attribute if a.name != "pads"]
        del conv.attribute[:]
        conv.attribute.extend([*keep, helper.make_attribute("pads", [a + b for a, b in zip(old, spatial)])])
        conv.input[0] = pad.input[0]
        dropped.update(pad.input[1:])
        graph.node.remove(pad)
        folded.append(pad.name or pad.output[0])
    still_read = {i for n in graph.node for i in n.input} | outputs | {i.name for i in graph.input}
    for t in [t for t in graph.initializer if t.name in dropped and t.name not in still_read]:
        graph.initializer.remove(t)  # the folded Pads' own pads and values
    return folded


def _foldable_conv(pad, readers, outputs):
    """The Conv that alone reads ``pad``'s output as its data input, with explicit padding, else None."""
    from onnx import helper

    if (pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or pad.output[0] in outputs
            or len(readers.get(pad.output[0], [])) != 1):
        return None
    conv = readers[pad.output[0]][0]
    if conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    return conv


def _pad_amounts(pad, inits) -> list[int] | None:
    """The Conv-style pads (begins then ends of the spatial axes) of a zero constant Pad on spatial axes only."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in pad.attribute}
    if attrs.get("mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(pad.input) > 3 and pad.input[3]:  # opset 18 axes: not folded
        return None
    if len(pad.input) > 2 and pad.input[2]:
        value = inits.get(pad.input[2])
        if value is None or np.any(numpy_helper.to_array(value) != 0):
            return None
    elif attrs.get("value", 0.0) != 0.0:
        return None
    if len(pad.input) > 1 and pad.input[1]:
        if pad.input[1] not in inits:
            return None
        pads = [int(v) for v in numpy_helper.to_array(inits[pad.input[1]]).ravel()]
    else:
        pads = [int(v) for v in attrs.get("pads", [])]
    rank = len(pads) // 2
    if rank < 3 or min(pads) < 0 or any(pads[i] or pads[rank + i] for i in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2:]
