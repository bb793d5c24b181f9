"""OpenVINO int8 with ``--max-accuracy-drop`` and no ``--fallback auto``: NNCF's accuracy control reverts ops to float,
and the manifest's ``fallback`` record says which layers (ONNX nodes, PyTorch module paths), the drop before and after,
and what they cost against full int8 — the same record the int8 guard writes. Real OpenVINO, real NNCF.

The planted model (as in test_debug.py): the digits CNN with two of ``features.3``'s 32 output channels scaled by 1e4
and the matching inputs of ``head.1`` by 1e-4 — the same function in float, but a per-tensor int8 of that activation
keeps the two huge channels and rounds the other 30 away. NNCF quantizes that activation at the input of ``head.1``'s
MatMul, so the layer it must keep in float to restore the accuracy is ``head.1``.
"""

from __future__ import annotations

import json

import pytest
from conftest import SAMPLES, planted_digits

BUDGET = 1.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_digits(tmp_path_factory.mktemp("planted"))


def _accuracy_controlled(cli, model, out):
    return cli("convert", model, "-t", "openvino", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
               "--data", SAMPLES / "digits_test.npz", "--max-accuracy-drop", str(BUDGET), "-o", out, "--json")


@pytest.fixture(scope="module")
def planted_bundle(planted, tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("ov-ac") / "b"
    r = _accuracy_controlled(cli, planted, out)
    assert r.code == 0, r
    return out, r.json()["manifest"]


def test_accuracy_control_lists_the_layers_it_kept_in_float(planted_bundle):
    bundle, m = planted_bundle
    fb = m["fallback"]
    assert fb is not None and fb["mode"] == "accuracy-control" and fb["ok"] and m["status"] == "ok", fb
    assert "nncf.quantize_with_accuracy_control" in fb["mechanism"]
    layers = fb["float_layers"]
    assert layers, fb
    sources = [x["source"] for x in layers]
    assert all(sources), layers  # every reverted op maps back to an ONNX node and a PyTorch module path
    assert "head.1" in sources and set(sources) <= {"head.1", "features.3"}, layers
    head = next(x for x in layers if x["source"] == "head.1")
    assert head["op"] == "Gemm" and head["source_class"] == "Linear" and head["layer"] in head["nodes"]
    # OpenVINO's names for it derive from the ONNX node: ``node`` or ``node/WithoutBiases``
    assert head["artifact_names"] and all(any(n == node or n.startswith(node + "/") for node in head["nodes"])
                                          for n in head["artifact_names"])
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    assert model["quantization"]["accuracy_control"]["reverted_to_float"] == [n for x in layers for n in x["artifact_names"]]
    assert not (bundle / ".nncf-full-int8").exists() and not list(bundle.glob(".nncf-*"))  # scratch files are gone


def test_the_reverted_ops_really_run_in_float(planted_bundle):
    import openvino as ov

    bundle, m = planted_bundle
    ir = ov.Core().read_model(str(bundle / "model.xml"))
    ops = {op.get_friendly_name(): op for op in ir.get_ordered_ops()}
    fq = [op for op in ops.values() if op.get_type_name() == "FakeQuantize"]
    assert fq  # the rest is still int8
    for name in (n for x in m["fallback"]["float_layers"] for n in x["artifact_names"]):
        op = ops[name]
        feeders = {op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())}
        assert "FakeQuantize" not in feeders, (name, feeders)


def test_drop_before_and_after_and_what_the_float_layers_cost(planted_bundle):
    _, m = planted_bundle
    fb = m["fallback"]
    assert fb["max_accuracy_drop"] == BUDGET
    assert fb["drop_before"] > 30 > BUDGET >= fb["drop_after"], fb  # full int8 lost the planted channels
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["ok"] and acc["drop_points"] == fb["drop_after"] and fb["accuracy_after"] == acc["artifact"]
    assert fb["accuracy_before"]["top1"] < 0.5
    # edgeconv's own measurement of the full-int8 IR agrees with what NNCF measured first
    nncf = next(a for a in m["artifacts"] if a["role"] == "model")["quantization"]["accuracy_control"]["nncf"]
    assert abs(nncf["drop_full_int8_points"] - fb["drop_before"]) < 5, (nncf, fb["drop_before"])
    assert fb["attempts"] and fb["attempts"][-1]["ok"] and "head.1" in fb["attempts"][-1]["layers"]
    cost = fb["cost"]
    kept_bytes = sum(a["bytes"] for a in m["artifacts"] if a["role"] in ("model", "weights"))
    assert cost["bytes"]["with_float_layers"] == kept_bytes
    # head.1's weights are most of the model: kept in float they cost several times their int8 size
    assert cost["bytes"]["full_int8"] > 0 and cost["bytes"]["delta"] == kept_bytes - cost["bytes"]["full_int8"] > 50_000
    p50 = cost["p50_ms"]
    assert p50["full_int8"] > 0 and p50["with_float_layers"] > 0
    assert p50["ratio"] == pytest.approx(p50["with_float_layers"] / p50["full_int8"])
    assert "openvino" in cost["method"] and "timed runs" in cost["method"]


def test_the_report_lists_them(planted_bundle):
    from edgeconv import render
    from edgeconv.convert import ConvertResult

    bundle, m = planted_bundle
    with render.console.capture() as cap:
        render.render_convert(ConvertResult(bundle, m))
    text = " ".join(cap.get().split())
    assert "kept in float — head.1 (Gemm)" in text and f"drop {m['fallback']['drop_before']:.2f} →" in text, text


def test_nothing_reverted_lists_no_float_layer(tmp_path, cli):
    """The healthy digits CNN meets the budget in full int8: NNCF reverts nothing and the record says so."""
    r = _accuracy_controlled(cli, SAMPLES / "digits_cnn.pt", tmp_path / "b")
    assert r.code == 0, r
    m = r.json()["manifest"]
    fb = m["fallback"]
    assert fb["float_layers"] == [] and fb["attempts"] == [] and fb["ok"]
    assert fb["drop_before"] == fb["drop_after"] <= BUDGET
    assert fb["cost"]["bytes"]["delta"] == 0 and fb["cost"]["p50_ms"]["delta"] == 0
    q = next(a for a in m["artifacts"] if a["role"] == "model")["quantization"]
    assert q["accuracy_control"]["reverted_to_float"] == [] and q["kept_in_float"] == []


def test_plain_int8_without_a_budget_has_no_fallback_record(tmp_path, cli):
    r = cli("convert", SAMPLES / "digits_cnn.pt", "-t", "openvino", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
            "--data", SAMPLES / "digits_test.npz", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    assert r.json()["manifest"]["fallback"] is None
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["fallback"] is None
