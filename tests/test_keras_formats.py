"""Keras .h5 and TensorFlow SavedModel sources through tf2onnx, checked against TensorFlow's own outputs."""

from __future__ import annotations

import keras
import numpy as np
import pytest


@pytest.fixture(scope="module")
def digits_keras(samples):
    return keras.models.load_model(samples / "digits_keras.keras")


def test_h5(cli, digits_keras, tmp_path, samples):
    f = tmp_path / "digits.h5"
    digits_keras.save(f)
    r = cli("convert", f, "-o", tmp_path / "o", "--data", samples / "digits_test.npz", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["source"]["format"] == "keras-h5"
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["artifact"]["top1"] == pytest.approx(acc["source"]["top1"]) and acc["source"]["top1"] > 0.9


def test_saved_model(cli, digits_keras, tmp_path, samples):
    d = tmp_path / "sm"
    digits_keras.export(d, verbose=False)  # a TensorFlow SavedModel with a serving_default signature
    r = cli("convert", d, "-o", tmp_path / "o", "--data", samples / "digits_test.npz", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["source"]["format"] == "savedmodel"
    parity = m["checks"][0]
    assert parity["ok"] and parity["outputs"][0]["max_abs"] <= 1e-4
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["drop_points"] == pytest.approx(0.0, abs=1e-9)
    # reference.npz holds TensorFlow's own outputs of the SavedModel on the recorded inputs
    with np.load(tmp_path / "o" / "reference.npz") as z:
        x, y = z[f"input:{m['inputs'][0]['name']}"], z["output:output"]
    np.testing.assert_allclose(digits_keras(x).numpy(), y, atol=1e-4)


def test_directory_without_saved_model(cli, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "variables").mkdir()
    r = cli("convert", tmp_path / "d", "-o", tmp_path / "o")
    assert r.code == 2 and "saved_model.pb" in r.stderr


def test_a_string_input_is_refused_with_the_layer_that_reads_it(cli, tmp_path):
    """TextVectorization inside the model: a string input no ONNX export or edge runtime takes. A clear refusal (2)
    naming the layer and the way out, never an internal error."""
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=4)
    vectorize.adapt(["a tiny corpus", "of three lines", "for the vocabulary"])
    inp = keras.Input((1,), dtype="string")
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(vectorize(inp))))
    keras.Model(inp, out).save(tmp_path / "text.keras")
    r = cli("convert", tmp_path / "text.keras", "--target", "onnx", "-o", tmp_path / "b", "--json")
    assert r.code == 2, r
    err = r.json()["error"]
    assert "is a string tensor" in err["message"] and "TextVectorization" in err["message"], err
    assert "token ids" in err["hint"] and not (tmp_path / "b").exists()


def test_a_custom_layer_loads_with_the_module_that_defines_it(cli, tmp_path):
    """A model with a registered custom layer: without its code, a refusal (2) naming the class and the option; with
    --model-class pointing at the module, it converts. The model is made in another process, so that this one has not
    registered the class before edgeconv imports it."""
    import subprocess
    import sys

    module = tmp_path / "edgeconv_test_layers.py"
    module.write_text("import keras\n\n\n@keras.saving.register_keras_serializable(package='edgeconv_test')\n"
                      "class Doubling(keras.layers.Layer):\n    def call(self, x):\n        return x * 2.0\n")
    make = ("import sys, keras, numpy as np\nsys.path.insert(0, sys.argv[1])\nfrom edgeconv_test_layers import Doubling\n"
            "keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), Doubling()]).save(sys.argv[1] + '/custom.keras')\n"
            "np.save(sys.argv[1] + '/x.npy', np.random.default_rng(0).standard_normal((4, 8)).astype('float32'))\n")
    subprocess.run([sys.executable, "-c", make, str(tmp_path)], check=True, capture_output=True, timeout=300)
    args = ["convert", tmp_path / "custom.keras", "--target", "onnx", "--data", tmp_path / "x.npy", "--json"]
    r = cli(*args, "-o", tmp_path / "refused")
    assert r.code == 2, r
    err = r.json()["error"]
    assert "custom class(es) edgeconv_test>Doubling" in err["message"] and "--model-class" in err["hint"], err
    r = cli(*args, "-o", tmp_path / "b", "--model-class", module)
    assert r.code == 0, r
    assert r.json()["manifest"]["status"] == "ok"


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_keras_mel_spectrogram_converts(cli, tmp_path, target):
    """Keras' MelSpectrogram: tf.signal.stft's RFFT with its real and imaginary parts read apart, which tf2onnx's RFFT
    refuses ("only allows ComplexAbs as consumer"); edgeconv gives tf2onnx ONNX's DFT for it."""
    model = keras.Sequential([keras.Input((4000,)), keras.layers.MelSpectrogram(num_mel_bins=16, sampling_rate=8000,
                                                                               sequence_length=256, fft_length=256),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.save(tmp_path / "mel.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 4000)).astype(np.float32))
    r = cli("convert", tmp_path / "mel.keras", "--target", target, "--data", tmp_path / "x.npy", "-o", tmp_path / "b",
            "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    parity = [c for c in m["checks"] if c["kind"] == "parity"]
    assert parity and all(c["ok"] for c in parity), parity


def test_an_op_tf2onnx_cannot_convert_is_named_without_a_traceback(tmp_path):
    """A SavedModel with an op tf2onnx has no conversion for (Lgamma): one sentence naming it (exit 4), not tf2onnx's
    log nor an onnx.checker error about the op it left in the graph, and no traceback on the terminal."""
    import tensorflow as tf
    from conftest import run_subprocess

    class LogGamma(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"y": tf.math.lgamma(x) * 2.0}

    module = LogGamma()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    np.save(tmp_path / "x.npy", np.random.default_rng(0).uniform(1, 3, (2, 4)).astype(np.float32))
    p = run_subprocess("convert", tmp_path / "sm", "--target", "onnx", "--data", tmp_path / "x.npy", "-o", tmp_path / "b")
    assert p.returncode == 4, p.stderr
    assert "cannot convert 1 TensorFlow op(s): Lgamma" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr


def test_exact_gelu_exports_through_erf(cli, tmp_path):
    """Keras 3's exact GELU is 0.5·x·erfc(−x/√2); tf2onnx leaves TensorFlow's Erfc as an op ONNX lacks. It becomes
    1 − Erf, the graph passes onnx.checker and matches Keras, and TFLite (direct from Keras) converts too."""
    import onnx

    keras.utils.set_random_seed(0)
    x = keras.Input((8,))
    m = keras.Model(x, keras.layers.Dense(4)(keras.layers.Dense(16, activation="gelu")(x)))
    m.save(tmp_path / "gelu.keras")
    for target in ("onnx", "tflite"):
        r = cli("convert", tmp_path / "gelu.keras", "--target", target, "-o", tmp_path / target, "--json")
        assert r.code == 0, r
        assert all(c["ok"] for c in r.json()["manifest"]["checks"])
    ops = {n.op_type for n in onnx.load(tmp_path / "onnx" / "model.onnx").graph.node}
    assert "Erf" in ops and "Erfc" not in ops


def _keras2_h5(path, *, with_lambda=False):
    """An .h5 as Keras 2 (tf_keras) writes it, with what Keras 3 cannot rebuild: a '/' in a layer name, as in every
    Keras 2 MobileNetV3 ('Conv/BatchNorm'). Preprocessing inside (Rescaling)."""
    tf_keras = pytest.importorskip("tf_keras", reason="tf_keras (Keras 2) is not installed: `make setup` installs it")
    K = tf_keras.layers
    inp = tf_keras.Input((16, 16, 3), name="image")
    x = K.Rescaling(1 / 255.0)(inp)
    x = K.Conv2D(4, 3, name="stem/conv")(x)
    x = K.BatchNormalization(name="stem/bn")(x)
    if with_lambda:
        x = K.Lambda(lambda t: t * 2.0, name="double")(x)
    x = K.GlobalAveragePooling2D()(K.ReLU()(x))
    tf_keras.Model(inp, K.Dense(3)(x)).save(path)
    return path


def test_an_h5_written_by_keras2_loads_with_keras2(cli, tmp_path):
    """Keras 3 refuses it ('/' in a layer name); the file says Keras 2 wrote it, so Keras 2 (tf_keras) loads it, and it
    converts and checks like any other Keras model — on the ONNX path and on TFLite's own SavedModel path."""
    h5 = _keras2_h5(tmp_path / "k2.h5")
    with pytest.raises(Exception):
        keras.models.load_model(h5, compile=False)
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32))
    for target in ("onnx", "tflite"):
        r = cli("convert", h5, "--target", target, "--sample", x, "-o", tmp_path / target, "--json")
        assert r.code == 0, r
        m = r.json()["manifest"]
        assert m["source"]["format"] == "keras2-h5" and m["tools"]["tf_keras"]
        assert all(c["ok"] for c in m["checks"]) and m["inputs"][0]["shape"][1:] == [16, 16, 3]
    assert "Traceback" not in r.stderr  # tf2onnx's optimizer warnings stay quiet


def test_a_keras2_h5_with_a_lambda_needs_consent(cli, tmp_path):
    h5 = _keras2_h5(tmp_path / "lam.h5", with_lambda=True)
    r = cli("convert", h5, "--target", "onnx", "--input-shape", "1x16x16x3", "-o", tmp_path / "o")
    assert r.code == 2 and "Lambda layer(s) double" in r.stderr and "--trust-pickle" in r.stderr
    r = cli("convert", h5, "--target", "onnx", "--input-shape", "1x16x16x3", "--trust-pickle", "-o", tmp_path / "o")
    assert r.code == 0, r


def test_keras_audio_conv1d_savedmodel_to_tflite(cli, tmp_path):
    """An audio model (1 s of 16 kHz samples through a Conv1D stack) kept as a SavedModel. TFLiteConverter's
    from_saved_model left a variable unfrozen in it (NaN on LiteRT); the Keras route converts the serving signature."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((16000, 1), name="audio")
    x = inp
    for f, k, s in ((16, 80, 16), (32, 3, 1), (32, 3, 1)):
        x = L.MaxPooling1D(4)(L.Conv1D(f, k, strides=s, activation="relu")(x))
    model = keras.Model(inp, L.Dense(12)(L.GlobalAveragePooling1D()(x)))
    model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    x = tmp_path / "audio.npy"
    np.save(x, np.random.default_rng(0).standard_normal((2, 16000, 1)).astype(np.float32))
    r = cli("convert", tmp_path / "sm", "--target", "tflite", "--sample", x, "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    parity = [c for c in r.json()["manifest"]["checks"] if c["kind"] == "parity"][-1]
    assert parity["ok"] and parity["outputs"][0]["max_abs"] < 1e-4


def test_keras_lstm_text_model_to_tflite_gets_static_shapes(cli, tmp_path):
    """A text model (token ids → Embedding → LSTM): TFLiteConverter lowers the LSTM's TensorList ops only with static
    shapes, so the batch is fixed for it, and the manifest says why, naming the layer."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((16,), dtype="int32", name="tokens")
    x = L.LSTM(8, name="encoder")(L.Embedding(100, 8)(inp))
    keras.Model(inp, L.Dense(4)(x)).save(tmp_path / "lstm.keras")
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 100, (3, 16)).astype(np.int32))
    r = cli("convert", tmp_path / "lstm.keras", "--target", "tflite", "--sample", ids, "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert all(c["ok"] for c in m["checks"]) and m["inputs"][0]["dtype"] == "int32"
    assert any("recurrent layer 'encoder' (LSTM)" in n for n in m["export"]["notes"]), m["export"]["notes"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_augmentation_and_preprocessing_layers_to_tflite(cli, tmp_path, suffix):
    """A model people train with its augmentation inside (RandomFlip/RandomRotation/RandomZoom) and its preprocessing
    (Rescaling, Resizing, CenterCrop): at inference the random layers are identities. TFLite gets the model called
    with training=False; Keras' own export() kept their random ops, which TFLite has no kernels for. Saved as Keras 3
    .h5 too: the export then must also track the layers' seed generators (a bare tf.Module missed them)."""
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((64, 64, 3), name="img")
    x = keras.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1), L.RandomZoom(0.1)], name="augment")(inp)
    x = L.CenterCrop(40, 40)(L.Resizing(48, 48)(L.Rescaling(1 / 127.5, offset=-1)(x)))
    x = L.GlobalAveragePooling2D()(L.Conv2D(8, 3, activation="relu")(x))
    keras.Model(inp, L.Dense(5, activation="softmax")(x)).save(tmp_path / f"aug{suffix}")
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32))
    r = cli("convert", tmp_path / f"aug{suffix}", "--target", "tflite", "--sample", x, "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    parity = [c for c in r.json()["manifest"]["checks"] if c["kind"] == "parity"][-1]
    assert parity["ok"] and parity["outputs"][0]["max_abs"] < 1e-4
