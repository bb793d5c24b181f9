"""Two classes of Keras models the zoo found failing, rebuilt small from Keras here and run on real runtimes.

1. An ``.h5`` written by Keras 3 whose functional graph calls a Keras op on a tensor (``x + 3.0``, MobileNetV3's
   hard-swish): Keras 3's own ``.h5`` loader rebuilds the op as the merge layer of the same name and refuses it.
2. Keras 3 recurrent layers (LSTM, GRU): tf2onnx writes them as ONNX Loops that carry the weights through every
   iteration unchanged, which OpenVINO's ONNX frontend refused.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import onnx
import pytest


def _hard_swish_h5(path):
    """A small functional CNN with MobileNetV3's hard-swish (``x * relu6(x + 3) / 6``, two direct op calls) and a
    merge-layer ``Add`` of the same class name, saved as ``.h5`` by Keras 3."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    hs = keras.layers.Multiply()([x, keras.layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)])
    x = keras.layers.Add()([x, hs])  # a real merge layer, also class name "Add"
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(4)(x))
    model.save(path)
    return model


def test_keras3_h5_op_nodes_get_their_module_back(tmp_path):
    from edgeconv.frontends.keras import _h5_header, _restore_op_modules

    _hard_swish_h5(tmp_path / "m.h5")
    written_by, config = _h5_header(tmp_path / "m.h5")
    assert written_by.startswith("3.")
    assert _restore_op_modules(config) == 2
    entries = {e["name"]: e for e in config["config"]["layers"]}
    ops = [e for e in entries.values() if "module" in e]
    assert sorted((e["class_name"], e["module"]) for e in ops) == [("Add", "keras.src.ops.numpy"),
                                                                   ("Multiply", "keras.src.ops.numpy")]
    # the merge layers keep the legacy form: Keras' .h5 loader rebuilds them as layers, as before
    assert all("module" not in e for e in entries.values() if e["config"].get("trainable") is not None)


def test_keras3_h5_with_op_calls_converts_and_matches(cli, tmp_path):
    model = _hard_swish_h5(tmp_path / "m.h5")
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = cli("convert", tmp_path / "m.h5", "--target", "onnx", "-o", tmp_path / "o", "--sample", tmp_path / "x.npy", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["source"]["format"] == "keras-h5" and all(c["ok"] for c in m["checks"])
    # the reference is the loaded model's output: equal to the in-memory model's, so its weights were loaded
    with np.load(tmp_path / "o" / "reference.npz") as z:
        xs, ys = z[f"input:{m['inputs'][0]['name']}"], z["output:output"]
    np.testing.assert_allclose(model(xs).numpy(), ys, atol=1e-5)
    assert cli("validate", tmp_path / "o").code == 0


def _lstm_text(d):
    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), dtype="int32", name="tokens")
    x = keras.layers.LSTM(16)(keras.layers.Embedding(50, 8)(inp))
    keras.Model(inp, keras.layers.Dense(3)(x)).save(d / "m.keras")
    np.save(d / "x.npy", np.random.default_rng(0).integers(0, 50, (2, 12)).astype(np.int32))
    return d / "m.keras"


def _stacked_gru(d):
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 4), name="series")
    x = keras.layers.GRU(8)(keras.layers.GRU(8, return_sequences=True)(inp))
    keras.Model(inp, keras.layers.Dense(2)(x)).save(d / "m.h5")
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((2, 10, 4)).astype(np.float32))
    return d / "m.h5"


def _pass_through_state(model) -> int:
    """Loop-carried values whose body output is the body input itself, in every Loop of ``model``."""
    found = 0
    for node in model.graph.node:
        if node.op_type == "Loop":
            body = node.attribute[0].g
            n_state = len(node.input) - 2
            found += sum(body.input[2 + k].name == body.output[1 + k].name for k in range(n_state))
    return found


@pytest.mark.parametrize("build", [_lstm_text, _stacked_gru], ids=["embedding-lstm-keras", "stacked-gru-h5"])
def test_recurrent_keras_converts_for_openvino(cli, tmp_path, build):
    src = build(tmp_path)
    r = cli("convert", src, "--target", "openvino", "-o", tmp_path / "o", "--sample", tmp_path / "x.npy", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    parities = [c for c in m["checks"] if c["kind"] == "parity"]
    assert any("openvino" in c["label"] for c in parities) and all(c["ok"] for c in parities), parities
    canonical = onnx.load(tmp_path / "o" / "model.onnx")
    assert any(n.op_type == "Loop" for n in canonical.graph.node) and _pass_through_state(canonical) == 0
    v = cli("validate", tmp_path / "o")
    assert v.code == 0, v
    report = json.loads((tmp_path / "o" / "validation.json").read_text())
    assert report["ok"] and report["measured_on"]["runtime"] == "openvino", report["measured_on"]


def test_an_onnx_loop_with_pass_through_state_converts_for_openvino(cli, tmp_path):
    """The canonical step fixes the graph, whoever wrote it: here the ONNX file tf2onnx writes for a Keras GRU, handed
    over as an .onnx."""
    from edgeconv.frontends import load_source
    from edgeconv.specs import TensorSpec

    src = _stacked_gru(tmp_path)
    raw = tmp_path / "gru.onnx"
    load_source(src).export_onnx(raw, inputs=[TensorSpec("series", [1, 10, 4], "float32")], opset=None,
                                 dynamic_batch=False)
    assert _pass_through_state(onnx.load(raw)) > 0  # what OpenVINO's ONNX frontend refuses
    r = cli("convert", raw, "--target", "openvino", "-o", tmp_path / "o", "--sample", tmp_path / "x.npy", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert any("loop-carried" in c for c in m["export"]["canonical"]["changes"]), m["export"]["canonical"]
    assert all(c["ok"] for c in m["checks"] if c["kind"] == "parity")
    assert _pass_through_state(onnx.load(tmp_path / "o" / "model.onnx")) == 0
