"""`edgeconv debug` and the int8 guard (`convert --fallback auto`) on real runtimes.

The planted model: the digits CNN with two of its second conv's (``features.3``) output channels scaled by 1e4 and the
matching inputs of the next Linear (``head.1``) by 1e-4. The function is unchanged in float; per-tensor int8 of that
activation keeps the two huge channels and rounds the other 30 to nothing. On ONNX Runtime (jetson Q/DQ), OpenVINO
(NNCF) and LiteRT (TFLite): plain int8 fails and leaves its bundle, `debug` names ``features.3`` as the first diverging
layer, and `--fallback auto` meets a 1-point budget with at most 3 float layers (and the same on ONNX Runtime int8).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SAMPLES, planted_digits

TARGETS = ["onnx", "jetson", "openvino", "tflite"]
PLANTED = "features.3"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_digits(tmp_path_factory.mktemp("planted"))


def _int8(cli, model, out, target, *extra):
    return cli("convert", model, "-t", target, "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
               "--data", SAMPLES / "digits_test.npz", "-o", out, "--json", *extra)


@pytest.fixture(scope="module")
def failed_bundles(planted, tmp_path_factory, cli):
    base = tmp_path_factory.mktemp("plain-int8")
    out = {}
    for target in TARGETS:
        r = _int8(cli, planted, base / target, target)
        out[target] = (base / target, r)
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_plain_int8_fails_and_keeps_its_bundle(failed_bundles, target):
    bundle, r = failed_bundles[target]
    assert r.code in (1, 4), r
    assert "is kept and marked failed" in r.json()["error"]["message"]
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["status"] == "failed-check"
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["drop_points"] > 30  # int8 lost the planted layer's 30 small channels


@pytest.mark.parametrize("target", TARGETS)
def test_debug_names_the_planted_layer_first(failed_bundles, cli, target):
    bundle, _ = failed_bundles[target]
    r = cli("debug", bundle, "--data", SAMPLES / "digits_test.npz", "--json")
    assert r.code == 0, r
    rep = r.json()
    first = rep["first_diverging"]
    assert first is not None and first["source"] == PLANTED and first["op"] == "Conv", rep["layers"]
    assert first["source_class"] == "Conv2d"
    rows = {row["source"]: row for row in rep["layers"]}
    # the plain whole-tensor SNR hides it (the two huge channels dominate); the channel-balanced one does not
    assert first["snr_db"] < 3 and first["snr_tensor_db"] > 20
    assert first["inherited_snr_db"] > 25  # what it read was fine: the error is its own
    assert rows["head.3"]["snr_db"] < 3  # and it reaches the output
    assert rep["worst"][0] == first["layer"]
    assert all(row["snr_db"] is not None for row in rep["layers"]), rep["layers"]
    # the people's table says the same
    text = cli("debug", bundle, "--data", SAMPLES / "digits_test.npz")
    assert text.code == 0 and "first diverging layer: features.3" in " ".join(text.stdout.split())


@pytest.mark.parametrize("target", TARGETS)
def test_fallback_auto_meets_the_budget_with_few_float_layers(planted, tmp_path, cli, target):
    r = _int8(cli, planted, tmp_path / "b", target, "--max-accuracy-drop", "1", "--fallback", "auto")
    assert r.code == 0, r
    m = r.json()["manifest"]
    fb = m["fallback"]
    assert fb["ok"] and m["status"] == "ok"
    sources = [layer["source"] for layer in fb["float_layers"]]
    # ranked by what each alone in float does to the drop: the planted layer, or on OpenVINO the Linear that reads it
    # (NNCF quantizes an activation at its consumer's input, so head.1 in float leaves the planted channels unquantized)
    assert 1 <= len(sources) <= 3 and sources[0] in (PLANTED, "head.1"), fb
    # each candidate's effect alone was measured (the ranking's first), and the float layers are what was kept
    assert fb["candidates"][0]["alone_in_float"] is not None and fb["kept"]["lever"] == "float-layers"
    assert fb["drop_before"] > 30 and fb["drop_after"] <= 1
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["ok"] and acc["drop_points"] == fb["drop_after"]
    cost = fb["cost"]
    assert cost["p50_ms"]["full_int8"] > 0 and cost["p50_ms"]["with_float_layers"] > 0
    assert cost["bytes"]["with_float_layers"] == sum(a["bytes"] for a in m["artifacts"] if a["role"] in ("model", "weights"))
    # the artifact really runs those layers in float
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    if target in ("onnx", "jetson"):
        assert set(fb["float_layers"][0]["nodes"]) <= set(model["quantization"]["nodes_to_exclude"])
    elif target == "openvino":
        assert model["quantization"]["ignored_for_float_layers"]
    else:
        assert model["float_ops"]
    if target == "onnx":  # debug shows the guard's measured ranking beside the SNR one
        rep = cli("debug", tmp_path / "b", "--data", SAMPLES / "digits_test.npz", "--json").json()
        assert rep["sensitivity"]["metric"] == "drop_points"
        measured = [row for row in rep["layers"] if row.get("alone_in_float") is not None]
        assert measured and {row["layer"] for row in measured} <= set(rep["sensitivity"]["layers"])


@pytest.mark.parametrize("target, check, share", [("coral", "edgetpu-mapping", "tpu_share_ops"),
                                                  ("ethos-u", "ethos-u-npu-mapping", "npu_share_ops")])
def test_fallback_on_accelerators_reports_the_new_split(planted, tmp_path, cli, target, check, share):
    """On Coral and Ethos-U a float layer runs on the CPU: the mapping check of the kept artifact shows the new split."""
    if target == "ethos-u":
        pytest.importorskip("ethosu.vela", reason="ethos-u-vela is not installed (pip install 'edgeconv[ethos-u]')")
    r = _int8(cli, planted, tmp_path / "b", target, "--max-accuracy-drop", "1", "--fallback", "auto")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["fallback"]["ok"] and len(m["fallback"]["float_layers"]) <= 3
    mapping = next(c for c in m["checks"] if c["kind"] == check)
    assert 0 < mapping[share] < 1  # the float layers left the accelerator; the rest is still on it


def test_fallback_that_cannot_meet_the_budget_fails_with_exit_1(planted, tmp_path, cli):
    r = _int8(cli, planted, tmp_path / "b", "jetson", "--max-accuracy-drop", "1", "--fallback", "auto",
              "--max-float-layers", "1")
    assert r.code == 1, r
    assert "--max-float-layers" in r.json()["error"]["message"]
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    fb = m["fallback"]
    assert m["status"] == "failed-check" and not fb["ok"]
    # every lever was pulled, in order, and said what it did: jetson's other calibration methods, then one float layer
    # (--max-float-layers 1), and TensorRT has no 16-bit activations
    assert [lever["name"] for lever in fb["levers"]] == ["calibration", "packed-outputs", "float-layers", "int16-activations",
                                                         "qat"]
    assert "no --finetune" in fb["levers"][4]["skipped"]
    assert "no output" in fb["levers"][1]["skipped"]  # the digits logits share one range
    assert [a["settings"]["calibration"] for a in fb["attempts"] if a["lever"] == "calibration"] == [
        "entropy", "percentile"]
    assert len([a for a in fb["attempts"] if a["lever"] == "float-layers"]) == 1
    assert "no 16-bit activations" in fb["levers"][3]["skipped"]
    assert all(a["drop_points"] > 1 and not a["ok"] for a in fb["attempts"])
    assert fb["drop_after"] == min([fb["drop_before"], *(a["drop_points"] for a in fb["attempts"])])


def test_fallback_without_labels_guards_parity_and_agreement(planted, tmp_path, cli):
    """Without labels the guard's goal is the artifact's parity with the source (what a detector or regressor needs):
    on the reference samples, or agreement on unlabelled --data."""
    r = cli("convert", planted, "-t", "onnx", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz", "-o", tmp_path / "p",
            "--json", "--fallback", "auto")
    assert r.code == 0, r
    fb = r.json()["manifest"]["fallback"]
    assert fb["ok"] and fb["goal"] == "parity" and fb["score"]["metric"] == "tolerance_ratio"
    assert fb["score"]["before"] > 1 >= fb["score"]["after"] and fb["drop_before"] is None
    with np.load(SAMPLES / "digits_test.npz") as z:
        np.savez(tmp_path / "unlabelled.npz", x=z["x"])
    r = cli("convert", planted, "-t", "jetson", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz", "-o", tmp_path / "a",
            "--json", "--fallback", "auto", "--data", tmp_path / "unlabelled.npz")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["fallback"]["goal"] == "agreement" and m["fallback"]["ok"]
    agreement = next(c for c in m["checks"] if c["kind"] == "agreement")
    assert agreement["ok"] and agreement["top1_agreement"] > 0.97


def test_healthy_int8_has_no_diverging_layer(tmp_path, cli):
    r = _int8(cli, SAMPLES / "digits_cnn.pt", tmp_path / "b", "jetson")
    assert r.code == 0, r
    rep = cli("debug", tmp_path / "b", "--data", SAMPLES / "digits_test.npz", "--json").json()
    assert rep["first_diverging"] is None
    assert all(row["snr_db"] > 20 for row in rep["layers"])
    # TorchScript exports name nodes /features/0/Conv: the module path comes from the scoped name
    assert [row["source"] for row in rep["layers"]][:2] == ["features.0", "features.3"]


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_debug_names_keras_layers(tmp_path, cli, target):
    """tf2onnx's nodes carry TensorFlow's uniquified scopes (layer conv2d under conv2d_1, conv2d_1 under conv2d_1_2);
    debug maps them back to the model's layer names, which the manifest keeps. A Keras model's .tflite is written by
    TFLiteConverter from its own trace (other uniquified scopes, no onnx2tf names map): its tensors are matched by the
    Keras layers both traces' scopes name."""
    r = _int8(cli, SAMPLES / "digits_keras.keras", tmp_path / "b", target)
    assert r.code == 0, r
    assert r.json()["manifest"]["source"]["layer_names"][:3] == ["permute", "conv2d", "conv2d_1"]
    rep = cli("debug", tmp_path / "b", "--data", SAMPLES / "digits_test.npz", "--json").json()
    convs = [row for row in rep["layers"] if row["op"] in ("Conv", "Gemm", "MatMul")]
    assert [row["source"] for row in convs] == ["conv2d", "conv2d_1", "dense", "dense_1"], rep["layers"]
    assert all(row["matched_by"] == "name" and row["snr_db"] > 20 for row in convs), convs
    if target == "tflite":
        assert any("by name (the Keras layer" in n for n in rep["notes"]), rep["notes"]


@pytest.mark.parametrize("args, needle", [
    (["--fallback", "sometimes", "--max-accuracy-drop", "1"], "--fallback must be none or auto"),
    (["--fallback", "auto", "--max-accuracy-drop", "1", "--max-float-layers", "0"], "--max-float-layers"),
])
def test_fallback_usage_errors(tmp_path, cli, args, needle):
    r = _int8(cli, SAMPLES / "digits_cnn.pt", tmp_path / "b", "jetson", *args)
    assert r.code == 2, r
    assert needle in r.json()["error"]["message"]
    assert not (tmp_path / "b").exists()


def test_fallback_needs_int8(tmp_path, cli):
    r = cli("convert", SAMPLES / "digits_cnn.pt", "-t", "onnx", "--data", SAMPLES / "digits_test.npz", "--max-accuracy-drop",
            "1", "--fallback", "auto", "-o", tmp_path / "b", "--json")
    assert r.code == 2 and "int8" in r.json()["error"]["message"], r


def test_debug_refuses_what_it_cannot_open(tmp_path, cli, bundles):
    r = cli("debug", tmp_path / "nothing", "--data", SAMPLES / "digits_test.npz", "--json")
    assert r.code == 2 and "does not exist" in r.json()["error"]["message"]
    r = cli("debug", bundles("pt"), "--data", SAMPLES / "digits_test.npz", "--samples", "0", "--json")
    assert r.code == 2, r


def test_debug_says_when_a_runtime_exposes_no_intermediates(tmp_path, cli):
    r = cli("convert", SAMPLES / "digits_cnn.pt", "-t", "ncnn", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    r = cli("debug", tmp_path / "b", "--data", SAMPLES / "digits_test.npz", "--json")
    assert r.code == 2, r
    err = r.json()["error"]
    assert (err["type"] == "IntermediatesUnavailable" and "ncnn runtime" in err["message"]
            and "exposes no intermediate" in err["message"])


def test_keras_source_names_from_tf2onnx_scopes():
    """tf2onnx's node names carry TensorFlow's uniquified scopes, op scopes inside a layer, nested models, and nodes it
    made itself whose weight and bias keep the layers' scopes."""
    from onnx import helper

    from edgeconv.debug.graph import KerasScopes, _keras_scopes, source_name

    names = ["conv2d", "conv2d_1", "bn", "backbone", "backbone/block_1_expand", "backbone/block_1_expand_BN"]
    keras = KerasScopes(names)
    assert keras.layer(_keras_scopes("sequential/conv2d_1/BiasAdd")) == "conv2d"  # the first trace of layer conv2d
    assert keras.layer(_keras_scopes("sequential/conv2d_1_2/BiasAdd")) == "conv2d_1"
    assert keras.layer(_keras_scopes("sequential/bn_1/batchnorm/add_1")) == "bn"  # not the op scope "batchnorm"
    assert keras.layer(_keras_scopes("sequential/backbone_1/block_1_expand_1/convolution:0")) == "backbone/block_1_expand"
    assert keras.layer(_keras_scopes("sequential/backbone_1/Relu")) == "backbone"
    conv = helper.make_node("Conv", ["x", "sequential/backbone_1/block_1_expand_1/convolution/merged_input:0",
                                     "sequential/backbone_1/block_1_expand_BN_1/batchnorm/sub:0"], ["y"], name="Conv__235")
    assert source_name(conv, "keras", set(), keras) == ("backbone/block_1_expand (+backbone/block_1_expand_BN)", None)
    assert KerasScopes(None).layer(_keras_scopes("model/dense_3/MatMul")) == "dense_3"  # no layer names: the scope as is


def test_source_names_and_the_channel_balanced_snr():
    from edgeconv.debug import tensor_metrics
    from edgeconv.debug.graph import _torchscript_path

    assert _torchscript_path("/features/features.3/Conv") == "features.3"
    assert _torchscript_path("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert _torchscript_path("/features/0/Conv") == "features.0"
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(8, 4, 5, 5))
    ref[:, 0] *= 1e4
    lost = ref.copy()
    lost[:, 1:] = 0  # int8 with a scale set by channel 0 rounds channels 1..3 away
    m = tensor_metrics(ref, lost)
    assert m["snr_tensor_db"] > 60 and m["snr_db"] < 2


def test_a_layer_fused_away_passes_its_error_on_to_the_layer_that_carries_it():
    """A layer the artifact has no tensor for (OpenVINO folds a depthwise Conv into its BatchNorm multiply): the next
    layer's error includes it, so that layer inherits what reached the fused one and names it in ``carries``."""
    from edgeconv.debug import _rows
    from edgeconv.debug.capture import Captured
    from edgeconv.debug.graph import Layer

    rng = np.random.default_rng(0)
    ref = {t: rng.normal(size=(4, 8)).astype(np.float32) for t in ("a", "b", "c")}
    noise = {"a": 0.01, "c": 0.3}  # c's error includes b's, which the artifact never exposes
    got = Captured({t: ref[t] + s * rng.normal(size=ref[t].shape).astype(np.float32) for t, s in noise.items()}, "test")
    layers = [Layer(0, "A", "Conv", ["A"], ["a"], ["x"], "conv"), Layer(1, "B", "Conv", ["B"], ["b"], ["a"], "dw"),
              Layer(2, "C", "Mul", ["C"], ["c"], ["b"], "bn")]
    a, b, c = _rows(layers, ref, got, -1)
    assert b["snr_db"] is None and b["carries"] == [] and c["carries"] == ["dw"]
    assert c["inherited_snr_db"] == pytest.approx(a["snr_db"])  # through b, not 0 error in
    assert a["carries"] == [] and c["added_snr_db"] > c["snr_db"]
