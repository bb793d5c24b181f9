"""Bring your own model file (issue 31): ``edgeconv wrap FILE``, bare model files given to validate/profile, a reference
by ``--source``, and a given ``.tflite`` converted to the TFLite-family targets as it is. Real runtimes and converters:
TFLiteConverter writes the .tflite files, ``openvino.save_model`` the IR, pnnx the ncnn pair."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES
from test_arm_board import arm_board  # noqa: F401 (the aarch64 board's fixture)

FAST = ["--runs", "5", "--min-seconds", "0.05", "--warmup", "2", "--warmup-seconds", "0.01"]
VARIANTS = ("fp32", "fp16", "dynamic", "int8", "uint8")
PRECISION = {"fp32": "fp32", "fp16": "fp16", "dynamic": "int8-dynamic", "int8": "int8", "uint8": "int8"}


def _nhwc(path: Path, dest: Path) -> Path:
    with np.load(path) as z:
        arrays = {k: (z[k].transpose(0, 2, 3, 1) if k == "x" else z[k]) for k in z.files}
    np.savez(dest, **arrays)
    return dest


@pytest.fixture(scope="module")
def tflites(tmp_path_factory) -> dict[str, Path]:
    """A small channels-last Keras classifier, trained a little on the digits, written by TFLiteConverter as float, fp16,
    dynamic-range and full-int8 (int8 and uint8 I/O) files; with the Keras model and the digits in NHWC."""
    import keras
    import tensorflow as tf

    d = tmp_path_factory.mktemp("tflite")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1), batch_size=1, name="image")  # a static batch, as the Edge TPU compiler needs
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x))
    with np.load(SAMPLES / "digits_train.npz") as z:
        xs, ys = z["x"].transpose(0, 2, 3, 1), z["y"]
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xs, ys, batch_size=1, epochs=1, verbose=0, steps_per_epoch=min(400, len(xs)))
    model.save(d / "digits.keras")
    calib = xs[:64]

    def representative():
        for i in range(len(calib)):
            yield [calib[i : i + 1]]

    for kind in VARIANTS:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if kind != "fp32":
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if kind == "fp16":
            conv.target_spec.supported_types = [tf.float16]
        if kind in ("int8", "uint8"):
            conv.representative_dataset = representative
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8 if kind == "int8" else tf.uint8
        (d / f"digits_{kind}.tflite").write_bytes(conv.convert())
    files = {k: d / f"digits_{k}.tflite" for k in VARIANTS}
    files["keras"] = d / "digits.keras"
    files["data"] = _nhwc(SAMPLES / "digits_test.npz", d / "digits_test_nhwc.npz")
    return files


@pytest.mark.parametrize("kind", VARIANTS)
def test_tflite_files_validate_as_bare_files(cli, tflites, kind, tmp_path):
    """Each TFLiteConverter file: wrapped, its input spec and (int8) quantization read from the file; validated as a bare
    file against the Keras model it was made from, on real labelled data given in float."""
    from edgeconv.runners.litert import signature_io

    r = cli("wrap", tflites[kind], "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["given"]["format"] == "tflite" and m["precision"] == PRECISION[kind]
    assert m["given"]["opened_with"]["runtime"] == "litert" and m["given"]["reference"] == "self"
    assert m["inputs"] == [{"name": "image", "shape": [1, 8, 8, 1], "dtype": "float32", "layout": "NHWC"}]
    ins, _ = signature_io(tflites[kind])
    if kind in ("int8", "uint8"):
        q = m["given"]["quantization"]["image"]
        assert q["dtype"] == kind and (q["scale"], q["zero_point"]) == tuple(ins[0]["quantization"])
    else:
        assert m["given"]["quantization"] == {}
    r = cli("validate", tflites[kind], "--source", tflites["keras"], "--data", tflites["data"], *FAST, "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["parity"]["ok"] and rep["precision"] == PRECISION[kind]
    acc = rep["accuracy"]
    assert acc["source"]["top1"] > 0.5 and acc["source"]["top1"] - acc["artifact"]["top1"] < 0.05


def test_profile_bare_tflite(cli, tflites):
    r = cli("profile", tflites["int8"], "--batch-sizes", "1,2", "--runs", "5", "--min-time", "0.05", "--json")
    assert r.code == 0, r
    rows = r.json()["rows"]
    assert [row["batch"] for row in rows] == [1, 2] and rows[0]["p50_ms"] > 0
    # the file's batch is baked in (its Reshape says 1): LiteRT refuses batch 2, and the row says so
    assert rows[1].get("p50_ms") or "XNNPack" in rows[1]["error"] or "reshape" in rows[1]["error"].lower()


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_full_int8_tflite_converts_to_coral(cli, tflites, kind, tmp_path):
    r = cli("convert", tflites[kind], "--target", "coral", "-o", tmp_path / "coral", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    mapping = next(c for c in m["checks"] if c["kind"] == "edgetpu-mapping")
    assert mapping["ok"] and mapping["tpu_ops"] == mapping["ops"] > 0
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    assert model["given"] and model["sha256"] == m["given"]["sha256"] and "device_build" in model


def test_full_int8_tflite_converts_to_ethos_u(cli, tflites, tmp_path):
    r = cli("convert", tflites["int8"], "--target", "ethos-u", "-o", tmp_path / "npu", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    npu = next(c for c in m["checks"] if c["kind"] == "ethos-u-npu-mapping")
    assert npu["ok"] and npu["npu_ops"] > 0 and npu["estimate"]["cycles_total"] > 0
    assert any(a["role"] == "npu-model" for a in m["artifacts"])
    assert cli("validate", tmp_path / "npu", *FAST).code == 0


def test_float_tflite_refused_by_int8_targets_and_taken_by_tflite(cli, tflites, tmp_path):
    r = cli("convert", tflites["fp32"], "--target", "coral", "-o", tmp_path / "no")
    assert r.code == 2 and "fp32 model; coral-usb runs int8 models only" in r.stderr
    assert "needs the model it was made from" in r.stderr
    assert not (tmp_path / "no").exists()
    r = cli("convert", tflites["fp16"], "--target", "tflite", "-o", tmp_path / "fp16", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["precision"] == "fp16" and m["checks"][0]["ok"] and "the same file" in m["checks"][0]["label"]


@pytest.fixture(scope="module")
def hand_onnx(tmp_path_factory) -> Path:
    """The digits CNN exported to ONNX by hand (TorchScript exporter), from the weights digits_cnn.pt2 holds."""
    import sys

    import torch

    sys.path.insert(0, str(SAMPLES))
    from digits_model import DigitsCNN

    d = tmp_path_factory.mktemp("onnx")
    model = DigitsCNN()
    model.load_state_dict(torch.load(SAMPLES / "digits_cnn_state.pt", weights_only=True))
    torch.onnx.export(model.eval(), (torch.randn(1, 1, 8, 8),), str(d / "digits.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["output"])
    return d / "digits.onnx"


def test_onnx_with_source_gives_converts_parity_table(cli, bundles, hand_onnx):
    """``validate model.onnx --source model.pt2 --data D``: the parity convert records for the same source, on the same
    reference inputs (seeded random), with the same tolerances; the source's accuracy measured alongside."""
    r = cli("validate", hand_onnx, "--source", SAMPLES / "digits_cnn.pt2", "--data", SAMPLES / "digits_test.npz", *FAST,
            "--json")
    assert r.code == 0, r
    rep = r.json()
    converted = json.loads((bundles("pt2") / "manifest.json").read_text())
    mine, theirs = rep["parity"], next(c for c in converted["checks"] if c["kind"] == "parity")
    assert mine["samples"] == theirs["samples"] and mine["ok"] and theirs["ok"]
    for a, b in zip(mine["outputs"], theirs["outputs"]):
        assert (a["name"], a["expected_shape"], a["atol"], a["min_cosine"]) == (b["name"], b["expected_shape"], b["atol"],
                                                                                  b["min_cosine"])
        assert a["ok"] and a["max_abs"] <= a["allowed_abs"] and abs(a["max_abs"] - b["max_abs"]) < a["allowed_abs"]
    assert rep["accuracy"]["source"]["top1"] == rep["accuracy"]["artifact"]["top1"] > 0.9


def test_onnx_with_wrong_source_fails_parity(cli, hand_onnx):
    r = cli("validate", hand_onnx, "--source", SAMPLES / "deep_digits.pt2", *FAST, "--json")
    assert r.code == 1, r
    assert not r.json()["parity"]["ok"]


def test_openvino_ir_from_ovc_and_ncnn_from_pnnx_validate(cli, hand_onnx, tmp_path):
    import openvino as ov
    import pnnx

    ov.save_model(ov.convert_model(str(hand_onnx)), str(tmp_path / "digits.xml"))
    r = cli("validate", tmp_path / "digits.xml", "--source", SAMPLES / "digits_cnn.pt2", *FAST, "--json")
    assert r.code == 0, r
    assert r.json()["runner"] == "openvino" and r.json()["parity"]["ok"]
    nc = tmp_path / "ncnn"
    nc.mkdir()
    subprocess.run([pnnx.EXEC_PATH, str(hand_onnx), "inputshape=[1,1,8,8]", "ncnnparam=digits.ncnn.param",
                    "ncnnbin=digits.ncnn.bin", "pnnxparam=p.param", "pnnxbin=p.bin", "pnnxpy=p.py", "pnnxonnx=p.onnx",
                    "ncnnpy=n.py"], cwd=nc, check=True, capture_output=True, timeout=300)
    param = nc / "digits.ncnn.param"
    r = cli("validate", param, *FAST)
    assert r.code == 2 and "keeps no input shapes" in r.stderr
    r = cli("validate", param, "--input-shape", "1x1x8x8", "--source", SAMPLES / "digits_cnn.pt2", "--data",
            SAMPLES / "digits_test.npz", *FAST, "--json")
    assert r.code == 0, r
    assert r.json()["runner"] == "ncnn" and r.json()["parity"]["ok"] and r.json()["accuracy"]["artifact"]["top1"] > 0.9


def test_wrong_files_exit_2_with_the_reason(cli, hand_onnx, tmp_path):
    fake = tmp_path / "model.tflite"
    fake.write_bytes(hand_onnx.read_bytes())
    r = cli("validate", fake)
    assert r.code == 2 and "is not a TFLite flatbuffer" in r.stderr
    (tmp_path / "lone.xml").write_text('<?xml version="1.0"?>\n<net name="x" version="11"></net>\n')
    r = cli("profile", tmp_path / "lone.xml")
    assert r.code == 2 and "lone.bin is not next to it" in r.stderr
    (tmp_path / "lone.param").write_text("7767517\n1 1\nInput in0 0 1 in0\n")
    r = cli("wrap", tmp_path / "lone.param", "-o", tmp_path / "b")
    assert r.code == 2 and "lone.bin is not next to it" in r.stderr
    assert not (tmp_path / "b").exists()


def test_bare_int8_tflite_on_the_arm_board(cli, arm_board, tflites):  # noqa: F811
    """A bare full-int8 .tflite validated on the aarch64 board: wrapped here, its bundle travels with the device runner,
    which feeds the float data through the file's own quantization parameters there."""
    r = cli("validate", tflites["int8"], *arm_board["args"], "--data", tflites["data"], "--runs", "10", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert " aarch64 " in f" {rep['device']['uname']} " and rep["measured_on"]["runtime"] == "litert"
    assert rep["precision"] == "int8" and rep["parity"]["ok"] and rep["accuracy"]["artifact"]["top1"] > 0.5


def test_reference_npz_and_a_miss_kept_marked_failed(cli, hand_onnx, tmp_path):
    """``--reference OUTPUTS.npz``: its inputs are the reference inputs, its outputs what parity compares with; a reference
    the file does not reproduce keeps the bundle, marked failed, and exits 1."""
    import onnxruntime as ort

    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    session = ort.InferenceSession(str(hand_onnx))
    y = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])  # its batch is 1
    np.savez(tmp_path / "ref.npz", **{"input:x": x, "output:output": y})
    r = cli("wrap", hand_onnx, "-o", tmp_path / "ok", "--reference", tmp_path / "ref.npz", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["given"]["reference"] == "file" and m["reference"]["samples"] == 3 and m["checks"][0]["ok"]
    np.savez(tmp_path / "bad.npz", x=x, output=y + 1.0)  # bare names are read too
    r = cli("wrap", hand_onnx, "-o", tmp_path / "bad", "--reference", tmp_path / "bad.npz")
    assert r.code == 1 and "does not compute what its reference" in r.stderr
    assert '"status": "failed-check"' in (tmp_path / "bad" / "manifest.json").read_text()


@pytest.fixture(scope="module")
def onnx2tf_int8(tmp_path_factory, cli) -> Path:
    """The digits CNN's int8 .tflite as onnx2tf and TFLiteConverter write it (float I/O, NHWC), through convert."""
    out = tmp_path_factory.mktemp("onnx2tf") / "b"
    r = cli("convert", SAMPLES / "digits_cnn.pt2", "--target", "tflite", "--precision", "int8", "--calib",
            SAMPLES / "digits_calib.npz", "-o", out)
    assert r.code == 0, r
    return out / "model.tflite"


def test_onnx2tf_tflite_validates_against_its_torch_source(cli, onnx2tf_int8, tmp_path):
    """An onnx2tf int8 file (channels-last, float I/O) as a bare file: its NHWC input read from it, random reference
    inputs drawn over the range its QUANTIZE op covers, the NCHW PyTorch source fed transposed."""
    data = _nhwc(SAMPLES / "digits_test.npz", tmp_path / "nhwc.npz")
    r = cli("wrap", onnx2tf_int8, "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"][0]["shape"] == [1, 8, 8, 1] and m["inputs"][0]["layout"] == "NHWC" and m["precision"] == "int8"
    assert "uniform over the range the file quantizes" in m["reference"]["inputs"]
    r = cli("validate", onnx2tf_int8, "--source", SAMPLES / "digits_cnn.pt2", "--data", data, *FAST, "--json")
    assert r.code == 0, r
    acc = r.json()["accuracy"]
    assert r.json()["parity"]["ok"] and acc["artifact"]["top1"] > 0.9
    assert abs(acc["source"]["top1"] - acc["artifact"]["top1"]) < 0.02


def test_debug_a_bare_qdq_onnx_against_its_float_source(cli, hand_onnx, tmp_path):
    """``debug`` on a Q/DQ ONNX file made by onnxruntime's quantizer, with the float ONNX it was made from as --source:
    layer by layer, by tensor name; without --source it says what it needs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    with np.load(SAMPLES / "digits_calib.npz") as z:
        calib = z["x"][:32]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": calib[i : i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    qdq = tmp_path / "digits_qdq.onnx"
    quantize_static(str(hand_onnx), str(qdq), Reader(), quant_format=QuantFormat.QDQ)
    r = cli("debug", qdq, "--data", SAMPLES / "digits_test.npz", "--samples", "8")
    assert r.code == 2 and "pass --source MODEL.onnx" in r.stderr
    r = cli("debug", qdq, "--source", hand_onnx, "--data", SAMPLES / "digits_test.npz", "--samples", "8", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["matched_layers"] >= 3 and {"features.0", "head.3"} <= {row["source"] for row in rep["layers"]}
