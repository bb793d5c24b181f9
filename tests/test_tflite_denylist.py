"""The int8 guard's float layers on TFLite (TargetContext.float_layers → QuantizationDebugger's denylist): an op named
by the full-int8 model really runs in float, and a name that matches no op of the converter's graph is said in the
conversion's notes instead of silently giving the full-int8 model again.

The graph has the head of a YOLOv8 detector: one tensor sliced in two, box values scaled by a constant and class scores
through a Sigmoid, concatenated into the output. In the full-int8 model the Sigmoid's output is requantized (a QUANTIZE
``…Sigmoid1``) to the Concat's shared scale; the guard's ranking may hand over either name."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx2tf")
pytest.importorskip("tensorflow")


def _head(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 8, 64], np.int64), "shape"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([2], np.int64), "s2"),
             numpy_helper.from_array(np.array([8], np.int64), "s8"), numpy_helper.from_array(np.array([1], np.int64), "ax"),
             numpy_helper.from_array(np.full((1, 1, 64), 32.0, np.float32), "stride")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "shape"], ["r"], name="reshape"),
             helper.make_node("Slice", ["r", "s0", "s2", "ax"], ["box"], name="box_slice"),
             helper.make_node("Mul", ["box", "stride"], ["box_px"], name="box_scale"),
             helper.make_node("Slice", ["r", "s2", "s8", "ax"], ["logits"], name="cls_slice"),
             helper.make_node("Sigmoid", ["logits"], ["scores"], name="cls_sigmoid"),
             helper.make_node("Concat", ["box_px", "scores"], ["y"], name="head_concat", axis=1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 64])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.fixture(scope="module")
def convert(tmp_path_factory):
    """``convert(float_layers)`` → (the TFLite graph's ops and tensors, the conversion's notes)."""
    from edgeconv.frontends.base import LoadOptions
    from edgeconv.frontends.onnx import OnnxSource
    from edgeconv.profiles import resolve_profile
    from edgeconv.targets import backend
    from edgeconv.targets.base import TargetContext, TargetOptions
    from edgeconv.targets.tflite import tflite_graph

    root = tmp_path_factory.mktemp("denylist")
    _head(root / "head.onnx")
    x = np.random.default_rng(1).normal(0, 1, (8, 1, 3, 8, 8)).astype(np.float32)
    target, profile = backend("tflite"), resolve_profile("tflite")
    runs: list = []

    def run(float_layers):
        ctx = TargetContext(source_model=OnnxSource(root / "head.onnx", LoadOptions()), reference_inputs={"x": x[:2, 0]},
                            input_shapes={"x": [1, 3, 8, 8]}, output_shapes={"y": [1, 8, 64]}, layouts={"x": "NCHW"},
                            failed_build_dir=root / "failed", calibration=[{"x": s} for s in x], float_layers=float_layers)
        work = root / f"run{len(runs)}"
        work.mkdir()
        conversion = target.convert(root / "head.onnx", work, profile, TargetOptions("int8", extra={"io_dtype": "float"}), ctx)
        runs.append(work)
        ops, tensors, _, _ = tflite_graph(work / "model.tflite")
        graph = [(op["op"], [tensors[i] for i in op["inputs"]], [tensors[i] for i in op["outputs"]]) for op in ops]
        return graph, conversion.notes

    return run


@pytest.fixture(scope="module")
def full_int8(convert):
    return convert([])


def _the(ops, kind):
    return next(op for op in ops if op[0] == kind)


def test_full_int8_requantizes_the_sigmoid_to_the_concat(full_int8):
    ops, _ = full_int8
    assert _the(ops, "LOGISTIC")[2][0]["dtype"] == "int8"
    assert _the(ops, "CONCATENATION")[2][0]["dtype"] == "int8"


def test_named_ops_run_in_float_and_an_unknown_name_is_noted(convert, full_int8):
    ops, _ = full_int8
    sigmoid = _the(ops, "LOGISTIC")[2][0]["name"]
    # the requantized copy's name (what a capture of the full-int8 model may report) stands for the Sigmoid itself
    copy = next((o[0]["name"] for _, i, o in ops if i and i[0]["name"] == sigmoid), sigmoid)
    concat = _the(ops, "CONCATENATION")[2][0]["name"]
    layers = [{"layer": "cls_sigmoid", "source": None, "artifact_names": [copy, "no/such/tensor"]},
              {"layer": "head_concat", "source": None, "artifact_names": [concat]}]
    kept, notes = convert(layers)
    logistic, concatenation = _the(kept, "LOGISTIC"), _the(kept, "CONCATENATION")
    assert [t["dtype"] for t in logistic[1] + logistic[2]] == ["float32", "float32"]
    assert {t["dtype"] for t in concatenation[1] + concatenation[2]} == {"float32"}
    assert _the(kept, "CONV_2D")[2][0]["dtype"] == "int8"  # the rest stays integer
    assert any("no/such/tensor" in n and "match no op" in n for n in notes), notes
    assert not any(sigmoid in n or concat in n for n in notes), notes
