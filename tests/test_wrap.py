"""Bring your own model file (issue 31): ``edgeconv wrap FILE``, bare model files given to validate/profile, a reference
by ``--source``, and a given ``.tflite`` converted to the TFLite-family targets as it is. Real runtimes and converters:
TFLiteConverter, onnx2tf and ai-edge-quantizer write the .tflite files (one child process, :func:`make_foreign_files`),
``ovc`` the IR, pnnx the ncnn pair."""

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


def _variants(tf, model, calib, d: Path, name: str) -> None:
    """``model`` written by TFLiteConverter as float, fp16, dynamic-range and full-int8 (int8 and uint8 I/O) files."""
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
        (d / f"{name}_{kind}.tflite").write_bytes(conv.convert())


def _digits_keras(keras, xs, ys):
    """A small channels-last Keras classifier, trained a little on the digits."""
    inp = keras.Input((8, 8, 1), batch_size=1, name="image")  # a static batch, as the Edge TPU compiler needs
    x = keras.layers.Conv2D(8, 3, activation="relu", padding="same")(inp)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(xs, ys, batch_size=1, epochs=1, verbose=0, steps_per_epoch=min(400, len(xs)))
    return model


def _mobilenet(keras, x):
    """keras.applications' MobileNet (alpha 0.25, 96x96, 10 classes, logits) without weights; its BatchNorms' statistics
    set from ``x`` (momentum 0, one step at learning rate 0) so that its activations neither vanish nor explode, as a
    trained network's do not (at initialisation every output is the same to 1e-16)."""
    inp = keras.Input((96, 96, 3), batch_size=1, name="image")
    net = keras.applications.MobileNet(input_shape=(96, 96, 3), alpha=0.25, weights=None, classes=10,
                                       classifier_activation=None)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    net.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    net.fit(x, np.zeros((len(x), 10), np.float32), batch_size=len(x), epochs=1, verbose=0)
    return keras.Model(inp, net(inp))


def _aeq(src: Path, dest: Path, recipe_name: str, calib: np.ndarray | None = None) -> None:
    """``src`` quantized by ai-edge-quantizer with one of its recipes (static: calibrated on ``calib``)."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(src), getattr(recipe, recipe_name)())
    result = qt.calibrate({"serving_default": [{"image": calib[i : i + 1]} for i in range(len(calib))]}) if calib is not None \
        else None
    qt.quantize(result).export_model(str(dest), overwrite=True)


ONNX2TF_FILES = ("float32", "float16", "dynamic_range_quant", "integer_quant", "full_integer_quant")


def make_foreign_files(d: Path, onnx_path: Path) -> None:
    """Every file others' tools write, in one process (TensorFlow imported once): TFLiteConverter's five variants of the
    digits classifier and of keras.applications' MobileNet, onnx2tf's own .tflite files of the hand-exported digits ONNX
    (-oiqt, calibrated on the digits), ai-edge-quantizer's static int8 and dynamic files."""
    import os

    import keras
    import onnx2tf
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    with np.load(SAMPLES / "digits_train.npz") as z:
        xs, ys = z["x"].transpose(0, 2, 3, 1), z["y"]
    digits = _digits_keras(keras, xs, ys)
    digits.save(d / "digits.keras")
    _variants(tf, digits, xs[:64], d, "digits")
    images = np.random.default_rng(0).uniform(-1, 1, (16, 96, 96, 3)).astype(np.float32)  # MobileNet's input range
    mobilenet = _mobilenet(keras, images)
    mobilenet.save(d / "mobilenet.keras")
    _variants(tf, mobilenet, images[:8], d, "mobilenet")
    _aeq(d / "digits_fp32.tflite", d / "digits_aeq_int8.tflite", "static_wi8_ai8", xs[:64])
    _aeq(d / "digits_fp32.tflite", d / "digits_aeq_dynamic.tflite", "dynamic_wi8_afp32")
    x = inp = keras.Input((8, 8, 1), name="image")  # the same layers on an open batch: Flatten becomes SHAPE + RESHAPE
    for layer in digits.layers[1:]:
        x = layer(x)
    (d / "open_batch_fp32.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, x)).convert())
    _aeq(d / "open_batch_fp32.tflite", d / "digits_aeq_int8_open_batch.tflite", "static_wi8_ai8", xs[:64])
    _aeq(d / "mobilenet_fp32.tflite", d / "mobilenet_aeq_int8.tflite", "static_wi8_ai8", images[:8])
    np.save(d / "calib_nhwc.npy", xs[:32])
    os.chdir(d)  # onnx2tf looks for its sample calibration file in its working directory
    onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(d / "onnx2tf"), non_verbose=True,
                    output_integer_quantized_tflite=True,
                    custom_input_op_name_np_data_path=[["x", str(d / "calib_nhwc.npy"), [0.0], [1.0]]])
    for kind in ONNX2TF_FILES:
        (d / "onnx2tf" / f"digits_{kind}.tflite").rename(d / f"onnx2tf_{kind}.tflite")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory, hand_onnx) -> dict[str, Path]:
    """The files of :func:`make_foreign_files`, written by a child process, by name (``digits_int8``, ``mobilenet_uint8``,
    ``onnx2tf_float32``, ``digits_aeq_int8`` …); with the Keras models and the digits in NHWC."""
    import os
    import sys

    d = tmp_path_factory.mktemp("foreign")
    proc = subprocess.run([sys.executable, __file__, str(d), str(hand_onnx)], capture_output=True, text=True, timeout=600,
                          check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = {p.stem: p for p in d.glob("*.tflite")} | {"digits.keras": d / "digits.keras",
                                                       "mobilenet.keras": d / "mobilenet.keras"}
    files["data"] = _nhwc(SAMPLES / "digits_test.npz", d / "digits_test_nhwc.npz")
    return files


@pytest.fixture(scope="module")
def tflites(foreign) -> dict[str, Path]:
    """TFLiteConverter's files of the digits classifier by variant, with its Keras model and the digits in NHWC."""
    return {k: foreign[f"digits_{k}"] for k in VARIANTS} | {"keras": foreign["digits.keras"], "data": foreign["data"]}


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


@pytest.fixture(scope="module")
def pnnx_pair(tmp_path_factory, hand_onnx) -> Path:
    """The hand-exported digits ONNX written by pnnx as an ncnn pair (pnnx's default fp16 weights): its .param."""
    import pnnx

    nc = tmp_path_factory.mktemp("pnnx")
    subprocess.run([pnnx.EXEC_PATH, str(hand_onnx), "inputshape=[1,1,8,8]", "ncnnparam=digits.ncnn.param",
                    "ncnnbin=digits.ncnn.bin", "pnnxparam=p.param", "pnnxbin=p.bin", "pnnxpy=p.py", "pnnxonnx=p.onnx",
                    "ncnnpy=n.py"], cwd=nc, check=True, capture_output=True, timeout=300)
    return nc / "digits.ncnn.param"


def test_openvino_ir_from_ovc_and_ncnn_from_pnnx_validate(cli, hand_onnx, pnnx_pair, tmp_path):
    """An IR written by the ``ovc`` command (fp16-compressed weights, its default) and an ncnn pair written by pnnx:
    validated bare against the PyTorch model, and profiled."""
    import sys

    ovc = Path(sys.executable).parent / "ovc"
    subprocess.run([str(ovc), str(hand_onnx), "--output_model", str(tmp_path / "digits.xml")], check=True,
                   capture_output=True, timeout=300)
    r = cli("validate", tmp_path / "digits.xml", "--source", SAMPLES / "digits_cnn.pt2", *FAST, "--json")
    assert r.code == 0, r
    assert r.json()["runner"] == "openvino" and r.json()["parity"]["ok"] and r.json()["precision"] == "fp16"
    r = cli("profile", tmp_path / "digits.xml", "--batch-sizes", "1", "--runs", "5", "--min-time", "0.05", "--json")
    assert r.code == 0 and r.json()["rows"][0]["p50_ms"] > 0, r
    param = pnnx_pair
    r = cli("validate", param, *FAST)
    assert r.code == 2 and "keeps no input shapes" in r.stderr
    r = cli("validate", param, "--input-shape", "1x1x8x8", "--source", SAMPLES / "digits_cnn.pt2", "--data",
            SAMPLES / "digits_test.npz", *FAST, "--json")
    assert r.code == 0, r
    assert r.json()["runner"] == "ncnn" and r.json()["parity"]["ok"] and r.json()["accuracy"]["artifact"]["top1"] > 0.9
    r = cli("profile", param, "--input-shape", "1x1x8x8", "--batch-sizes", "1", "--runs", "5", "--min-time", "0.05", "--json")
    assert r.code == 0 and r.json()["rows"][0]["p50_ms"] > 0, r


NCNN_AS_ON_THE_HOST = "fp16 storage off, fp16 arithmetic off"  # what the host's ncnn runner sets for a pair given bare


def _on_the_board(r) -> dict:
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert " aarch64 " in f" {rep['device']['uname']} " and rep["measured_on"]["runtime"] == "ncnn"
    return rep


def test_pnnx_pair_on_the_arm_board(cli, arm_board, pnnx_pair):  # noqa: F811
    """A pnnx pair validated and profiled bare on the aarch64 board by the device runner's ncnn backend, with the host
    runner's settings (fp16 storage, packing and arithmetic off; ncnn's ARM defaults turn fp16 arithmetic on, which moves
    the digits' logits by ~0.1 from the host's): the board computes what this machine computed, to float32 rounding."""
    shape = ["--input-shape", "1x1x8x8"]
    rep = _on_the_board(cli("validate", pnnx_pair, *shape, *arm_board["args"], *FAST, "--json"))
    assert rep["measured_on"]["precision"] == NCNN_AS_ON_THE_HOST and "the given file itself" in rep["parity"]["label"]
    assert rep["parity"]["ok"] and rep["parity"]["outputs"][0]["max_abs"] < 1e-3
    rep = _on_the_board(cli("profile", pnnx_pair, *shape, *arm_board["args"], "--batch-sizes", "1", "--runs", "5",
                            "--min-time", "0.05", "--json"))
    assert rep["rows"][0]["p50_ms"] > 0


def test_converted_ncnn_bundle_on_the_arm_board(cli, arm_board, hand_onnx, tmp_path):  # noqa: F811
    """``convert --target ncnn --precision fp16`` here, ``validate --remote`` there: the manifest's runner options (blob
    names, fp16 weight storage) reach the board's backend, which runs them as the host's runner does."""
    r = cli("convert", hand_onnx, "--target", "ncnn", "--precision", "fp16", "-o", tmp_path / "b")
    assert r.code == 0, r
    rep = _on_the_board(cli("validate", tmp_path / "b", *arm_board["args"], *FAST, "--json"))
    assert rep["measured_on"]["precision"] == "fp16 storage on, fp16 arithmetic off" and rep["parity"]["ok"]


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


def test_onnx2tf_tflite_validates_against_its_torch_source(cli, foreign, tmp_path):
    """onnx2tf's own int8 file (channels-last, float I/O) as a bare file: its NHWC input read from it, random reference
    inputs drawn over the range its QUANTIZE op covers, the NCHW PyTorch source fed transposed."""
    r = cli("wrap", foreign["onnx2tf_integer_quant"], "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"][0]["shape"] == [1, 8, 8, 1] and m["inputs"][0]["layout"] == "NHWC" and m["precision"] == "int8"
    assert "uniform over the range the file quantizes" in m["reference"]["inputs"]


ONNX2TF_PRECISION = {"float32": "fp32", "float16": "fp16", "dynamic_range_quant": "int8-dynamic", "integer_quant": "int8",
                     "full_integer_quant": "int8"}


@pytest.mark.parametrize("kind", ONNX2TF_FILES)
def test_onnx2tf_files_validate_and_profile(cli, foreign, kind):
    """onnx2tf's own .tflite files (-oiqt) of the hand-exported digits ONNX, bare: its float files carry no SignatureDef
    (LiteRT's signature runner refuses them; edgeconv reads the graph's inputs and outputs); each validates against the
    PyTorch model on the labelled digits (its NHWC input fed transposed to the source) and profiles."""
    f = foreign[f"onnx2tf_{kind}"]
    r = cli("validate", f, "--source", SAMPLES / "digits_cnn.pt2", "--data", foreign["data"], *FAST, "--json")
    assert r.code == 0, r
    rep = r.json()
    acc = rep["accuracy"]
    assert rep["parity"]["ok"] and rep["precision"] == ONNX2TF_PRECISION[kind] and acc["artifact"]["top1"] > 0.9
    assert abs(acc["source"]["top1"] - acc["artifact"]["top1"]) < 0.02
    r = cli("profile", f, "--batch-sizes", "1", "--runs", "5", "--min-time", "0.05", "--json")
    assert r.code == 0 and r.json()["rows"][0]["p50_ms"] > 0, r


@pytest.mark.parametrize("kind", VARIANTS)
def test_keras_applications_tflite_files(cli, foreign, kind, tmp_path):
    """keras.applications' MobileNet written by TFLiteConverter in each variant: wrapped with its input spec and the
    quantization of its integer tensors read from the file, parity against the Keras model (float, fp16, dynamic-range;
    a full-int8 file against itself: a random network's int8 error is near the tolerance); validated and profiled bare."""
    from edgeconv.runners.litert import signature_io

    f = foreign[f"mobilenet_{kind}"]
    source = ["--source", foreign["mobilenet.keras"]] if kind in ("fp32", "fp16", "dynamic") else []
    r = cli("wrap", f, "-o", tmp_path / "b", *source, "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"] == [{"name": "image", "shape": [1, 96, 96, 3], "dtype": "float32", "layout": "NHWC"}]
    assert m["input_origins"]["image"] == {"shape": ["file"] * 4, "dtype": "file"}
    assert m["precision"] == PRECISION[kind] and m["checks"][0]["ok"]
    assert m["given"]["reference"] == ("source" if source else "self")
    ins, outs = signature_io(f)
    if kind in ("int8", "uint8"):
        q = m["given"]["quantization"]
        assert {k: (v["dtype"], v["scale"], v["zero_point"]) for k, v in q.items()} == {
            t["name"]: (kind, *t["quantization"]) for t in ins + outs}
    r = cli("validate", f, *FAST, "--json")
    assert r.code == 0 and r.json()["parity"]["ok"], r
    r = cli("profile", f, "--batch-sizes", "1", "--runs", "5", "--min-time", "0.05", "--json")
    assert r.code == 0 and r.json()["rows"][0]["p50_ms"] > 0, r


def test_uint8_and_int8_io_compute_the_same(cli, foreign, tmp_path):
    """The uint8-I/O twin of an int8-I/O file (the same calibration): float data quantized with each file's own scale
    and zero point (uint8's is int8's + 128) and outputs dequantized the same way give the same numbers."""
    refs = {}
    for kind in ("int8", "uint8"):
        assert cli("wrap", foreign[f"mobilenet_{kind}"], "-o", tmp_path / kind).code == 0
        with np.load(tmp_path / kind / "reference.npz") as z:
            refs[kind] = {k: z[k] for k in z.files}
    assert refs["int8"].keys() == refs["uint8"].keys()
    for k in refs["int8"]:
        np.testing.assert_allclose(refs["uint8"][k], refs["int8"][k], atol=1e-6)


def test_ai_edge_quantizer_files(cli, foreign):
    """ai-edge-quantizer's files: static int8 (static_wi8_ai8) and dynamic (dynamic_wi8_afp32) of the digits float file,
    static int8 of MobileNet's; validated bare (the dynamic one against the Keras model, on the labelled digits) and
    profiled. The static one is checked against itself: its calibration averages each sample's min and max, so the
    digits' logits (mostly negative) get the range [-12.9, 0] where the Keras model's reach [-18, 1], beyond int8's
    parity tolerance though its top-1 holds."""
    r = cli("validate", foreign["digits_aeq_dynamic"], "--source", foreign["digits.keras"], "--data", foreign["data"], *FAST,
            "--json")
    assert r.code == 0, r
    acc = r.json()["accuracy"]
    assert r.json()["precision"] == "int8-dynamic" and abs(acc["source"]["top1"] - acc["artifact"]["top1"]) < 0.02
    r = cli("validate", foreign["digits_aeq_int8"], "--data", foreign["data"], *FAST, "--json")
    assert r.code == 0, r
    assert r.json()["precision"] == "int8" and r.json()["accuracy"]["artifact"]["top1"] > 0.7
    for name in ("mobilenet_aeq_int8", "digits_aeq_int8"):
        r = cli("profile", foreign[name], "--batch-sizes", "1", "--runs", "5", "--min-time", "0.05", "--json")
        assert r.code == 0 and r.json()["rows"][0]["p50_ms"] > 0, r
    # on an open batch it keeps the SHAPE of the float input its QUANTIZE reads: a shape, not float arithmetic
    r = cli("validate", foreign["digits_aeq_int8_open_batch"], "--data", foreign["data"], *FAST, "--json")
    assert r.code == 0 and r.json()["precision"] == "int8" and r.json()["accuracy"]["artifact"]["top1"] > 0.7, r


@pytest.mark.parametrize("name", ["mobilenet_int8", "mobilenet_uint8", "mobilenet_aeq_int8", "onnx2tf_full_integer_quant"])
@pytest.mark.parametrize("target", ["coral", "ethos-u"])
def test_others_full_int8_files_convert_with_their_mapping(cli, foreign, name, target, tmp_path):
    """Full-int8 files of TFLiteConverter (int8 and uint8 I/O), ai-edge-quantizer and onnx2tf go to the Edge TPU and
    Ethos-U as they are: every op mapped, in the manifest's mapping report."""
    r = cli("convert", foreign[name], "--target", target, "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    kind, mapped = ("edgetpu-mapping", "tpu_ops") if target == "coral" else ("ethos-u-npu-mapping", "npu_ops")
    mapping = next(c for c in m["checks"] if c["kind"] == kind)
    assert m["precision"] == "int8" and mapping["ok"] and mapping[mapped] == mapping["ops"] > 0


@pytest.mark.parametrize("name", ["mobilenet_uint8", "onnx2tf_float32", "digits_aeq_int8"])
def test_others_tflite_files_on_the_arm_board(cli, arm_board, foreign, name):  # noqa: F811
    """Representative bare files on the aarch64 board: a uint8-I/O keras.applications file, an onnx2tf file without a
    SignatureDef, an ai-edge-quantizer int8 file; each wrapped here, its bundle run by the device runner there."""
    r = cli("validate", foreign[name], *arm_board["args"], *FAST, "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert " aarch64 " in f" {rep['device']['uname']} " and rep["measured_on"]["runtime"] == "litert"
    assert rep["parity"]["ok"] and rep["ok"]


def test_profile_bare_tflite_on_the_arm_board(cli, arm_board, foreign):  # noqa: F811
    r = cli("profile", foreign["mobilenet_uint8"], *arm_board["args"], "--batch-sizes", "1", "--runs", "5", "--min-time",
            "0.05", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert " aarch64 " in f" {rep['device']['uname']} " and rep["rows"][0]["p50_ms"] > 0


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


if __name__ == "__main__":  # the child process of the ``foreign`` fixture: python tests/test_wrap.py DIR ONNX
    import sys

    make_foreign_files(Path(sys.argv[1]), Path(sys.argv[2]))
