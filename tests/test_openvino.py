"""OpenVINO target and runner on the real OpenVINO runtime and NNCF."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from conftest import convert_digits


@pytest.fixture(scope="module")
def ov_bundles(tmp_path_factory, cli):
    base = tmp_path_factory.mktemp("ov")
    out = {}
    for precision in ("fp32", "fp16", "int8"):
        convert_digits(cli, base / precision, "--target", "openvino", "--precision", precision)
        out[precision] = base / precision
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_openvino_roundtrip(ov_bundles, cli, samples, precision):
    bundle = ov_bundles[precision]
    m = json.loads((bundle / "manifest.json").read_text())
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    assert art["file"] == "model.xml" and art["runner"] == "openvino" and art["runner_options"] == {"device": "CPU"}
    assert (bundle / "model.bin").exists()
    ov_parity = m["checks"][1]
    assert ov_parity["ok"] and "openvino" in ov_parity["label"]
    if precision == "fp32":
        assert ov_parity["outputs"][0]["max_abs"] <= 1e-4
    r = cli("validate", bundle, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "0.5", "--runs", "10", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["measured_on"]["runtime"] == "openvino" and rep["measured_on"]["precision"] == "f32"
    assert rep["accuracy"]["drop_points"] <= 0.5


def test_openvino_sizes_and_ir_metadata(ov_bundles):
    import openvino as ov

    sizes = {p: (b / "model.bin").stat().st_size for p, b in ov_bundles.items()}
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < 0.4 * sizes["fp32"]
    model = ov.Core().read_model(str(ov_bundles["int8"] / "model.xml"))
    assert model.get_rt_info(["edgeconv", "precision"]).astype(str) == "int8"
    assert json.loads(model.get_rt_info(["edgeconv", "layouts"]).astype(str)) == {"x": "NCHW"}
    assert model.get_rt_info(["edgeconv", "target"]).astype(str) == "intel-cpu"
    q = json.loads((ov_bundles["int8"] / "manifest.json").read_text())
    art = next(a for a in q["artifacts"] if a["role"] == "model")
    assert art["quantization"]["fake_quantize_ops"] > 0 and art["quantization"]["method"].startswith("nncf.quantize")
    assert q["calibration"]["count"] == 200 and q["calibration"]["random"] is False and len(q["calibration"]["sha256"]) == 64
    assert "calibration samples" in q["reference"]["inputs"]  # int8 parity is judged on in-distribution inputs


def test_int8_needs_calibration(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--precision", "int8", "-o", tmp_path / "o")
    assert r.code == 2 and "--calib" in r.stderr and not (tmp_path / "o").exists()
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--precision", "fp32", "--calib",
            samples / "digits_calib.npz", "-o", tmp_path / "o")
    assert r.code == 2 and "--calib applies to int8" in r.stderr


def test_random_calibration_is_flagged(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--precision", "int8", "--calib", "random",
            "--calib-count", "20", "-o", tmp_path / "o", "--json")
    assert r.code == 0, r
    calib = r.json()["manifest"]["calibration"]
    assert calib["random"] is True and "random calibration" in calib["warning"]
    rep = cli("validate", tmp_path / "o", "--runs", "3", "--json").json()
    assert rep["calibration"]["random"] is True


def test_calibration_shape_mismatch(cli, samples, tmp_path):
    np.savez(tmp_path / "c.npz", x=np.zeros((10, 1, 4, 4), np.float32))
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--precision", "int8", "--calib",
            tmp_path / "c.npz", "-o", tmp_path / "o")
    assert r.code == 2 and "shape 10x1x4x4" in r.stderr and "expects Nx1x8x8" in r.stderr


def test_calibration_from_image_folder(cli, samples, tmp_path):
    from PIL import Image

    x = np.load(samples / "digits_calib.npz")["x"]
    for i in range(30):
        d = tmp_path / "imgs" / str(i % 3)
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i, 0] * 255).astype(np.uint8), mode="L").save(d / f"{i}.png")
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--precision", "int8", "--calib",
            tmp_path / "imgs", "-o", tmp_path / "o", "--data", samples / "digits_test.npz", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["calibration"]["count"] == 30 and m["calibration"]["preprocessing"]["scale"] == pytest.approx(1 / 255)
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["drop_points"] <= 1.0


def test_accuracy_controlled_quantization(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--precision", "int8", "--calib",
            samples / "digits_calib.npz", "--data", samples / "digits_test.npz", "--max-accuracy-drop", "0.5",
            "-o", tmp_path / "o", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    q = next(a for a in m["artifacts"] if a["role"] == "model")["quantization"]
    assert "accuracy_control" in q["method"] and isinstance(q["kept_in_float"], list)
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["ok"] and acc["drop_points"] <= 0.5


def test_npu_static_shapes_and_missing_device(cli, samples, tmp_path):
    dyn = tmp_path / "dyn"
    assert cli("convert", samples / "digits_cnn.pt", "--dynamic-batch", "-o", dyn, "--json").code == 0
    r = cli("convert", dyn / "model.onnx", "--target", "intel-npu", "--precision", "fp16", "--dynamic-batch",
            "-o", tmp_path / "n")
    assert r.code == 2 and "static batch" in r.stderr
    r = cli("convert", dyn / "model.onnx", "--target", "intel-npu", "--precision", "fp16", "-o", tmp_path / "n", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"][0]["shape"] == [1, 1, 8, 8]
    assert any("fixed to 1" in n for n in m["export"]["notes"])
    import openvino as ov

    assert ov.Core().read_model(str(tmp_path / "n" / "model.xml")).inputs[0].get_partial_shape().is_static
    r = cli("validate", tmp_path / "n")  # the profile's device is the NPU, which this machine lacks
    assert r.code == 3 and "NPU is not present" in r.stderr and "present: CPU" in r.stderr
    r = cli("validate", tmp_path / "n", "--device", "CPU", "--runs", "3", "--json")
    assert r.code == 0, r


def test_native_precision_is_reported(cli, ov_bundles):
    r = cli("validate", ov_bundles["fp32"], "--inference-precision", "native", "--runs", "3", "--json")
    assert r.code in (0, 1), r
    rep = r.json()
    assert rep["measured_on"]["precision_requested"] == "native" and rep["measured_on"]["precision"] in ("f32", "bf16", "f16")
    assert cli("validate", ov_bundles["fp32"], "--device", "CPU", "--inference-precision", "f64").code == 2


def test_throughput_hint_uses_an_async_queue(cli, ov_bundles):
    r = cli("validate", ov_bundles["fp32"], "--performance-hint", "throughput", "--runs", "5", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["measured_on"]["performance_hint"] == "THROUGHPUT"
    ta = rep["throughput_async"]
    assert ta["requests"] >= 1 and ta["inferences"] > 0 and ta["items_per_s"] > 0
    assert "throughput_async" not in cli("validate", ov_bundles["fp32"], "--runs", "5", "--json").json()
    assert cli("validate", ov_bundles["fp32"], "--performance-hint", "fast").code == 2


def test_runner_never_lets_a_later_inference_change_earlier_data(ov_bundles, samples):
    from edgeconv.runners import open_runner

    x = np.load(samples / "digits_test.npz")["x"]
    a, b = x[:1].copy(), x[1:2].copy()
    a_before = a.copy()
    with open_runner("openvino", ov_bundles["fp32"] / "model.xml", options={"device": "CPU"}) as r:
        out_a = r.infer({"x": a})[0]
        kept = out_a.copy()
        a[...] = 0  # the caller reuses its buffer
        out_b = r.infer({"x": b})[0]
        np.testing.assert_array_equal(out_a, kept)  # earlier outputs are not views into the request
        assert not np.array_equal(out_a, out_b)
        again = r.infer({"x": a_before})[0]
    np.testing.assert_allclose(again, kept, atol=1e-6)


def test_onnx_runner_refuses_openvino_options(cli, bundles):
    r = cli("validate", bundles("pt"), "--device", "GPU")
    assert r.code == 2 and "--device does not apply to the onnxruntime runner" in " ".join(r.stderr.split())


def test_convert_never_touches_the_network(cli, samples, tmp_path, monkeypatch):
    attempts = []

    def refuse(self, address, *a):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--precision", "int8", "--calib",
            samples / "digits_calib.npz", "-o", tmp_path / "o", "--json")
    assert r.code == 0, r
    assert attempts == []


def test_keras_source_on_openvino(cli, samples, tmp_path):
    """The Keras sample's graph starts with a Reshape that compiling folds into the input, whose names then include the
    Reshape's output: the artifact is still fed by the input's own name."""
    r = cli("convert", samples / "digits_keras.keras", "--target", "openvino", "-o", tmp_path / "b",
            "--data", samples / "digits_test.npz")
    assert r.code == 0, r.stderr
    v = cli("validate", tmp_path / "b", "--data", samples / "digits_test.npz", "--runs", "5", "--json")
    assert v.code == 0 and v.json()["accuracy"]["artifact"]["top1"] > 0.9, v.stdout
