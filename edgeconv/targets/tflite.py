"""TFLite / LiteRT target: fp32, fp16 (fp16 weights), int8 (full integer, calibrated), int8-dynamic.

PyTorch and ONNX sources: the checked ONNX graph → TensorFlow SavedModel with onnx2tf (NCHW becomes NHWC),
then TensorFlow's TFLiteConverter builds exactly the precision asked for. Both run in one child process
(tflite_job.py), so TensorFlow is imported once and never into edgeconv's own process. onnx2tf's habits are
contained: it runs on a copy of the graph (it rewrites its input), in that child (it sets TF_USE_LEGACY_KERAS=1
for its process), with a timeout, an argument list and its log kept, and in a working directory that already
holds its sample-data file, made from the user's own inputs, so it never downloads one.

Keras / SavedModel sources: TFLiteConverter directly from the TensorFlow model (no ONNX round trip; layouts
stay as the model has them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv import quiet
from edgeconv.canonical import scalar_if_outputs_as_rank1
from edgeconv.core.stream import kept_inputs
from edgeconv.core.text import shorten
from edgeconv.errors import ConversionFailed, MissingDependency
from edgeconv.export_cache import StepSlot
from edgeconv.lazy import require, require_installed, version_of
from edgeconv.shapes import axes_moved
from edgeconv.specs import sha256_of
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions
from edgeconv.targets.tflite_job import TFLITE_FAILED, channel_last_perm, float_ops_notes, tflite_from_saved_model

ONNX2TF_TESTED = ">=1.28,<1.29"  # the onnx2tf range this code was tested with (1.28.8, TF 2.21)
ONNX2TF_TIMEOUT_S = 1800
# onnx2tf looks for this file in its working directory before it would fetch it from the network.
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
IO_DTYPES = ("float", "int8", "uint8")


def artifact_layouts(source_shapes: dict[str, list], artifact_shapes: dict[str, list],
                     assume_moved: bool) -> dict[str, list[int] | None]:
    """Per tensor: the permutation from the source layout to the artifact's (None when unchanged)."""
    out: dict[str, list[int] | None] = {}
    for name, src in source_shapes.items():
        art = [int(d) for d in artifact_shapes[name]]
        src_i = [int(d) if isinstance(d, int) else -1 for d in src]
        if len(src_i) < 3:
            out[name] = None
            continue
        perm = channel_last_perm(len(src_i))
        moved = [src_i[i] for i in perm]
        same = all(a == s or s == -1 for a, s in zip(art, src_i))
        matches_moved = all(a == s or s == -1 for a, s in zip(art, moved))
        if same and matches_moved:
            out[name] = perm if assume_moved else None  # square-ish shapes: trust the converter's rule
        elif same:
            out[name] = None
        elif matches_moved:
            out[name] = perm
        elif axes_moved(src_i, art) is not None:  # a recurrent state onnx2tf laid out its own way ([2,1,H] → [1,2,H])
            out[name] = axes_moved(src_i, art)
        else:
            raise ConversionFailed(f"cannot relate the TFLite tensor {name!r} {art} to the source's {src}")
    return out


def _nhwc_sample(feed: dict[str, np.ndarray]) -> np.ndarray:
    """onnx2tf's 20x128x128x3 sample tensor, filled from the user's own first image input (nearest resize)."""
    x = next(iter(feed.values()))
    if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = x.transpose(0, 2, 3, 1)
    x = x.astype(np.float32)
    if x.ndim != 4:
        return np.zeros((20, 128, 128, 3), np.float32)
    rows = np.arange(128) * x.shape[1] // 128
    cols = np.arange(128) * x.shape[2] // 128
    x = x[:, rows][:, :, cols]
    x = np.repeat(x[..., :1], 3, axis=-1) if x.shape[-1] != 3 else x
    return np.resize(x, (20, 128, 128, 3)).astype(np.float32)


def condense_onnx2tf_log(log: str, limit: int = 12) -> str:
    """The lines of an onnx2tf log that say what failed (op type, node name, error), not the 300-line dump."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if (re.search(r"(ERROR|Error|error:|onnx_op_type|onnx_op_name|not supported|NotImplemented|Exception)", s)
                and s not in keep):
            keep.append(shorten(s, 300))
    return "\n".join(keep[-limit:]) if keep else "\n".join(text.strip().splitlines()[-limit:])


def failed_ops(log: str, nodes: dict[str, list[str]]) -> list[str]:
    """``OpType (node names)`` for the ops an onnx2tf log names as failing; ``nodes`` maps op type → node names.
    A log that names only the node (``onnx_op_name:``, the usual form of a converter exception) gets its op type from
    the graph; onnx2tf writes a name that starts with "/" as "wa/…"."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    types = re.findall(r"onnx_op_type:\s*(\S+)", text) + re.findall(r"(\w+) OP is not yet implemented", text)
    named = re.findall(r"onnx_op_name:\s*(\S+)", text)
    type_of = {n: t for t, names in nodes.items() for n in names}
    named = [n if n in type_of else re.sub(r"^wa/", "/", n) for n in named]
    types += [type_of[n] for n in named if n in type_of]
    out = []
    for t in dict.fromkeys(types):
        names = [n for n in named if n in nodes.get(t, [])] or nodes.get(t, [])
        out.append(f"{t} ({', '.join(names[:5])}{', …' if len(names) > 5 else ''})" if names else t)
    return out


def onnx2tf_reason(log: str) -> str | None:
    """The exception onnx2tf's conversion ended with, as one line (Keras' "Exception encountered when calling layer"
    wrapper replaced by the message it wraps)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        m = re.match(r"^([A-Za-z_.]*(?:Error|Exception)): (.*)$", lines[i])
        if not m:
            continue
        msg = m.group(2).strip()
        if msg.startswith("Exception encountered when calling layer"):
            msg = next((ln for ln in lines[i + 1:] if ln), msg)
        return shorten(f"{m.group(1).split('.')[-1]}: {msg}", 300)
    return None


def tflite_graph(path: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]], int, set[int]]:
    """Ops in execution order (name, input/output tensor indices), tensors by index, subgraph count, and the
    model's input tensors."""
    from edgeconv.core.backends.litert import tflite_interpreter_module

    interp = tflite_interpreter_module().Interpreter(model_path=str(path))
    # _get_ops_details is the interpreter's own op listing (execution order); it has no public twin.
    ops = [{"op": d["op_name"], "inputs": [int(i) for i in d["inputs"] if i >= 0], "outputs": [int(i) for i in d["outputs"]]}
           for d in interp._get_ops_details()]
    tensors = {int(t["index"]): {"name": t["name"], "shape": [int(s) for s in t["shape"]], "dtype": np.dtype(t["dtype"]).name,
                                 "shape_signature": [int(s) for s in t.get("shape_signature", t["shape"])]}
               for t in interp.get_tensor_details()}
    subgraphs = len(interp.get_signature_list()) or 1
    return ops, tensors, subgraphs, {int(d["index"]) for d in interp.get_input_details()}


def float_ops(path: Path) -> list[str]:
    """``OP (tensor)`` for every op of a TFLite model that computes in float; the QUANTIZE / DEQUANTIZE at the edges
    of a float-I/O integer model are not counted."""
    ops, tensors, _, _ = tflite_graph(path)
    out = []
    for op in ops:
        if op["op"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(tensors[i]["dtype"] in ("float32", "float16") for i in op["inputs"] + op["outputs"]):
            out.append(f"{op['op']} ({tensors[op['outputs'][0]]['name']})" if op["outputs"] else op["op"])
    return out


# ops whose output is never negative: a MaxPool after them may pad with 0 instead of -inf and compute the same
NON_NEGATIVE = {"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Sqrt"}


def _replace_nodes(graph, rewrite) -> list:
    """Each node of ``graph`` in place of which ``rewrite(node)`` returns a list of nodes gets them; a node for which it
    returns None stays. Returns the nodes rewritten (the rewrites of onnx2tf's copy below share this)."""
    changed, new_nodes = [], []
    for node in graph.node:
        replacement = rewrite(node)
        if replacement is None:
            new_nodes.append(node)
            continue
        new_nodes += replacement
        changed.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return changed


def _name(node) -> str:
    return node.name or node.output[0]


def zero_pads_before_maxpool(model) -> list[str]:
    """For int8: a MaxPool with explicit pads that TF's SAME padding cannot express becomes, in onnx2tf, a pad with
    float32's minimum followed by an unpadded pool. TFLiteConverter's calibration then sees -3.4e38 in that tensor,
    its int8 scale becomes ~1e36 (nothing else survives, and XNNPACK refuses the node). When the pool's input is
    non-negative (after a Relu, a Clip with min >= 0, ...), padding with 0 gives exactly the same result: write that
    Pad explicitly and let the pool run unpadded. Returns the rewritten nodes' names; rewrites ``model`` in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    consts = _constant_values(graph)

    def non_negative(name: str) -> bool:
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type in NON_NEGATIVE:
            return True
        if node.op_type == "Clip" and len(node.input) > 1 and node.input[1] in consts:
            return float(consts[node.input[1]]) >= 0
        return node.op_type in ("MaxPool", "Identity") and non_negative(node.input[0])

    def rewrite(node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attrs.get("pads", []))
        if (node.op_type != "MaxPool" or not any(pads) or attrs.get("ceil_mode", 0) or len(node.output) != 1
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") or not non_negative(node.input[0])):
            return None
        half = len(pads) // 2
        pad_name = f"{_name(node)}/zero_pads"
        graph.initializer.append(numpy_helper.from_array(np.array([0, 0, *pads[:half], 0, 0, *pads[half:]], np.int64),
                                                         pad_name + "_amounts"))
        pad = helper.make_node("Pad", [node.input[0], pad_name + "_amounts"], [pad_name + "_out"], name=pad_name,
                               mode="constant")
        del node.attribute[:]
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items() if k != "pads")
        node.input[0] = pad_name + "_out"
        return [pad, node]

    return [_name(n) for n in _replace_nodes(graph, rewrite)]


def erf_nodes(model) -> list[str]:
    """The Erf nodes of the graph (subgraphs included). TFLite's builtin ops have no Erf: onnx2tf's tf.math.erf ends
    in TFLiteConverter's "Could not translate MLIR to FlatBuffer" (BERT-style GELU exported at opset < 20, where
    onnx2tf's exact-pattern GELU check misses)."""
    import onnx

    def walk(graph):
        for node in graph.node:
            if node.op_type == "Erf" and node.domain in ("", "ai.onnx"):
                yield _name(node)
            for a in node.attribute:
                for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    yield from walk(g)

    return list(walk(model.graph))


def _constant_values(graph) -> dict[str, np.ndarray]:
    """The graph's initializers and Constant node outputs, by tensor name."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def spell_stft(model) -> list[str]:
    """STFT (opset 17: an audio model's spectrogram) as the strided convolution it is: onnx2tf 1.28 has no STFT.
    Frame m, bin k: X[m, k] = sum_n x[m*hop + n] * w[n] * exp(-2πi k n / N), so a Conv over the signal with stride hop
    and 2 * bins kernels w[n]cos(2πkn/N) and -w[n]sin(2πkn/N) gives the real and imaginary parts; a Reshape and a
    Transpose put them in STFT's [batch, frames, bins, 2]. Only a real signal with a constant hop, window and frame
    length is rewritten. Returns the rewritten nodes' names; rewrites ``model`` in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = _constant_values(graph)

    def rewrite(node):
        if node.op_type != "STFT" or node.domain not in ("", "ai.onnx"):
            return None
        ins = list(node.input) + [""] * (4 - len(node.input))
        hop = consts.get(ins[1])
        window = consts.get(ins[2]) if ins[2] else None
        length = consts.get(ins[3]) if ins[3] else None
        onesided = next((a.i for a in node.attribute if a.name == "onesided"), 1)
        if hop is None or (ins[2] and window is None) or (ins[3] and length is None) or (window is None and length is None):
            return None
        n = int(length) if length is not None else int(window.shape[0])
        w = np.ones(n, np.float64) if window is None else window.astype(np.float64)
        if w.shape != (n,):
            return None
        bins = n // 2 + 1 if onesided else n
        angle = 2 * np.pi * np.outer(np.arange(bins), np.arange(n)) / n
        kernels = np.concatenate([w * np.cos(angle), -w * np.sin(angle)])[:, None, :].astype(np.float32)
        name = _name(node)
        graph.initializer.extend([
            numpy_helper.from_array(kernels, f"{name}/dft_kernels"),
            # the signal [batch, length, 1] (or [batch, length]) as Conv's [batch, 1, length]
            numpy_helper.from_array(np.array([0, 1, -1], np.int64), f"{name}/signal_shape"),
            numpy_helper.from_array(np.array([0, 2, bins, -1], np.int64), f"{name}/parts_shape")])
        nodes = [
            helper.make_node("Reshape", [ins[0], f"{name}/signal_shape"], [f"{name}/signal"], name=f"{name}/signal"),
            helper.make_node("Conv", [f"{name}/signal", f"{name}/dft_kernels"], [f"{name}/frames"], name=f"{name}/dft",
                             kernel_shape=[n], strides=[int(hop)]),
            helper.make_node("Reshape", [f"{name}/frames", f"{name}/parts_shape"], [f"{name}/parts"], name=f"{name}/parts"),
            helper.make_node("Transpose", [f"{name}/parts"], list(node.output), name=name, perm=[0, 3, 2, 1])]
        for extra in nodes:
            extra.metadata_props.extend(node.metadata_props)
        return nodes

    return [_name(n) for n in _replace_nodes(graph, rewrite)]


def spell_norm_reductions(model) -> list[str]:
    """ReduceL2 → Sqrt(ReduceSumSquare) and ReduceL1 → ReduceSum(Abs), the same reduction (same axes, keepdims,
    noop_with_empty_axes). onnx2tf 1.28 translates ReduceL1/ReduceL2 with tf.norm, and its strict-mode axis search
    hands tf.norm a numpy integer axis when the axes come as an input (opset >= 18), which tf.norm refuses ("'axis'
    must be None, an integer, or a tuple of 2 unique integers"): EdgeNeXt's XCA (F.normalize) failed there. onnx2tf's
    own output for ReduceL2 is sqrt(reduce_sum(square(x))) anyway. Returns the rewritten nodes (op and name);
    rewrites ``model`` in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)

    def rewrite(node):
        if node.op_type not in ("ReduceL1", "ReduceL2") or node.domain not in ("", "ai.onnx"):
            return None
        name = _name(node)
        attrs = [a for a in node.attribute]
        inner_out = f"{name}/summed"
        nodes = []
        if node.op_type == "ReduceL2":
            inner = helper.make_node("ReduceSumSquare", list(node.input), [inner_out], name=f"{name}/sum_square")
            outer = helper.make_node("Sqrt", [inner_out], list(node.output), name=name)
        else:
            nodes.append(helper.make_node("Abs", [node.input[0]], [f"{name}/abs"], name=f"{name}/abs"))
            axes_in = list(node.input[1:])
            axes_attr = [a for a in attrs if a.name == "axes"]
            if axes_attr and opset >= 13:  # ReduceSum takes its axes as an input from opset 13, ReduceL1 from 18
                graph.initializer.append(numpy_helper.from_array(np.array(axes_attr[0].ints, np.int64), f"{name}/axes"))
                axes_in, attrs = [f"{name}/axes"], [a for a in attrs if a.name != "axes"]
            inner = helper.make_node("ReduceSum", [f"{name}/abs", *axes_in], [inner_out], name=f"{name}/sum_abs")
            outer = helper.make_node("Identity", [inner_out], list(node.output), name=name)
        inner.attribute.extend(attrs)
        inner.metadata_props.extend(node.metadata_props)
        outer.metadata_props.extend(node.metadata_props)
        return [*nodes, inner, outer]

    return [f"{n.op_type} {_name(n)}" for n in _replace_nodes(graph, rewrite)]


ONNX2TF_ARGS = ("-osd", "-nuo")  # signatures for TFLiteConverter; the canonical graph is already simplified


def _run_job(work: Path, job: dict[str, Any]) -> subprocess.CompletedProcess:
    """tflite_job.py in onnx2tf's working directory, with a timeout; its exit code is the caller's to read."""
    (work / "job.json").write_text(json.dumps(job))
    cmd = [sys.executable, "-m", "edgeconv.targets.tflite_job", str(work / "job.json")]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConversionFailed(f"onnx2tf and TFLiteConverter did not finish in {ONNX2TF_TIMEOUT_S} s") from exc
    quiet.record("onnx2tf and TFLiteConverter (edgeconv/targets/tflite_job.py)", proc.stdout + proc.stderr)
    return proc


def _graph_nodes(onnx_path: Path, infer_shapes: bool = False):
    """The graph's nodes (weights not loaded); with ``infer_shapes`` the graph itself, shapes inferred."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if not infer_shapes:
        return list(model.graph.node)
    return onnx.shape_inference.infer_shapes(model).graph


def first_diverging(log: str, graph) -> tuple[str, str, float, tuple[str, list[int]] | None] | None:
    """From onnx2tf's -cotof log: the first op (in graph order) whose output it reports Unmatched by more than 1e-3:
    (op type, node name, max abs error, and (input name, shape) when that input's dimensions after the batch are all
    equal, the shape onnx2tf's layout rule misreads). None when every op matches."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log)
    errors = {}
    for name, err in re.findall(r"onnx_output_name:\s*(\S+) .*?Unmatched\s+max_abs_error:\s*([0-9.eE+-]+)", text):
        errors.setdefault(name, float(err))
        errors.setdefault(re.sub(r"^/", "wa/", name), float(err))
    shapes = _shapes(graph)
    for node in graph.node:
        hit = next((errors[o] for o in node.output if o in errors and errors[o] > 1e-3), None)
        if hit is not None:
            return node.op_type, node.name, hit, _equal_dims_input(node, shapes)
    return None


# ops whose translation depends on which axis is which (elementwise ops and MatMul do not move axes in onnx2tf)
AXIS_OPS = {"Pad", "Split", "Concat", "Slice", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather", "Softmax",
            "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
            "ReduceSumSquare", "ArgMax", "ArgMin", "Expand", "Tile", "CumSum", "LayerNormalization"}


def _equal_dims_input(node, shapes: dict[str, list[int]]) -> tuple[str, list[int]] | None:
    for i in node.input:
        dims = shapes.get(i, [])
        if len(dims) >= 3 and dims[1] > 1 and all(d == dims[1] for d in dims[1:]):
            return i, dims
    return None


def _shapes(graph) -> dict[str, list[int]]:
    return {v.name: [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.value_info, *graph.output]}


def first_equal_dims_reader(graph) -> tuple[str, str, tuple[str, list[int]]] | None:
    """The first op (graph order) that moves axes and reads a rank >= 3 tensor whose dimensions after the batch are all
    equal (1x16x16x16): onnx2tf 1.28 cannot tell such a tensor from its channel-last transpose and always takes it for
    channel-last (utils/common_functions.py, "patterns of misjudgment when the second and subsequent dimensions are all
    the same value"), so that op's axes are remapped when the tensor is in fact in ONNX's layout."""
    shapes = _shapes(graph)
    for node in graph.node:
        cube = _equal_dims_input(node, shapes) if node.op_type in AXIS_OPS else None
        if cube:
            return node.op_type, node.name, cube
    return None


RECURRENT_LAYERS = ("LSTM", "GRU", "SimpleRNN", "RNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def recurrent_part(source) -> str | None:
    """The first recurrent layer of a Keras model (nested models included), or for a SavedModel the first TensorList
    op of its serving graph (what a recurrent layer becomes), named; None when there is none."""
    if source.model is not None:
        stack = [source.model]
        while stack:
            layer = stack.pop(0)
            if type(layer).__name__ in RECURRENT_LAYERS:
                return f"layer {layer.name!r} ({type(layer).__name__})"
            stack += list(getattr(layer, "layers", None) or [])
        return None
    if source.signature is None:
        return None
    graph = source.signature.graph.as_graph_def()
    for node in [*graph.node, *(n for f in graph.library.function for n in f.node_def)]:
        if node.op.startswith("TensorList"):
            return f"op {node.name!r} ({node.op})"
    return None


class TfliteTarget(Target):
    name = "tflite"
    precisions = ("fp32", "fp16", "int8", "int8-dynamic")
    dynamic_batch = False
    needs_calibration = ("int8",)
    float_fallback = True  # TFLite's denylisted nodes (tf.lite.experimental.QuantizationDebugger)
    fp16_float_layers = True  # fp16: those ops read fp32 weights (the flatbuffer rewritten, edgeconv/targets/half.py)
    # TFLiteConverter calibrates by min/max only; its 16x8 mode (16-bit activations, int8 weights) runs on LiteRT's
    # reference kernels (XNNPACK has none), so the guard reports what it costs
    int16_activations = True
    preferred_opset = 20
    preferred_opset_why = ("onnx2tf turns ONNX Gelu (opset 20) into TFLite's GELU; at older opsets exporters spell GELU "
                           "with Erf, which TFLite has no builtin for")
    # int8 ops left in float: refused unless --allow-float-ops; accelerator targets whose compilers hand them to
    # the CPU say True and report the split themselves
    float_ops_reported = False
    # Keras sources: the SavedModel signature takes the resolved shapes, batch included (an accelerator needs them);
    # LiteRT on a CPU keeps the model's dynamic batch, so profile can resize it
    static_shapes = False

    def graph_problems(self, proto, profile, opts: TargetOptions) -> list[str]:
        problems = super().graph_problems(proto, profile, opts)
        from onnx import TensorProto

        # float64 inputs or outputs (a float64 constant cast to float32 inside is onnx2tf's to handle)
        doubles = [v.name for v in list(proto.graph.input) + list(proto.graph.output)
                   if v.type.tensor_type.elem_type == TensorProto.DOUBLE]
        if doubles:
            problems.append(f"the model computes in float64 ({', '.join(doubles[:4])}{' …' if len(doubles) > 4 else ''}); "
                            "TFLite's kernels have no float64: convert the model to float32 first (PyTorch: "
                            "model.float(); Keras: a float32 dtype policy)")
        return problems

    def check_options(self, profile, opts: TargetOptions) -> None:
        super().check_options(profile, opts)
        # --io-dtype not given: the device profile's (full-integer accelerators say int8), else float
        if not opts.extra.get("io_dtype"):
            opts.extra["io_dtype"] = profile.runtime.get("io_dtype", "float")
        io = opts.extra["io_dtype"]
        if io not in IO_DTYPES:
            from edgeconv.errors import BadInput

            raise BadInput(f"--io-dtype must be one of {', '.join(IO_DTYPES)}, not {io!r}")
        if io == "float" and profile.runtime.get("io_dtype", "float") != "float":
            from edgeconv.errors import PreflightError

            raise PreflightError(f"{profile.name} needs integer input/output tensors: --io-dtype int8 or uint8")
        if io != "float" and opts.precision != "int8":
            from edgeconv.errors import PreflightError

            raise PreflightError(f"--io-dtype {io} needs --precision int8 (full integer); {opts.precision} keeps float I/O")

    # -- conversion ------------------------------------------------------------------------------------
    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        build = workdir / "_build"
        build.mkdir()
        source = ctx.source_model
        onnx_names = None
        try:
            notes: list[str] = []
            if source.framework == "keras":
                if opts.precision == "fp16" and ctx.float_layers:
                    raise ConversionFailed("fp16 layers kept in fp32 are mapped to TFLite ops through onnx2tf's layer map; "
                                           "a Keras source converts without onnx2tf", hint="convert with --precision fp32")
                tf = require("tensorflow", why="to build TFLite models")
                route = f"tf.lite.TFLiteConverter from the Keras/TensorFlow model (tensorflow {tf.__version__})"
                moved = False
                static = self.static_shapes
                recurrent = None if static else recurrent_part(source)
                if recurrent is not None:  # TFLite lowers a recurrent layer's TensorList ops only with static shapes
                    static = True
                    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in ctx.input_shapes.items())
                    notes.append(f"input shapes fixed at {shapes} (no dynamic batch): TFLiteConverter lowers the "
                                 f"recurrent {recurrent} only with static shapes")
                saved = self._saved_model_from_keras(tf, source, build, ctx.input_shapes if static else None)
                report: dict[str, Any] = {}
                data = tflite_from_saved_model(tf, saved, opts.precision, ctx.calibration, opts.extra["io_dtype"],
                                               moved, from_signature=True, denylisted_nodes=_denylist(ctx),
                                               activations=ctx.quant.activations, report=report)
                notes += float_ops_notes(report, len(_denylist(ctx)))
            else:
                data, notes, onnx_names = self._from_onnx(onnx_path, build, opts, ctx)
                route = (f"onnx2tf {version_of('onnx2tf')} → SavedModel → tf.lite.TFLiteConverter "
                         f"(tensorflow {version_of('tensorflow-cpu') or version_of('tensorflow')}), one child process")
                moved = True
        finally:
            shutil.rmtree(build, ignore_errors=True)
        dest = workdir / "model.tflite"
        dest.write_bytes(data)
        names_artifact = []
        if onnx_names:  # onnx2tf renames every tensor: the map back to the ONNX nodes, for edgeconv debug
            from edgeconv.debug.capture import onnx_names_path

            onnx_names_path(dest).write_text(onnx_names)
            names_artifact = [Artifact(onnx_names_path(dest).name, "debug-names", opts.precision)]
        # TFLiteConverter leaves an op without an int8 kernel in float (a DEQUANTIZE/QUANTIZE around it) even under
        # TFLITE_BUILTINS_INT8: an int8 model in name only, unless the user allows it or an accelerator's own
        # split report covers it.
        left = float_ops(dest) if opts.precision == "int8" else []
        if left and not (self.float_ops_reported or opts.extra.get("allow_float_ops") or ctx.float_layers):
            raise ConversionFailed(
                f"--precision int8 asks for a full-integer model, but {len(left)} op(s) stayed in float: "
                + ", ".join(left[:8]) + (" …" if len(left) > 8 else ""),
                hint="TFLite has no int8 kernel for them: --allow-float-ops keeps them in float (listed in the manifest); "
                     "or use --precision int8-dynamic or fp16, or replace those ops in the model")
        extra = self._describe(dest, opts, ctx, moved, route)
        checks = (self._check_translation(onnx_path, dest, workdir, profile, opts, ctx, extra["runner_options"])
                  if moved and opts.precision in ("fp32", "fp16") else [])  # a wrong translation: a failed check
        if opts.precision == "int8":
            extra["float_ops"] = left
        return Conversion([Artifact(onnx_path.name, "canonical-onnx", "fp32"),
                           Artifact(dest.name, "model", opts.precision, profile.runner, extra), *names_artifact],
                          checks=checks, notes=notes)

    def _saved_model_from_keras(self, tf, source, build: Path, shapes: dict[str, list] | None) -> Path:
        """The SavedModel TFLiteConverter reads: one serving signature calling the model in inference mode
        (``training=False``: augmentation layers such as RandomFlip are then identities, where Keras' own
        ``export()`` keeps their random ops, which TFLite has no kernels for). With ``shapes`` (static conversions) the
        signature has exactly the resolved input shapes, batch included: a dynamic batch in the TFLite graph keeps
        every op off the Edge TPU."""
        if source.format == "savedmodel" and shapes is None:
            return source.path
        out = build / "saved_model"
        specs = [tf.TensorSpec(shapes[s.name] if shapes else s.shape, s.dtype, name=s.name) for s in source.inputs]

        def infer(*xs):  # several outputs keep the ONNX graph's names and order in the signature
            named = source.named_outputs(source.model(list(xs) if len(xs) > 1 else xs[0], training=False))
            return named if len(named) > 1 else next(iter(named.values()))

        try:
            if source.format in ("keras", "keras-h5"):  # Keras 3: its ExportArchive tracks the model's variables
                # (and the seed generators of augmentation layers, which a bare tf.Module does not reach)
                import keras

                archive = keras.export.ExportArchive()
                archive.track(source.model)
                archive.add_endpoint("serve", infer, input_signature=specs)
                archive.write_out(str(out), verbose=False)
                return out
            holder = tf.Module()
            if source.format == "savedmodel":
                fn = tf.function(lambda *xs: source.signature(**{s.name: x for s, x in zip(source.inputs, xs)}),
                                 input_signature=specs)
                holder.loaded = source._loaded  # keeps the variables the signature reads
            else:  # Keras 2 (tf_keras): the model is a tf.Module
                fn = tf.function(infer, input_signature=specs)
                holder.model = source.model
            tf.saved_model.save(holder, str(out), signatures=fn.get_concrete_function())
        except Exception as exc:
            raise ConversionFailed(f"Keras could not export a SavedModel for TFLite: {type(exc).__name__}: {exc}") from exc
        return out

    def _from_onnx(self, onnx_path: Path, build: Path, opts: TargetOptions,
                   ctx: TargetContext) -> tuple[bytes, list[str], str | None]:
        """onnx2tf and TFLiteConverter in one child process (edgeconv/targets/tflite_job.py): the model, notes, and the
        JSON map of its TensorFlow layers to ONNX nodes (None when the child could not record it)."""
        if version_of("onnx2tf") is None:
            raise MissingDependency("onnx2tf is not installed (needed to turn ONNX into TFLite)",
                                    hint="install it with: pip install 'edgeconv[tflite]'")
        require_installed("tensorflow", why="to build TFLite models")
        work = (build / "onnx2tf").resolve()  # the child runs in it: every path it is given must be absolute
        copy, notes, args = self._prepare(onnx_path, work, opts, ctx)
        saved = work / "saved_model"
        samples = ctx.calibration if opts.precision == "int8" else None
        if samples:
            np.savez(work / "calibration.npz", **{n: np.stack([s[n] for s in samples]) for n in samples[0]})
        job = {"onnx2tf_args": ["-i", str(copy), "-o", str(saved), *args, "-v", "error"], "saved_model": str(saved),
               "precision": opts.precision, "io_dtype": opts.extra["io_dtype"],
               "calibration": str(work / "calibration.npz") if samples else None,
               "output": str(work / "model.tflite"), "error": str(work / "tflite_error.txt"),
               # the int8 guard's float layers: the full-int8 model's tensor names for them (onnx2tf names the TF ops
               # the same way on every run of the same graph)
               "denylisted_nodes": [] if opts.precision == "fp16" else _denylist(ctx), "names": str(work / "onnx-names.json"),
               # fp16 --fallback auto: the ONNX nodes whose ops read fp32 weights (edgeconv/targets/half.py)
               "fp32_nodes": [n for layer in ctx.float_layers for n in layer["nodes"]] if opts.precision == "fp16" else [],
               "float_ops_report": str(work / "float-ops.json"), "activations": ctx.quant.activations}
        names = work / "onnx-names.json"
        with self._cached_saved_model(ctx, copy, work, saved, names, args) as slot:
            job["skip_onnx2tf"] = slot.hit is not None
            proc = _run_job(work, job)
            if proc.returncode == 0:
                if slot.hit is None:
                    def keep(d: Path) -> None:  # onnx2tf's own float .tflite files beside it are not needed again
                        shutil.copytree(saved, d / "saved_model", ignore=shutil.ignore_patterns("*.tflite"))
                        if names.is_file():
                            shutil.copyfile(names, d / names.name)

                    slot.keep(keep)
                else:
                    notes.append(f"onnx2tf's SavedModel from the cache ({slot.hit}): the same graph, sample data and "
                                 f"onnx2tf {version_of('onnx2tf')} as the conversion that stored it")
                if (work / "float-ops.json").is_file():
                    notes += float_ops_notes(json.loads((work / "float-ops.json").read_text()), len(job["denylisted_nodes"]))
                return (work / "model.tflite").read_bytes(), notes, names.read_text() if names.is_file() else None
        if proc.returncode == TFLITE_FAILED:
            raise ConversionFailed((work / "tflite_error.txt").read_text())
        log = proc.stdout + proc.stderr
        failed_dir = ctx.failed_build_dir
        failed_dir.mkdir(parents=True, exist_ok=True)
        (failed_dir / "onnx2tf.log").write_text(log)
        nodes: dict[str, list[str]] = {}
        for n in _graph_nodes(onnx_path):
            nodes.setdefault(n.op_type, []).append(n.name)
        ops = failed_ops(log, nodes)
        reason = onnx2tf_reason(log)
        raise ConversionFailed(
            f"onnx2tf {version_of('onnx2tf')} could not convert "
            + (f"{', '.join(ops)}" if ops else "the graph") + (f": {reason}" if reason else "") + f" (exit {proc.returncode})",
            details=condense_onnx2tf_log(log),
            hint=f"full log: {failed_dir / 'onnx2tf.log'}; onnx2tf's remedies for one op (a parameter replacement JSON, "
                 "-kat/-ois for layouts and shapes) are in its README, or replace that op in the model",
        )

    @staticmethod
    @contextlib.contextmanager
    def _cached_saved_model(ctx: TargetContext, copy: Path, work: Path, saved: Path, names: Path, args: list[str]):
        """convert --cache: onnx2tf's SavedModel (and its layer → ONNX node map), keyed by the graph onnx2tf reads (after
        edgeconv's rewrites for it), its sample data, arguments and version. tflite, coral, ethos-u, and every
        attempt of the int8 guard, then run onnx2tf once per graph; only TFLiteConverter runs again. On a hit the
        cached folder is copied where onnx2tf would have written it."""
        if ctx.cache is None:
            yield StepSlot()
            return
        key = {"graph": sha256_of(copy), "sample": sha256_of(work / ONNX2TF_SAMPLE_FILE), "args": args,
               "onnx2tf": version_of("onnx2tf"), "tf_keras": version_of("tf_keras")}
        with ctx.cache.step("onnx2tf", key) as slot:
            if slot.hit is not None:
                shutil.copytree(slot.hit / "saved_model", saved)
                if (slot.hit / names.name).is_file():
                    shutil.copyfile(slot.hit / names.name, names)
            yield slot

    def _prepare(self, onnx_path: Path, work: Path, opts: TargetOptions, ctx: TargetContext) -> tuple[Path, list[str], list[str]]:
        """onnx2tf's working directory: the copy of the graph it converts (with edgeconv's rewrites for onnx2tf, each
        recorded as a note) and its sample-data file made from the user's inputs; and onnx2tf's options for it."""
        import onnx

        work.mkdir()
        copy = work / "model.onnx"  # onnx2tf rewrites its input in place: its own copy, with edgeconv's rewrites
        model = onnx.load(str(onnx_path))
        notes = []
        args = list(ONNX2TF_ARGS)
        erf = erf_nodes(model)
        if erf:
            args += ["-rtpo", "erf"]
            notes.append(f"{len(erf)} Erf node(s) ({', '.join(erf[:3])}{' …' if len(erf) > 3 else ''}): TFLite has no Erf op, "
                         "so onnx2tf computes it with its pseudo-Erf (-rtpo erf; Abramowitz-Stegun 7.1.26, |error| ≤ "
                         "1.5e-7); an exact GELU pattern around one becomes TFLite's GELU")
        stfts = spell_stft(model)
        if stfts:
            notes.append(f"{len(stfts)} STFT node(s) ({', '.join(stfts[:3])}) spelled as a strided Conv with DFT kernels "
                         f"(the same transform; onnx2tf {version_of('onnx2tf')} has no STFT)")
        norms = spell_norm_reductions(model)
        if norms:
            notes.append(f"{len(norms)} ReduceL1/ReduceL2 node(s) ({', '.join(norms[:3])}{' …' if len(norms) > 3 else ''}) "
                         "spelled as ReduceSum(Abs) / Sqrt(ReduceSumSquare) for onnx2tf (the same reduction; onnx2tf "
                         f"{version_of('onnx2tf')} fails on them when their axes are an input)")
        ifs = scalar_if_outputs_as_rank1(model)
        if ifs:
            notes.append(f"If node(s) {', '.join(ifs[:3])}: 0-d branch outputs made [1] and reshaped back after the If (the "
                         f"same values, both branches kept; onnx2tf {version_of('onnx2tf')} refuses a [1] condition beside "
                         "0-d branch outputs)")
        if opts.precision == "int8":
            moved_pads = zero_pads_before_maxpool(model)
            if moved_pads:
                notes.append(
                    f"int8: the padding of {len(moved_pads)} MaxPool node(s) on non-negative inputs ({', '.join(moved_pads[:3])}"
                    f"{' …' if len(moved_pads) > 3 else ''}) made an explicit zero Pad (the same values; onnx2tf would pad with "
                    "float32's minimum, which leaves int8 no resolution in that tensor)")
        kept = kept_inputs(ctx.input_shapes, ctx.output_shapes)
        if kept:  # a state and a 0-d input keep their shapes (onnx2tf would move a state's axes away from its op's)
            args += ["-kat", *kept]
            notes.append(f"input(s) {', '.join(kept)} kept as the model declares them (onnx2tf -kat): 0-d, or a state an "
                         "output carries to the next step")
        onnx.save(model, str(copy))
        np.save(work / ONNX2TF_SAMPLE_FILE, _nhwc_sample(ctx.reference_inputs))
        return copy, notes, args

    def _check_translation(self, onnx_path: Path, dest: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext,
                           runner_options: dict[str, Any]) -> list[dict[str, Any]]:
        """A float TFLite model that does not compute what the canonical ONNX graph computes is onnx2tf's translation
        going wrong somewhere. Then onnx2tf runs once more with its own per-op check (-cotof), and the first op whose
        output differs from onnxruntime's is named (the reason too, for a known onnx2tf limitation) in a failed check: the
        bundle is kept for ``edgeconv debug``, convert fails with its ``reason``. No check when no op is found."""
        from edgeconv.data import run_batched
        from edgeconv.parity import compare
        from edgeconv.runners import open_runner

        feed = ctx.reference_inputs
        first = next(iter(ctx.input_shapes.values()), [None])
        batch = first[0] if first and isinstance(first[0], int) else None
        with open_runner("onnxruntime", onnx_path) as r:
            expected = run_batched(r.infer, feed, batch)
        with open_runner(profile.runner, dest, options=runner_options) as r:
            actual = run_batched(r.infer, feed, batch)
        names = list(ctx.output_shapes)
        rep = compare(f"{dest.name} vs the canonical ONNX graph", names, expected, actual, profile.tolerance(opts.precision))
        if rep.ok:
            return []
        largest = max((float(np.max(np.abs(e))) for e in expected
                       if np.size(e) and np.issubdtype(np.asarray(e).dtype, np.floating)),
                      default=None)
        if largest is not None and largest < np.finfo(np.float32).tiny:
            raise ConversionFailed(
                f"the model's outputs on the reference inputs are subnormal floats (largest |value| {largest:.3g}, below "
                f"float32's smallest normal {np.finfo(np.float32).tiny:.3g}), which LiteRT's CPU kernels flush to zero, so "
                "no float TFLite model can reproduce them",
                details=rep.failure_text(),
                hint="the model's activations vanish on these inputs (e.g. untrained weights that shrink every layer); "
                     "check it with the inputs you deploy, or a trained checkpoint")
        work = (workdir / "_onnx2tf_check").resolve()
        try:
            copy, _, args = self._prepare(onnx_path, work, TargetOptions(precision="fp32", dynamic_batch=opts.dynamic_batch,
                                                                         extra=opts.extra), ctx)
            job = {"onnx2tf_args": ["-i", str(copy), "-o", str(work / "saved_model"), *args, "-cotof", "-v", "info"],
                   "check_only": True}
            proc = _run_job(work, job)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log = proc.stdout + proc.stderr
        graph = _graph_nodes(onnx_path, infer_shapes=True)
        diverging = first_diverging(log, graph)
        if diverging is not None:
            op, node, err, cube = diverging
            found = f"the first op its own check (-cotof) finds diverging from ONNX (max abs {err:.3g})"
        else:  # -cotof matches tensors up to a transpose, so it can miss a moved axis: the first op the layout rule misreads
            suspect = first_equal_dims_reader(graph)
            if suspect is None:
                return []
            op, node, cube = suspect
            err = None
            found = "the first op that reads a tensor its layout rule misreads (its own check, -cotof, saw no diverging op)"
        failed_dir = ctx.failed_build_dir
        failed_dir.mkdir(parents=True, exist_ok=True)
        (failed_dir / "onnx2tf_check.log").write_text(log)
        why = (f"its input {cube[0]!r} is {'x'.join(map(str, cube[1]))}, and onnx2tf takes a tensor whose dimensions after "
               "the batch are all equal for a channel-last one, so it moves that op's axes" if cube else
               f"its output differs from onnxruntime's by {err:.3g} (max abs)")
        return [{
            "kind": "onnx2tf-translation", "ok": False, "conversion_error": True, "op": op, "node": node, "label": rep.label,
            "reason": f"onnx2tf {version_of('onnx2tf')} translates {op} ({node}) wrongly, {found}: {why}",
            "details": rep.failure_text(),
            "hint": (f"onnx2tf's per-op log: {failed_dir / 'onnx2tf_check.log'}; "
                  + ("a known onnx2tf limitation: an input size that does not make those dimensions equal (--sample / "
                     "--data at another H×W) avoids it, or an onnx2tf parameter replacement JSON (-prf) for that node"
                     if cube
                     else "an onnx2tf parameter replacement JSON (-prf) for that node, or replacing that op in the model"))}]

    def _describe(self, tflite: Path, opts: TargetOptions, ctx: TargetContext, moved: bool, route: str) -> dict[str, Any]:
        from edgeconv.runners.litert import signature_io

        ins, outs = signature_io(tflite)
        src_in = ctx.input_shapes
        src_out = ctx.output_shapes
        in_names = list(src_in)
        out_names = list(src_out)
        in_map = dict(zip(in_names, _match(in_names, [d["name"] for d in ins])))
        out_map = dict(zip(out_names, _match(out_names, [d["name"] for d in outs])))
        by_name = {d["name"]: d for d in ins + outs}
        perms = artifact_layouts({**src_in, **src_out},
                                 {**{n: by_name[in_map[n]]["shape"] for n in in_names},
                                  **{n: by_name[out_map[n]]["shape"] for n in out_names}},
                                 moved)
        return {
            "converter": route,
            "io_dtype": opts.extra["io_dtype"] if opts.precision == "int8" else "float",
            "tensor_dtypes": {d["name"]: d["dtype"] for d in ins + outs},
            "runner_options": {"tensor_names": {**in_map, **out_map}, "permutations": perms},
            "onnx2tf_tested": ONNX2TF_TESTED if moved else None,
        }


def _denylist(ctx: TargetContext) -> list[str]:
    """The int8 guard's float layers as TFLite tensor names (what the debugger matched them to in the full-int8 model;
    the same converter names the same ops the same way on every run)."""
    return [n for layer in ctx.float_layers for n in layer.get("artifact_names", [])]


def _match(wanted: list[str], have: list[str]) -> list[str]:
    """Manifest tensor names → TFLite signature names: by name, else ``output_<i>``, else in order."""
    if set(wanted) <= set(have):
        return wanted
    if len(wanted) == len(have):
        indexed = {}
        for h in have:
            m = re.fullmatch(r".*?_(\d+)", h)
            if m:
                indexed[int(m.group(1))] = h
        if sorted(indexed) == list(range(len(have))):
            return [indexed[i] for i in range(len(wanted))]
        return list(have)
    raise ConversionFailed(f"the TFLite model's tensors {have} do not correspond to the model's {wanted}")
