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
