"""A target's own accuracy control (OpenVINO: NNCF's ``quantize_with_accuracy_control``, the path without
``--fallback auto``) gets the int8 guard's record: its op names mapped back to ONNX nodes and source names, the drop of
the full-int8 model it started from and of the artifact kept, and the same cost figures. See docs/architecture.md."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeconv.convert.attempts import cost, p50_ms, size_of
from edgeconv.convert.failures import converter_step
from edgeconv.convert.state import ConvertState
from edgeconv.export_cache import layer_names


def _float_tensors(model) -> set[str]:
    """Tensors of the graph that are (or may be) float: what the debugger's reference run would have produced."""
    import onnx

    known: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - without inferred types every output counts as float (the names still map)
        inferred = model
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        if v.type.HasField("tensor_type"):
            known[v.name] = v.type.tensor_type.elem_type
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return {o for node in model.graph.node for o in node.output if o and known.get(o, onnx.TensorProto.FLOAT) in floats}


def layers_of_ops(onnx_path: Path, framework: str, ops: list[str],
                  names: list[str] | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """An artifact's op names → the canonical graph's layers (``edgeconv debug``'s grouping, source names included),
    in the order given, and the op names no ONNX node accounts for. OpenVINO names an op after its ONNX node (``node``)
    or a part of it (``node/WithoutBiases``); an ONNX name may itself hold ``/``, so the longest node name wins."""
    import onnx

    from edgeconv.debug.graph import layers_of

    model = onnx.load(str(onnx_path))
    layers = layers_of(model, framework, _float_tensors(model), names)
    by_node = {n: layer for layer in layers for n in layer.nodes}
    for node in model.graph.node:  # an op may carry the name of its node's output tensor instead
        for o in node.output:
            if node.name in by_node and o not in by_node:
                by_node[o] = by_node[node.name]
    longest_first = sorted(by_node, key=len, reverse=True)
    found: dict[str, dict[str, Any]] = {}
    unmatched = []
    for op in ops:
        hit = next((n for n in longest_first if op == n or op.startswith(n + "/")), None)
        if hit is None:
            unmatched.append(op)
            continue
        layer = by_node[hit]
        entry = found.setdefault(layer.name, {"layer": layer.name, "source": layer.source, "source_class": layer.source_class,
                                              "op": layer.op, "nodes": layer.nodes, "artifact_names": []})
        entry["artifact_names"].append(op)
    return list(found.values()), unmatched


def _before(st: ConvertState, full, full_dir: Path, sample) -> tuple[dict[str, Any], float, int]:
    """The full-int8 model the accuracy control started from: its accuracy check, p50 and size."""
    full_art = next(a for a in full.artifacts if a.role == "model")
    options = {**full_art.extra.get("runner_options", {}), **st.check_overrides}
    with st.steps.step("accuracy control: accuracy of the full-int8 model it started from"), converter_step(
            f"running {full_art.file} on {full_art.runner}", st.failed_dir):
        before = st.evaluator.accuracy(full_dir, full_art, options)[1]
    with st.steps.step("accuracy control: p50 latency of the full-int8 model"):
        full_p50 = p50_ms(full_dir, full_art, st.check_options, sample)
    return before, full_p50, size_of(full_dir, full)


def _nncf_attempts(st: ConvertState, nncf: dict[str, Any]) -> list[dict[str, Any]]:
    attempts = []
    for i, step in enumerate(nncf.get("steps", []), 1):
        layers, rest = layers_of_ops(st.onnx_path, st.source.framework, step["reverted"], layer_names(st.source))
        attempts.append({"step": i, "layers": [x["source"] or x["layer"] for x in layers] + rest,
                         "drop_points": step["drop_points"], "ok": step["ok"], "measured_with": "nncf"})
    return attempts


def accuracy_control_record(st: ConvertState) -> dict[str, Any]:
    """The fallback record of a target's own accuracy control (``conversion.accuracy_control``): the layers it kept in
    float with their source names, the drop of the full-int8 model it started from and after, and the size and p50
    latency against full int8. The full-int8 files are removed afterwards; when nothing was reverted the artifact is the
    full-int8 model."""
    ac, after, art = st.conversion.accuracy_control, st.accuracy_check, st.model_art
    full, full_dir = ac.get("full_int8"), ac.get("full_int8_dir")
    sample = {k: v[: st.batch or 1] for k, v in st.data.feed.items()}
    try:
        kept, unmatched = layers_of_ops(st.onnx_path, st.source.framework, ac["float_ops"], layer_names(st.source))
        if full is None:
            with st.steps.step("accuracy control kept no layer in float: p50 latency of the int8 artifact"):
                full_p50 = p50 = p50_ms(st.work, art, st.check_options, sample)
            full_size = size = size_of(st.work, st.conversion)
            before = after
        else:
            before, full_p50, full_size = _before(st, full, full_dir, sample)
            with st.steps.step("accuracy control: p50 latency with the float layers"):
                p50 = p50_ms(st.work, art, st.check_options, sample)
            size = size_of(st.work, st.conversion)
        nncf = ac.get("nncf") or {}
        attempts = _nncf_attempts(st, nncf)
    finally:
        if full_dir is not None:
            shutil.rmtree(full_dir, ignore_errors=True)
    record = {
        "mode": "accuracy-control", "ok": bool(after["ok"]),
        "max_float_layers": None,  # the target's accuracy control sets its own bound
        "max_accuracy_drop": after.get("max_drop_points"), "ranked_by": ac["ranked_by"], "mechanism": ac["mechanism"],
        "float_layers": kept + [{"layer": op, "source": None, "source_class": None, "op": None, "nodes": [],
                                 "artifact_names": [op]} for op in unmatched],
        "candidates": None,  # the accuracy control does not publish its ranking
        "drop_before": before["drop_points"], "drop_after": after["drop_points"],
        "accuracy_before": before["artifact"], "accuracy_after": after["artifact"],
        "attempts": attempts, "attempts_measured_with": nncf.get("measured_with"),
        "cost": cost(full_size, size, full_p50, p50, art.runner, st.batch),
    }
    if unmatched:
        record["unmatched_ops"] = unmatched
    return record
