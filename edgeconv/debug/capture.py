"""Intermediate tensors, captured by each runtime's own mechanism and keyed by the canonical ONNX graph's tensor names.

- fp32 reference and Q/DQ ONNX: onnxruntime.quantization.qdq_loss_debug (every float tensor made a graph output;
  for Q/DQ, the value after its QuantizeLinear → DequantizeLinear pair, which is what the next op reads).
- OpenVINO IR: ``Model.add_outputs`` on every op whose output port carries an ONNX tensor name (the ONNX frontend
  keeps them); a FakeQuantize's output stands for the tensor it quantizes.
- TFLite: LiteRT's ``experimental_preserve_all_tensors`` on the builtin kernels; int8 tensors dequantized with
  their own scale and zero point, NHWC → NCHW; matched to ONNX tensors by onnx2tf's names, else by shape and order.

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


def _collect(model_path: Path, feeds: list[dict[str, np.ndarray]], work: Path) -> dict[str, list[np.ndarray]]:
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    augmented = work / f"{model_path.stem}.augmented.onnx"
    modify_model_output_intermediate_tensors(str(model_path), str(augmented))
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


def qdq_onnx(qdq_path: Path, feeds: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray]) -> Captured:
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
    return Captured(out, "onnxruntime.quantization.qdq_loss_debug: the Q/DQ graph run unfused on ONNX Runtime's CPU "
                         "kernels (each tensor after its Quantize/DequantizeLinear pair)", names)


DEBUG_NAME = "edgeconv.debug:"


def openvino_ir(xml: Path, feeds: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray]) -> Captured:
    from edgeconv.runners.openvino import load_openvino

    ov = load_openvino()
    core = ov.Core()
    model = core.read_model(str(xml))
    wanted: dict[str, Any] = {}  # onnx tensor -> port
    names: dict[str, str] = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in ("Result", "Constant", "Parameter"):
            continue
        if kind == "FakeQuantize":
            src = op.input_value(0)
            if src.get_node().get_type_name() == "Constant":
                continue
            for t in src.get_names():  # what the next op reads: the quantized value stands for this tensor
                if t in reference:
                    wanted[t] = op.output(0)
                    names[t] = f"{op.get_friendly_name()} (FakeQuantize)"
            continue
        for port in op.outputs():
            for t in port.get_names():
                if t in reference and names.get(t, "").endswith("(FakeQuantize)") is False:
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
    return Captured(out, f"OpenVINO {ov.__version__} Model.add_outputs, CPU plugin, f32 inference precision (int8 where the IR "
                         "has FakeQuantize ops; a FakeQuantize's output stands for the tensor it quantizes)", names)


def litert(tflite: Path, runner_options: dict[str, Any], feeds: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray],
           order: list[str]) -> Captured:
    """``order``: the reference tensors in graph order (to match by position what onnx2tf renamed)."""
    from edgeconv.device.edgeconv_runner import LiteRtBackend, tflite_interpreter_module

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
        d = details[t]
        a = np.concatenate(arrs)
        scale, zero = d["quantization"]
        if scale and a.dtype.kind in "iu":
            a = (a.astype(np.float32) - zero) * scale
        values[t] = a.astype(np.float32, copy=False)
    out, names, derived = _match_tflite(produced, details, values, reference, order)
    if not out:
        raise IntermediatesUnavailable(f"{tflite.name}: none of its tensors could be matched to the canonical ONNX graph")
    return Captured(out, "LiteRT experimental_preserve_all_tensors on the builtin int8 kernels (no XNNPACK delegate); "
                         "int8 tensors dequantized, NHWC moved back to NCHW", names, derived,
                    notes=[f"{len(out)} of {len(order)} ONNX tensors matched to TFLite tensors"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(-1).astype(np.float64)
    b = b.reshape(-1).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def _layouts(arr: np.ndarray, ref_shape: tuple) -> list[np.ndarray]:
    """The TFLite tensor in the reference's layout: as it is and/or channel-last moved back to channel-first."""
    found = []
    if tuple(arr.shape[1:]) == tuple(ref_shape[1:]):
        found.append(arr)
    if arr.ndim >= 3:
        moved = arr.transpose([0, arr.ndim - 1, *range(1, arr.ndim - 1)])
        if tuple(moved.shape[1:]) == tuple(ref_shape[1:]) and moved.shape != arr.shape:
            found.append(moved)
    return found


# ops onnx2tf and TFLiteConverter add around the ONNX graph's own (layout changes, padding, I/O conversion)
LAYOUT_OPS = {"QUANTIZE", "DEQUANTIZE", "DELEGATE", "TRANSPOSE", "PAD", "PADV2"}
BACK_MATCH_COSINE = 0.9
# how many ONNX tensors past the last match a TFLite tensor may skip (onnx2tf fuses and TFLite folds a few)
WINDOW = 8


def _match_tflite(produced, details, values, reference, order) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, list[str]]]:
    """onnx2tf names TensorFlow ops after their kind (``tf.nn.convolution_1``), not after the ONNX nodes, so tensors are
    matched by what they hold: in execution order, each TFLite op output goes to the unmatched ONNX tensor near the
    last match (graph order) whose shape fits in either layout and whose values agree best (cosine);
    Relu/Clip fused into a TFLite conv thereby match the activation's output, not the conv's."""
    out: dict[str, np.ndarray] = {}
    names: dict[str, str] = {}
    derived: dict[str, list[str]] = {}
    source_of: dict[int, str] = {}  # TFLite tensor → the ONNX tensor it holds (or is a re-layout of)
    last = -1
    for op, t in produced:
        if op["op_name"] in LAYOUT_OPS:
            src = source_of.get(int(op["inputs"][0])) if len(op["inputs"]) else None
            if src is not None and op["op_name"] not in ("QUANTIZE", "DEQUANTIZE"):
                source_of[t] = src
                derived.setdefault(src, []).append(details[t]["name"])
            continue
        best = None
        # TFLite may schedule independent branches in another order than the ONNX graph: look a little back too
        for pos in [*range(last + 1, min(last + 1 + WINDOW, len(order))), *range(last, max(last - WINDOW, -1), -1)]:
            onnx_name = order[pos]
            if onnx_name in out:
                continue
            ref = reference[onnx_name]
            for arr in _layouts(values[t], ref.shape):
                if arr.shape != ref.shape:
                    continue
                c = _cosine(arr, ref)
                # ahead, the right shape is evidence enough (a layer int8 broke has a poor cosine); behind, only a
                # clear likeness (an intermediate of an op TFLite decomposes, e.g. HardSigmoid's x+3, is not a match)
                if pos <= last and c < BACK_MATCH_COSINE:
                    continue
                if best is None or c > best[0] + 1e-6:
                    best = (c, pos, arr)
        if best is None:
            continue
        _, pos, arr = best
        onnx_name = order[pos]
        out[onnx_name], names[onnx_name] = arr, details[t]["name"]
        source_of[t] = onnx_name
        last = max(last, pos)
    return out, names, derived
