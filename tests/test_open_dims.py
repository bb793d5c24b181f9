"""ONNX files that write a dynamic dimension as -1 (paddle2onnx) or 0 (old TensorFlow exporters), issue 33.

Such a dimension is open: the sample fills it, the manifest says where its size came from, and every artifact
declares a proper shape. A CNN (batch, height, width) and a text model (batch, sequence) in both spellings, converted
once per (model, target) on the real converters and runtimes, then validated.
"""

from __future__ import annotations

import numpy as np
import pytest

H, W, SEQ = 40, 56, 9
TARGETS = ("onnx", "openvino", "tflite", "jetson")
MODELS = ("cnn-1", "cnn0", "text-1", "text0")


def _cnn(written: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("w", rng.standard_normal((8, 3, 3, 3)) * 0.2), ("b", rng.standard_normal(8) * 0.1),
        ("fw", rng.standard_normal((4, 8))), ("fb", rng.standard_normal(4) * 0.1))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [written, 3, written, written])
    return helper.make_graph(nodes, "cnn", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [written, 4])], weights)


def _text(written: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weights = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("emb", rng.standard_normal((50, 16))), ("fw", rng.standard_normal((16, 3))), ("fb", rng.standard_normal(3) * 0.1))]
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["m", "fw", "fb"], ["y"])]
    return helper.make_graph(nodes, "text", [helper.make_tensor_value_info("ids", TensorProto.INT64, [written, written])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [written, 3])], weights)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import onnx
    from onnx import helper

    d = tmp_path_factory.mktemp("open_dims")
    for name in MODELS:
        graph = (_cnn if name.startswith("cnn") else _text)(int(name.removeprefix("cnn").removeprefix("text")))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, d / f"{name}.onnx")
    rng = np.random.default_rng(2)
    np.save(d / "img.npy", rng.standard_normal((2, 3, H, W)).astype(np.float32))
    np.save(d / "ids.npy", rng.integers(0, 50, (2, SEQ)).astype(np.int64))
    np.save(d / "empty.npy", np.zeros((0, 3, H, W), np.float32))
    np.save(d / "no_height.npy", np.zeros((2, 3, 0, W), np.float32))
    return d


def _sample(files, model):
    return files / ("img.npy" if model.startswith("cnn") else "ids.npy")


@pytest.fixture(scope="module")
def bundles(files, cli, tmp_path_factory):
    """Each (model, target) converted once, on first use: the CLI's result and the bundle."""
    base, made = tmp_path_factory.mktemp("open_dims_bundles"), {}

    def get(model: str, target: str):
        if (model, target) not in made:
            out = base / f"{model}-{target}"
            made[model, target] = cli("convert", files / f"{model}.onnx", "--target", target,
                                      "--sample", _sample(files, model), "-o", out, "--json"), out
        return made[model, target]

    return get


def test_onnxruntime_runs_minus_one_as_written_and_refuses_zero(files):
    """What the reference can rely on: ONNX Runtime runs a -1 file as it is, but takes a written 0 literally, so
    edgeconv's reference runs the graph with those dims named (same nodes and weights)."""
    import onnxruntime as ort

    from edgeconv.frontends import load_source

    img = np.load(files / "img.npy")
    ort_out = ort.InferenceSession(str(files / "cnn-1.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": img})[0]
    assert ort_out.shape == (2, 4)
    with pytest.raises(Exception, match="invalid dimensions"):
        ort.InferenceSession(str(files / "cnn0.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": img})
    for written in ("-1", "0"):
        source = load_source(files / f"cnn{written}.onnx")
        assert source.inputs[0].shape == ["x_dim0", 3, "x_dim2", "x_dim3"]
        assert source.outputs[0].shape == ["y_dim0", 4]
        assert any(f"writes axes 0, 2, 3 as {written}" in n for n in source.notes), source.notes
        np.testing.assert_allclose(source.run({"x": img})[0], ort_out, rtol=1e-6, atol=1e-6)


def _declared_shapes(bundle, target) -> list[list]:
    """The input and output shapes the bundle's artifact declares to its runtime."""
    import onnx

    if target == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(bundle / "model.xml"))
        return [list(p.get_partial_shape().to_shape()) for p in [*model.inputs, *model.outputs]]
    if target == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(bundle / "model.tflite"))
        return [[int(n) for n in d["shape"]] for d in [*it.get_input_details(), *it.get_output_details()]]
    proto = onnx.load(str(bundle / ("model_trt.onnx" if target == "jetson" else "model.onnx")))
    return [[d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in [*proto.graph.input, *proto.graph.output]]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("model", MODELS)
def test_converts_from_the_sample_and_validates(bundles, cli, model, target):
    r, bundle = bundles(model, target)
    assert r.code == 0, r
    m = r.json()["manifest"]
    cnn = model.startswith("cnn")
    name, sample = ("x", "img.npy") if cnn else ("ids", "ids.npy")
    assert m["inputs"][0]["shape"] == ([1, 3, H, W] if cnn else [1, SEQ])
    assert m["input_origins"][name]["shape"] == (["batch 1 (static)", "model", f"--sample {sample}", f"--sample {sample}"]
                                                 if cnn else ["batch 1 (static)", f"--sample {sample}"])
    declared = _declared_shapes(bundle, target)
    assert declared and all(isinstance(d, int) and d > 0 for shape in declared for d in shape), declared
    assert declared[0] in ([[1, 3, H, W], [1, H, W, 3]] if cnn else [[1, SEQ]]), declared  # NHWC where tflite transposes
    assert declared[-1] == [1, 4 if cnn else 3], declared
    if target == "jetson":  # the engine is built on the device: the host checks the bundle and its build line
        art = next(a for a in m["artifacts"] if a["role"] == "model")
        assert art["host_emulation"] is True and art["device_build"]["built"] is False
        assert "--minShapes" not in (bundle / "build.sh").read_text()
    v = cli("validate", bundle, "--runs", "3", "--json")
    assert v.code == 0, v
    rep = v.json()
    assert rep["ok"] and rep["parity"]["ok"] and rep["parity"]["samples"] == 2, rep["parity"]


@pytest.mark.parametrize("model", MODELS)
def test_inspect_counts_macs_at_the_sample_shape(cli, files, model):
    r = cli("inspect", files / f"{model}.onnx", "--sample", _sample(files, model), "--json")
    assert r.code == 0, r
    info = r.json()
    if model.startswith("cnn"):
        # conv: H*W outputs x 8 channels x (3*3*3) MACs each, plus the 8x4 head
        assert info["macs"] == H * W * 8 * 27 + 8 * 4, info
        assert info["macs_shapes"] == {"x": [1, 3, H, W]}
        assert info["input_origins"]["x"]["shape"][2:] == ["--sample img.npy"] * 2
    else:
        assert info["macs"] == 16 * 3, info  # the Gemm head; Gather and ReduceMean are not counted
        assert info["macs_shapes"] == {"ids": [1, SEQ]}
    without = cli("inspect", files / f"{model}.onnx", "--json").json()
    assert without["macs"] is None and "dynamic dimensions" in without["macs_note"], without


def test_a_feed_without_samples_is_bad_input_naming_the_file(cli, files, tmp_path):
    r = cli("convert", files / "cnn-1.onnx", "--target", "onnx", "--sample", files / "empty.npy", "-o", tmp_path / "a",
            "--json")
    assert r.code == 2, r
    err = r.json()["error"]
    assert str(files / "empty.npy") in err["message"] and "no samples" in err["message"], err
    assert "IndexError" not in r.stdout + r.stderr
    r = cli("convert", files / "cnn0.onnx", "--target", "onnx", "--sample", files / "no_height.npy", "-o", tmp_path / "b",
            "--json")
    assert r.code == 2, r
    err = r.json()["error"]
    assert str(files / "no_height.npy") in err["message"] and "size 0 on axis 2" in err["message"], err
    for flag in ("--data", "--calib"):  # every file a reference can come from
        r = cli("convert", files / "cnn0.onnx", "--target", "openvino", "-p", "int8" if flag == "--calib" else "fp32",
                "--sample" if flag == "--data" else "--calib", files / "img.npy", flag, files / "empty.npy",
                "-o", tmp_path / flag.strip("-"), "--json")
        assert r.code == 2 and str(files / "empty.npy") in r.json()["error"]["message"], r
    assert not any(tmp_path.iterdir())


def test_data_and_input_shape_fill_written_dims(cli, files, tmp_path):
    """--data fills a written 0 like --sample; --input-shape sets a -1 like a named dimension (before, -1 was a fixed
    size the shape 'contradicted')."""
    r = cli("convert", files / "cnn0.onnx", "--target", "onnx", "--data", files / "img.npy", "-o", tmp_path / "a", "--json")
    assert r.code == 0, r
    assert r.json()["manifest"]["input_origins"]["x"]["shape"][2:] == ["--data img.npy"] * 2
    r = cli("convert", files / "text-1.onnx", "--target", "onnx", "--input-shape", "ids=1x5:int64", "-o", tmp_path / "b",
            "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"][0]["shape"] == [1, 5] and m["input_origins"]["ids"]["shape"] == ["--input-shape"] * 2
