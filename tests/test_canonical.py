"""The canonical ONNX step (edgeconv/canonical.py) on real graphs, checked with ONNX Runtime before and after."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgeconv.canonical import canonicalize, canonicalize_file, fold_trigger, target_opset
from edgeconv.errors import ConversionFailed, MissingDependency
from edgeconv.onnx_tools import opset_of


def run(model, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def assert_same_numbers(before, after, feed, atol=1e-5):
    for a, b in zip(run(before, feed), run(after, feed), strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=atol)


def dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def vi(name: str, shape, elem=T.FLOAT):
    return h.make_tensor_value_info(name, elem, shape)


def branches(shape):
    """then: Relu(x), else: Neg(x) — the two subgraphs of an If reading the outer ``x``."""
    return (h.make_graph([h.make_node("Relu", ["x"], ["t"], name="then_relu")], "then", [], [vi("t", shape)]),
            h.make_graph([h.make_node("Neg", ["x"], ["e"], name="else_neg")], "else", [], [vi("e", shape)]))


def model_of(nodes, inputs, outputs, opset, inits=(), ir=None):
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    if ir is not None:
        m.ir_version = ir
    return m


# -- torch's TorchScript exporter at opset 9 (what old exports look like) -------------------------------------------------
def _torch_cnn(dynamic: bool):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
            self.c2, self.fc = nn.Conv2d(8, 8, 3, stride=2), nn.Linear(8, 4)

        def forward(self, x):
            x = torch.relu(self.bn(self.c1(x)))
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")  # Upsample at opset 9, Resize later
            x = torch.relu(self.c2(x)).mean(dim=(2, 3))
            return self.fc(x.view(x.size(0), -1))  # Shape → Gather → Unsqueeze → Concat → Reshape

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    import io
    import warnings

    buf = io.BytesIO()
    kw = {"dynamic_axes": {"x": {0: "N"}, "y": {0: "N"}}} if dynamic else {"keep_initializers_as_inputs": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Upsample at opset 9 may not match PyTorch": nearest x2 does
        # do_constant_folding=False keeps BatchNormalization and the Constant/Concat chains an unoptimised export has
        torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), buf, dynamo=False, opset_version=9, input_names=["x"],
                          output_names=["y"], do_constant_folding=False, **kw)
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def torch_opset9():
    return _torch_cnn(dynamic=False)


@pytest.fixture(scope="module")
def torch_opset9_dynamic():
    return _torch_cnn(dynamic=True)


def test_torch_opset9_cnn_upgraded_folded_same_numbers(torch_opset9):
    src = torch_opset9
    assert opset_of(src) == 9 and len(src.graph.input) == 11  # x + 10 weights listed as inputs
    original = src.SerializeToString()
    model, rec = canonicalize(src)
    assert src.SerializeToString() == original, "canonicalize must not edit the model it is given"
    onnx.checker.check_model(model, full_check=True)

    assert (rec.opset_before, rec.opset_after, rec.ir_before, rec.ir_after) == (9, 17, 4, 8)
    assert (rec.nodes_before, rec.nodes_after) == (17, 7)
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu", "Resize", "Conv", "Relu", "ReduceMean", "Gemm"]
    assert rec.changes[0] == "10 initializer(s) removed from the graph inputs (weights, not model inputs)"
    assert "opset 9 → 17 (onnx.version_converter)" in rec.changes
    assert "IR version 4 → 8 (the oldest that opset 17 allows)" in rec.changes
    fold = next(c for c in rec.changes if c.startswith("constants folded"))
    assert "−1 BatchNormalization" in fold and "→ 7 nodes" in fold and "onnxslim" in fold
    assert rec.control_flow == [] and rec.tools["onnxslim"]

    assert [i.name for i in model.graph.input] == ["x"] and [o.name for o in model.graph.output] == ["y"]
    # the source's node names survive the converter (Upsample → Resize keeps '/Upsample') and Conv+BN fusion
    names = [n.name for n in model.graph.node]
    assert {"/c1/Conv", "/Upsample", "/c2/Conv", "/fc/Gemm"} <= set(names)
    x = np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)
    assert_same_numbers(src, model, {"x": x})


def test_canonicalize_file_in_place(torch_opset9, tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(torch_opset9, str(path))
    rec = canonicalize_file(path, max_opset=13, keep_inputs=["x"])
    saved = onnx.load(str(path))
    assert (rec.opset_after, opset_of(saved), len(saved.graph.node)) == (13, 13, 7)
    assert [i.name for i in saved.graph.input] == ["x"] and not (tmp_path / "model.onnx.data").exists()


def test_torch_opset9_dynamic_batch_kept(torch_opset9_dynamic):
    src = torch_opset9_dynamic
    assert {n.op_type for n in src.graph.node} >= {"Shape", "Gather", "Concat", "BatchNormalization"}
    model, rec = canonicalize(src)
    assert dims(model.graph.input[0]) == ["N", 3, 16, 16] and dims(model.graph.output[0]) == ["N", 4]
    assert (rec.nodes_before, rec.nodes_after) == (19, 8)
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and "Constant" not in ops and "Concat" not in ops
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        assert_same_numbers(src, model, {"x": rng.normal(size=(batch, 3, 16, 16)).astype(np.float32)})


# -- hand-built graphs ---------------------------------------------------------------------------------------------------
def test_ir3_initializers_listed_as_inputs():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 4])
    # IR 3 (opset 8): every initializer must also be a graph input
    src = model_of([h.make_node("Gemm", ["x", "w", "b"], ["g"], name="fc"), h.make_node("Relu", ["g"], ["y"], name="act")],
                   [x, h.make_tensor_value_info("w", T.FLOAT, [4, 3]), h.make_tensor_value_info("b", T.FLOAT, [3])],
                   [h.make_tensor_value_info("y", T.FLOAT, [2, 3])], 8, [nh.from_array(w, "w"), nh.from_array(b, "b")], ir=3)
    onnx.checker.check_model(src)
    model, rec = canonicalize(src)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    assert {i.name for i in model.graph.initializer} == {"w", "b"}
    assert rec.changes == ["IR 3: 2 initializer(s) removed from the graph inputs (weights, not model inputs)",
                           "opset 8 → 17 (onnx.version_converter)", "IR version 3 → 8 (the oldest that opset 17 allows)"]
    assert (rec.ir_before, rec.ir_after, rec.opset_after) == (3, 8, 17)
    assert [n.name for n in model.graph.node] == ["fc", "act"]
    feed = {"x": rng.normal(size=(2, 4)).astype(np.float32)}
    np.testing.assert_allclose(run(model, feed)[0], np.maximum(feed["x"] @ w + b, 0), rtol=1e-5, atol=1e-6)


def test_keep_inputs_keeps_an_initializer_input_the_model_declares():
    w = nh.from_array(np.full((4,), 2.0, np.float32), "scale")
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    src = model_of([h.make_node("Mul", ["x", "scale"], ["y"], name="mul")],
                   [x, vi("scale", [4])], [vi("y", [1, 4])], 17, [w])
    model, rec = canonicalize(src, keep_inputs=["x", "scale"])
    assert [i.name for i in model.graph.input] == ["x", "scale"] and not any("removed" in c for c in rec.changes)


def test_runtime_built_weights_folded():
    """ConstantOfShape and Shape-based chains on a static shape are weights built at run time: folded."""
    x = h.make_tensor_value_info("x", T.FLOAT, [2, 3, 4])
    nodes = [
        h.make_node("Shape", ["x"], ["shape"], name="shape"),
        h.make_node("ConstantOfShape", ["shape"], ["half"], name="fill", value=nh.from_array(np.array([0.5], np.float32))),
        h.make_node("Mul", ["x", "half"], ["xh"], name="scale"),
        h.make_node("Gather", ["shape", "zero"], ["n"], name="batch", axis=0),
        h.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="n1"),
        h.make_node("Concat", ["n1", "minus1"], ["flat"], name="flat_shape", axis=0),
        h.make_node("Reshape", ["xh", "flat"], ["y"], name="flatten"),
        h.make_node("Range", ["r0", "r12", "r1"], ["ramp"], name="ramp"),  # a weight made from scalars
        h.make_node("Cast", ["ramp"], ["rampf"], name="ramp_f", to=T.FLOAT),
        h.make_node("Add", ["y", "rampf"], ["z"], name="add_ramp"),
    ]
    inits = [nh.from_array(np.array(0, np.int64), "zero"), nh.from_array(np.array([-1], np.int64), "minus1"),
             nh.from_array(np.array(0, np.int64), "r0"), nh.from_array(np.array(12, np.int64), "r12"),
             nh.from_array(np.array(1, np.int64), "r1"), nh.from_array(np.array([0], np.int64), "axes0")]
    src = model_of(nodes, [x], [h.make_tensor_value_info("z", T.FLOAT, [2, 12])], 17, inits)
    onnx.checker.check_model(src, full_check=True)
    model, rec = canonicalize(src)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Mul", "Reshape", "Add"], ops
    assert (rec.nodes_before, rec.nodes_after) == (10, 3)
    assert any(c.startswith("constants folded") and "−1 ConstantOfShape" in c and "10 → 3 nodes" in c for c in rec.changes)
    assert (rec.opset_before, rec.opset_after) == (17, 17) and not any("opset" in c for c in rec.changes)
    assert [n.name for n in model.graph.node] == ["scale", "flatten", "add_ramp"]
    assert_same_numbers(src, model, {"x": np.random.default_rng(3).normal(size=(2, 3, 4)).astype(np.float32)})


def test_node_names_and_metadata_survive_converter_and_onnxslim():
    """onnx.version_converter drops every node's metadata_props and renames what it replaces; they come back."""
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 2, 3, 3])
    conv = h.make_node("Conv", ["x", "w"], ["c"], name="stem.conv", pads=[1, 1, 1, 1])
    bn = h.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], name="stem.bn")
    up = h.make_node("Upsample", ["n", "scales"], ["u"], name="stem.up", mode="nearest")
    act = h.make_node("Relu", ["u"], ["y"], name="stem.act")
    for node, scope in ((conv, "Stem/conv"), (bn, "Stem/bn"), (up, "Stem/up"), (act, "Stem/act")):
        node.metadata_props.add(key="namespace", value=scope)
        node.doc_string = f"made by {scope}"
    rng = np.random.default_rng(4)
    f32 = {"w": rng.normal(size=(2, 2, 3, 3)), "s": rng.uniform(0.5, 2, 2), "bb": rng.normal(size=2), "m": rng.normal(size=2),
           "v": rng.uniform(0.5, 2, 2), "scales": [1, 1, 2, 2]}
    inits = [nh.from_array(np.asarray(v, np.float32), k) for k, v in f32.items()]
    src = model_of([conv, bn, up, act], [x], [h.make_tensor_value_info("y", T.FLOAT, [1, 2, 6, 6])], 9, inits)
    src.metadata_props.add(key="source", value="hand-built")
    src.doc_string = "a test graph"
    model, rec = canonicalize(src)
    got = {n.name: (n.op_type, {p.key: p.value for p in n.metadata_props}, n.doc_string) for n in model.graph.node}
    assert got == {"stem.conv": ("Conv", {"namespace": "Stem/conv"}, "made by Stem/conv"),  # Conv+BN fused into it
                   "stem.up": ("Resize", {"namespace": "Stem/up"}, "made by Stem/up"),  # was Upsample
                   "stem.act": ("Relu", {"namespace": "Stem/act"}, "made by Stem/act")}
    # the tensor the converter renamed (_v_N) has its source name back
    assert model.graph.node[-1].input[0] == "u"
    assert {p.key: p.value for p in model.metadata_props} == {"source": "hand-built"} and model.doc_string == "a test graph"
    assert any("kept on 3 of the 4 nodes" in c and "1 BatchNormalization" in c for c in rec.changes)
    assert_same_numbers(src, model, {"x": rng.normal(size=(1, 2, 3, 3)).astype(np.float32)})


def test_constant_inputs_become_weights_and_unused_inputs_go():
    """What tf2onnx does with a Keras Normalization layer: its mean is an input nodes read, its variance an input that
    no node reads any more (TensorFlow folded it); neither has a value in the graph."""
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 3])
    mean, var = "model/normalization/Sub/y:0", "model/normalization/Sqrt/x:0"
    src = model_of([h.make_node("Sub", ["x", mean], ["y"], name="model/normalization/Sub")],
                   [x, h.make_tensor_value_info(mean, T.FLOAT, [1, 3]), h.make_tensor_value_info(var, T.FLOAT, [1, 3])],
                   [h.make_tensor_value_info("y", T.FLOAT, [1, 3])], 17)
    with pytest.raises(ConversionFailed, match="Sub/y:0"):  # read, and nobody says what it holds
        canonicalize(src, keep_inputs=["x"])
    values = {mean: np.array([[1.0, 2.0, 3.0]]), var: np.array([[4.0, 5.0, 6.0]])}  # float64: cast to the input's type
    model, rec = canonicalize(src, keep_inputs=["x"], constant_inputs=values)
    assert [i.name for i in model.graph.input] == ["x"]
    lifted = "was a constant the exporter lifted into the graph inputs (1x3 float32)"
    assert rec.changes[:2] == [f"input {mean!r} {lifted}: made a weight", f"input {var!r} {lifted}, read by no node: removed"]
    feed = {"x": np.array([[1.0, 1.0, 1.0]], np.float32)}
    np.testing.assert_array_equal(run(model, feed)[0], [[0.0, -1.0, -2.0]])


def test_inputs_kept_when_unused_and_outputs_in_order():
    """onnxslim drops graph inputs no node reads; the model's inputs are its inputs, read or not."""
    a, b = h.make_tensor_value_info("a", T.FLOAT, ["batch", 2]), h.make_tensor_value_info("unused", T.FLOAT, ["batch", 5])
    src = model_of([h.make_node("Neg", ["a"], ["first"], name="neg"), h.make_node("Abs", ["a"], ["second"], name="abs"),
                    h.make_node("Shape", ["a"], ["third"], name="shape")], [a, b],
                   [vi("second", ["batch", 2]), vi("first", ["batch", 2]), vi("third", [2], T.INT64)], 17)
    model, rec = canonicalize(src)
    assert [(i.name, dims(i)) for i in model.graph.input] == [("a", ["batch", 2]), ("unused", ["batch", 5])]
    assert [(o.name, dims(o)) for o in model.graph.output] == [("second", ["batch", 2]), ("first", ["batch", 2]), ("third", [2])]
    feed = {"a": np.ones((3, 2), np.float32), "unused": np.zeros((3, 5), np.float32)}
    assert_same_numbers(src, model, feed)


def test_control_flow_and_recurrent_nodes_listed():
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4, 3])  # seq 1, batch 4, features 3
    cond = h.make_tensor_value_info("cond", T.BOOL, [])
    lstm_w = nh.from_array(np.random.default_rng(5).normal(size=(1, 8, 3)).astype(np.float32), "W")
    lstm_r = nh.from_array(np.random.default_rng(6).normal(size=(1, 8, 2)).astype(np.float32), "R")
    then, other = branches([1, 4, 3])
    src = model_of([h.make_node("If", ["cond"], ["branch"], name="gate", then_branch=then, else_branch=other),
                    h.make_node("LSTM", ["branch", "W", "R"], ["Y"], name="encoder.lstm", hidden_size=2)],
                   [x, cond], [h.make_tensor_value_info("Y", T.FLOAT, None)], 17, [lstm_w, lstm_r])
    model, rec = canonicalize(src)
    assert rec.control_flow == [{"node": "gate", "op": "If"}, {"node": "encoder.lstm", "op": "LSTM"}]
    feed = {"x": np.random.default_rng(7).normal(size=(1, 4, 3)).astype(np.float32)}
    for c in (True, False):
        assert_same_numbers(src, model, {**feed, "cond": np.array(c)})


def test_constant_condition_if_is_folded_away():
    c = nh.from_array(np.array(True), "c")
    x = h.make_tensor_value_info("x", T.FLOAT, [2])
    then, other = branches([2])
    src = model_of([h.make_node("If", ["c"], ["y"], name="gate", then_branch=then, else_branch=other)], [x],
                   [h.make_tensor_value_info("y", T.FLOAT, [2])], 17, [c])
    model, rec = canonicalize(src)
    assert rec.control_flow == [] and [n.op_type for n in model.graph.node] == ["Relu"]
    assert_same_numbers(src, model, {"x": np.array([-1.0, 2.0], np.float32)})


# -- opsets --------------------------------------------------------------------------------------------------------------
def test_target_opset_rules():
    assert target_opset(9) == 17
    assert target_opset(9, max_opset=13) == 13  # the device's limit (Jetson Nano's TensorRT 8.2)
    assert target_opset(11, max_opset=11) == 11  # an explicit --opset 11 is honoured
    assert target_opset(13) == 13 and target_opset(18, max_opset=17) == 18  # never down: the preflight refuses it
    assert target_opset(9, min_opset=8) == 9


def test_upgrade_stops_at_max_opset_and_newer_graphs_are_left_alone():
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    relu = model_of([h.make_node("Relu", ["x"], ["y"], name="r")], [x], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], 9, ir=4)
    model, rec = canonicalize(relu, max_opset=13, fold=False)
    assert (rec.opset_after, rec.ir_after) == (13, 7) and "onnxslim" not in rec.tools
    newer = model_of([h.make_node("Relu", ["x"], ["y"], name="r")], [x], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], 18)
    model, rec = canonicalize(newer, max_opset=17)
    assert rec.opset_after == 18 and rec.changes == []


def test_converter_failure_names_the_node():
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    src = model_of([h.make_node("Relu", ["x"], ["r"], name="ok"), h.make_node("FooBar", ["r"], ["y"], name="head.custom")],
                   [x], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], 9)
    with pytest.raises(ConversionFailed, match=r"opset 9 to 17: node 'head.custom' \(FooBar\)") as info:
        canonicalize(src)
    assert info.value.exit_code == 4


def test_missing_onnxslim_is_a_missing_dependency(monkeypatch):
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    src = model_of([h.make_node("Identity", ["x"], ["i"]), h.make_node("Relu", ["i"], ["y"])], [x],
                   [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], 17)
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # what Python does for a package that is not installed
    with pytest.raises(MissingDependency, match="onnxslim is not installed"):
        canonicalize(src)
    model, rec = canonicalize(src, fold=False)
    assert rec.changes == []


def test_a_graph_with_nothing_to_fold_skips_onnxslim_and_says_so(monkeypatch):
    """onnxslim costs half a second to import: a graph where it has nothing to do does not pay it (an already clean
    export), and the record says it was not run; one thing to fold and it runs."""
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    w = nh.from_array(np.ones((4, 4), np.float32), "w")
    clean = model_of([h.make_node("MatMul", ["x", "w"], ["m"], name="fc"), h.make_node("Relu", ["m"], ["y"], name="act")],
                     [x], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], 17, [w])
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # proof that it is not even imported
    model, rec = canonicalize(clean)
    assert "onnxslim not run" in rec.notes[0] and "onnxslim" not in rec.tools and rec.changes == []
    assert fold_trigger(clean.graph) is None
    weight_math = model_of([h.make_node("Transpose", ["w"], ["wt"], name="t"), h.make_node("MatMul", ["x", "wt"], ["y"])],
                           [x], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], 17, [w])
    assert "computes from weights alone" in fold_trigger(weight_math.graph)
    dead = model_of([h.make_node("Relu", ["x"], ["y"]), h.make_node("Neg", ["x"], ["unused"], name="dead")],
                    [x], [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], 17)
    assert "'dead' is not used" in fold_trigger(dead.graph)


# -- Keras through tf2onnx: the constants it lifts into graph inputs -----------------------------------------------------
@pytest.mark.slow
def test_keras_normalization_lifted_constants(tmp_path):
    pytest.importorskip("tf2onnx")
    import keras
    import tensorflow as tf
    import tf2onnx

    from edgeconv.canonical import lifted_constants

    rng = np.random.default_rng(8)
    norm = keras.layers.Normalization()
    norm.adapt(rng.normal(3, 2, size=(64, 5)).astype(np.float32))
    inp = keras.Input((5,), name="x")
    net = keras.Model(inp, keras.layers.Dense(2)(norm(keras.layers.Rescaling(0.5)(inp))))
    # exported the way edgeconv/frontends/keras.py does it
    fn = tf.function(lambda x: net(x, training=False))
    sig = [tf.TensorSpec([None, 5], tf.float32, name="x")]
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=sig, opset=17)
    lifted = [i.name for i in proto.graph.input if i.name != "x"]
    assert len(lifted) == 2 and all("normalization" in n for n in lifted)  # the mean and the variance

    values = lifted_constants(fn, sig)
    assert sorted(values) == sorted(lifted)
    model, rec = canonicalize(proto, keep_inputs=["x"], constant_inputs=values)
    assert [i.name for i in model.graph.input] == ["x"]
    assert sum("lifted into the graph inputs" in c for c in rec.changes) == 2
    x = rng.normal(size=(3, 5)).astype(np.float32)
    np.testing.assert_allclose(run(model, {"x": x})[0], np.asarray(net(x)), rtol=1e-5, atol=1e-5)
