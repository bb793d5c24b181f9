"""The rknn target (issue 28) on the real rknn-toolkit2 in its toolchain: the digits sample to .rknn int8 and fp16,
parity and top-1 on the toolkit's simulator (labelled as such, recorded in the process that built the artifact),
the manifest naming the environment, and a sample the simulator never saw refused, never guessed. On the planted
int8 model: `debug` names the planted layer from the build's accuracy_analysis, and `--fallback auto` meets the
budget through hybrid quantization."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SAMPLES, convert_digits, planted_digits
from edgeconv.runners.rknn import SIM_LABEL

PLANTED = "features.3"  # the planted layer (conftest.planted_digits)


@pytest.fixture(scope="module")
def rknn_bundles(cli, tmp_path_factory):
    base = tmp_path_factory.mktemp("rknn")
    made = {}
    for precision, target in (("int8", "rk3588"), ("fp16", "rk3576")):
        made[precision] = (base / precision, convert_digits(cli, base / precision, "--target", target, "--precision", precision))
    return made


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_digits_to_rknn_validates_on_the_simulator(cli, samples, rknn_bundles, precision):
    out, manifest = rknn_bundles[precision]
    art = next(a for a in manifest["artifacts"] if a["role"] == "model")
    assert art["file"] == "model.rknn" and art["runner"] == "rknn" and (out / "rknn" / "simulator.npz").exists()
    tc = art["toolchain"]
    assert tc["name"] == "rknn" and tc["versions"]["rknn-toolkit2"] == "2.5.0" and tc["versions"]["numpy"] == "1.26.4"
    assert art["rknn"]["target_platform"] == ("rk3588" if precision == "int8" else "rk3576")
    assert art["rknn"]["calibration_samples"] == (200 if precision == "int8" else 0)
    if precision == "int8":  # rknn-toolkit2's accuracy_analysis, per layer, with the ONNX node of each tensor
        analysis = json.loads((out / "rknn" / "accuracy_analysis.json").read_text())
        assert {"/features/3/Conv", "/head/1/Gemm"} <= {r["onnx_node"] for r in analysis["rows"]}
        assert all(0.9 < r["single_cos"] <= 1.0 for r in analysis["worst"])
    record = json.loads((out / "rknn" / "simulator.json").read_text())
    assert record["artifact_sha256"] == art["sha256"] and len(record["samples"]) >= 360
    rep = cli("validate", out, "--data", samples / "digits_test.npz", "--runs", "5", "--json")
    assert rep.code == 0, rep
    rep = rep.json()
    assert rep["measured_on"]["runtime"] == "rknn" and rep["measured_on"]["device"] == SIM_LABEL
    assert SIM_LABEL in rep["measured_on"]["note"] and rep["measured_on"]["kind"].startswith("host emulation")
    assert "on the board" in rep["latency"]["device_only"]
    top1 = rep["accuracy"]["artifact"]["top1"]
    assert top1 >= 0.95 and rep["accuracy"]["source"]["top1"] - top1 <= 0.02, rep["accuracy"]
    cosine = rep["parity"]["outputs"][0]["cosine"]
    assert cosine >= (0.999 if precision == "fp16" else 0.99)


def test_samples_the_simulator_never_ran_are_refused(cli, samples, rknn_bundles, tmp_path):
    out, _ = rknn_bundles["int8"]
    with np.load(samples / "digits_test.npz") as f:
        np.savez(tmp_path / "shifted.npz", x=f["x"][:8] + 0.01, y=f["y"][:8])
    rep = cli("validate", out, "--data", tmp_path / "shifted.npz", "--runs", "5", "--json")
    assert rep.code == 3, rep
    err = rep.json()["error"]
    assert "never ran 8 of these 8 samples" in err["message"] and "process that built it" in err["message"]
    assert "--data" in err["hint"]


def _planted_int8(cli, model, out, *extra):
    return cli("convert", model, "-t", "rk3588", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
               "--data", SAMPLES / "digits_test.npz", "-o", out, "--json", *extra)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_digits(tmp_path_factory.mktemp("planted"))


def test_debug_names_the_planted_layer_from_accuracy_analysis(cli, planted, tmp_path):
    r = _planted_int8(cli, planted, tmp_path / "b")
    assert r.code in (1, 4), r  # int8 lost the planted layer's 30 small channels
    rep = cli("debug", tmp_path / "b", "--data", SAMPLES / "digits_test.npz", "--json")
    assert rep.code == 0, rep
    rep = rep.json()
    assert rep["runtime"] == "rknn" and "accuracy_analysis" in rep["capture"]
    first = rep["first_diverging"]
    assert first is not None and first["source"] == PLANTED and first["source_class"] == "Conv2d", rep["layers"]
    assert rep["worst"][0] == first["layer"] and first["snr_db"] < 3 and first["inherited_snr_db"] > 25
    assert first["artifact_names"] and first["matched_by"] == "name"  # the toolkit's own tensor names


def test_fallback_auto_keeps_few_layers_out_of_int8_by_hybrid_quantization(cli, planted, tmp_path):
    r = _planted_int8(cli, planted, tmp_path / "b", "--max-accuracy-drop", "1", "--fallback", "auto")
    assert r.code == 0, r
    m = r.json()["manifest"]
    fb = m["fallback"]
    assert fb["ok"] and m["status"] == "ok" and fb["kept"]["lever"] == "float-layers"
    sources = [layer["source"] for layer in fb["float_layers"]]
    assert 1 <= len(sources) <= 3 and PLANTED in sources, fb
    assert fb["drop_before"] > 30 and fb["drop_after"] <= 1 and "hybrid_quantization" in fb["mechanism"]
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    hybrid = art["rknn"]["hybrid_layers"]
    # the planted activation (calibrated up to ~1e5) would overflow fp16: it is kept in int16, the rest in float16
    assert hybrid and set(hybrid.values()) <= {"float16", "int16"} and hybrid.get("relu_1") == "int16", hybrid
    # the simulator's record is that of the artifact the guard kept, and validate answers from it
    record = json.loads((tmp_path / "b" / "rknn" / "simulator.json").read_text())
    assert record["artifact_sha256"] == art["sha256"]
    rep = cli("validate", tmp_path / "b", "--data", SAMPLES / "digits_test.npz", "--runs", "5", "--json")
    assert rep.code == 0, rep
    assert rep.json()["accuracy"]["source"]["top1"] - rep.json()["accuracy"]["artifact"]["top1"] <= 0.01


def _padded_cnn(path):
    """A CNN with Keras' ZeroPadding2D pattern: a zero Pad on the end of H and W (one pads initializer read by two
    Pads) before each strided convolution, as tf2onnx writes keras.applications' MobileNetV2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64), "pad_const")
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], "stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], "relu0"),
             helper.make_node("Pad", ["r0", "pad_const"], ["p1"], "block_1_pad"),
             helper.make_node("Conv", ["p1", "w1"], ["c1"], "block_1_depthwise", strides=[2, 2], group=8),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Pad", ["r1", "pad_const"], ["p2"], "block_2_pad"),
             helper.make_node("Conv", ["p2", "w2"], ["c2"], "block_2_conv", strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"], "pool"),
             helper.make_node("Flatten", ["g"], ["f"], "flatten"),
             helper.make_node("Gemm", ["f", "w3"], ["y"], "head", transB=1)]
    graph = helper.make_graph(nodes, "padded", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [w("w0", 8, 3, 3, 3), w("w1", 8, 1, 3, 3), w("w2", 16, 8, 3, 3), w("w3", 4, 16), pads])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_zero_pads_before_strided_convs_are_folded_so_the_toolkit_builds(cli, tmp_path):
    """rknn-toolkit2 2.5.0 crashes folding such Pads itself ("assignment destination is read-only"): edgeconv folds
    them into the Convs first (the same function, checked on ONNX Runtime), then the toolkit builds and the simulator
    agrees with the source."""
    import onnx
    import onnxruntime as ort

    from edgeconv.onnx_tools import fold_pads_into_convs

    src = tmp_path / "padded.onnx"
    _padded_cnn(src)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    proto = onnx.load(str(src))
    assert fold_pads_into_convs(proto) == ["block_1_pad", "block_2_pad"]
    assert not [n for n in proto.graph.node if n.op_type == "Pad"]
    folded = tmp_path / "folded.onnx"
    onnx.save(proto, str(folded))
    (before,), (after,) = (ort.InferenceSession(str(p)).run(None, {"x": x}) for p in (src, folded))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)

    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(2).standard_normal((16, 3, 32, 32)).astype(np.float32))
    rep = cli("convert", src, "--target", "rknn", "--precision", "int8", "--calib", calib, "-o", tmp_path / "b", "--json")
    assert rep.code == 0, rep
    notes = " ".join(rep.json()["manifest"]["export"]["notes"])
    assert "2 zero Pad(s) folded" in notes and "block_1_pad" in notes


def test_the_bundle_runner_without_rknnlite_is_exit_3_naming_the_install(rknn_bundles):
    """The device runner in the bundle has the RKNNLite backend: where rknn-toolkit-lite2 is missing (any host, a board
    without it) it says what to install on the board and that it needs the board's librknnrt, exit 3."""
    import subprocess
    import sys
    import zipfile

    out, _ = rknn_bundles["int8"]
    runner = out / "edgeconv_runner.pyz"
    with zipfile.ZipFile(runner) as z:
        assert {"edgeconv/core/backends/rknn.py", "edgeconv/core/backends/qnn.py"} <= set(z.namelist())
    r = subprocess.run([sys.executable, str(runner), str(out), "--runs", "1", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 3, r
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "MissingDependency" and "rknnlite is not installed" in err["message"]
    assert "pip install rknn-toolkit-lite2" in err["hint"] and "librknnrt" in err["hint"]


def test_rknnlite_gets_the_samples_the_simulator_ran_in_nhwc(rknn_bundles):
    """What the board's backend hands RKNNLite.inference (which takes a 4-D input as NHWC): the reference samples the
    build's simulator ran (told data_format="nchw"), one at a time, transposed from the ONNX graph's layout; and its
    outputs back in the record's shapes."""
    from edgeconv.core.backends.rknn import as_recorded, read_record, rknn_samples
    from edgeconv.errors import ArtifactRefused
    from edgeconv.runners.rknn import sample_keys

    out, _ = rknn_bundles["int8"]
    record = read_record(out / "model.rknn")  # the I/O the board's backend reads, checked against the .rknn's sha256
    (spec,) = record["inputs"]
    assert spec["shape"] == [1, 1, 8, 8] and spec["layout"] == "NCHW"
    with np.load(out / "reference.npz") as f:
        feed = {spec["name"]: f["input:" + spec["name"]]}
    samples = rknn_samples(feed, record["inputs"])
    assert len(samples) == len(feed[spec["name"]]) and all(len(s) == 1 for s in samples)
    for (nhwc,) in samples:
        assert nhwc.shape == (1, 8, 8, 1) and nhwc.dtype == np.float32 and nhwc.flags["C_CONTIGUOUS"]
    back = {spec["name"]: np.concatenate([s[0].transpose(0, 3, 1, 2) for s in samples])}
    assert set(sample_keys(back, [spec["name"]])) <= set(record["samples"])  # the very samples the simulator ran
    (out_spec,) = record["outputs"]
    y = np.arange(10, dtype=np.float32)
    assert as_recorded(y.reshape(1, 10, 1, 1), out_spec["shape"], "output").shape == (1, 10)
    with pytest.raises(ArtifactRefused, match="shape"):
        as_recorded(np.zeros((1, 5, 2), np.float32), out_spec["shape"], "output")


def test_a_run_on_the_npu_itself_is_not_labelled_as_the_simulator():
    """RKNNLite (and QNN on a device) report ``emulated: False``: the figure is the device's, not the host emulation
    the artifact's record names."""
    from edgeconv.core.machine import where_label

    art = {"host_emulation": True, "host_emulation_label": SIM_LABEL}
    target = {"profile": "rk3588", "profile_data": {"native": {"machines": []}}}
    assert where_label(target, art, "device", {"emulated": False}, machine="aarch64", read=lambda p: None) == (
        "device", "on the device (rk3588)")
    assert where_label(target, art, "device", {}, machine="x86_64", read=lambda p: None)[1] == SIM_LABEL
