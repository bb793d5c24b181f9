"""int8 on a real trained model, not a planted fault: samples/deep_digits.pt2 (inverted residuals with depthwise
convolutions, SiLU, ReLU6 and squeeze-and-excitation, trained here to convergence on the real digits data by
samples/make_deep_digits.py; 99.4% held out). On every int8 target with a guard, `--fallback auto
--max-accuracy-drop 1` holds the budget on the held-out set, and what the guard did (or that it had nothing to do) is in
the manifest. The bench with real pretrained models from PyPI wheels is bench/int8_guard.py (README: int8 guard)."""

from __future__ import annotations

import pytest
from conftest import SAMPLES

MODEL = SAMPLES / "deep_digits.pt2"


@pytest.mark.parametrize("target", ["onnx", "jetson", "openvino", "tflite"])
def test_guarded_int8_of_a_deep_trained_cnn_holds_one_point(cli, tmp_path, target):
    r = cli("convert", MODEL, "-t", target, "-p", "int8", "--calib", SAMPLES / "digits_calib.npz", "--data",
            SAMPLES / "digits_test.npz", "--max-accuracy-drop", "1", "--fallback", "auto", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["ok"] and acc["drop_points"] <= 1 and acc["source"]["top1"] > 0.98, acc
    fb = m["fallback"]
    if fb is not None:  # the guard ran: it says which lever it kept and what each attempt measured
        assert fb["ok"] and fb["kept"]["lever"] in ("calibration", "float-layers", "int16-activations")
        assert all("drop_points" in a for a in fb["attempts"])
