"""The int8 guard's quantization-aware fine-tuning (``convert --fallback auto --finetune TRAIN.npz``, the qat lever):
torchao's PT2E QAT on the real digits training set, then the backend's own int8 of the fine-tuned graph.

The planted model (tests/conftest.py: two channels of ``features.3`` scaled by 1e4) loses 87.8 points in plain int8;
``--levers qat`` alone (no float layers) wins most of them back by training the rest of the network around the
per-tensor rounding. The bundle then carries the fine-tuned model and its reference outputs, so ``validate`` checks
the artifact against what it was built from."""

from __future__ import annotations

import pytest
from conftest import SAMPLES, planted_digits

QAT = ["--levers", "qat", "--finetune", SAMPLES / "digits_train.npz", "--epochs", "10", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_digits(tmp_path_factory.mktemp("planted"))


def _int8(cli, model, out, *extra):
    return cli("convert", model, "-t", "onnx", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz", "--data",
               SAMPLES / "digits_test.npz", "--fallback", "auto", "-o", out, "--json", *extra)


@pytest.fixture(scope="module")
def finetuned(planted, tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("qat") / "b"
    r = _int8(cli, planted, out, "--max-accuracy-drop", "15", *QAT)
    assert r.code == 0, r
    return out, r.json()["manifest"]


def test_qat_wins_back_what_plain_int8_lost(finetuned):
    out, m = finetuned
    fb = m["fallback"]
    assert fb["ok"] and fb["kept"]["lever"] == "qat"
    assert fb["score"]["before"] > 50 and fb["score"]["after"] <= 15  # 87.8 → about 8.6 points on this machine
    assert [lever["name"] for lever in fb["levers"]] == ["qat"]
    tuned = fb["finetuned"]
    assert tuned["file"] == "finetuned.pt2" and (out / "finetuned.pt2").is_file()
    assert len(tuned["history"]) == 10 and tuned["history"][-1]["train_top1"] > tuned["history"][0]["train_top1"]
    assert tuned["finetune"]["samples"] == 1437 and tuned["finetune"]["epochs"] == 10
    # the fine-tuned float model's own top-1 on --data, beside the source's, and the int8 attempt measured against the source
    assert 0.5 < tuned["float_top1"]["finetuned"] <= 1 and tuned["float_top1"]["source"] == pytest.approx(0.975)
    attempt = fb["attempts"][0]
    assert attempt["finetuned"] and attempt["float_layers"] == 0 and attempt["p50_ms"] > 0
    assert any("finetuned.pt2" in n for n in m["export"]["notes"])  # the bundle says what it was built from


def test_the_bundle_validates_against_the_finetuned_model(finetuned, cli):
    out, _ = finetuned
    r = cli("validate", out, "--json")
    assert r.code == 0, r
    assert r.json()["ok"]


@pytest.mark.parametrize("args, needle", [
    (["--finetune", SAMPLES / "digits_train.npz", "--max-accuracy-drop", "1"], "--fallback auto"),
    (["--fallback", "auto", "--levers", "calibration,magic", "--max-accuracy-drop", "1"], "magic"),
    (["--fallback", "auto", "--epochs", "3", "--max-accuracy-drop", "1"], "--finetune"),
    (["--fallback", "auto", "--finetune", SAMPLES / "digits_train.npz"], "--max-accuracy-drop"),
    (["--fallback", "auto", "--levers", "calibration", "--finetune", SAMPLES / "digits_train.npz",
      "--max-accuracy-drop", "1"], "leaves qat out"),
])
def test_qat_usage_errors(tmp_path, cli, args, needle):
    r = cli("convert", SAMPLES / "digits_cnn.pt2", "-t", "onnx", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
            "--data", SAMPLES / "digits_test.npz", "-o", tmp_path / "b", "--json", *args)
    assert r.code == 2, r
    assert needle in r.json()["error"]["message"] + (r.json()["error"].get("hint") or "")
    assert not (tmp_path / "b").exists()


def test_finetune_needs_a_pytorch_source(tmp_path, cli):
    r = cli("convert", SAMPLES / "digits_keras.keras", "-t", "onnx", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
            "--data", SAMPLES / "digits_test.npz", "--max-accuracy-drop", "1", "--fallback", "auto", "--finetune",
            SAMPLES / "digits_train.npz", "-o", tmp_path / "b", "--json")
    assert r.code == 2, r
    assert "PyTorch" in r.json()["error"]["message"]


def test_a_training_set_that_does_not_fit_the_model_is_refused_before_any_work(tmp_path, cli):
    import numpy as np

    bad = tmp_path / "train.npz"
    d = np.load(SAMPLES / "digits_train.npz")
    np.savez(bad, x=d["x"], y=d["y"] + 10)  # labels beyond the model's 10 classes
    r = _int8(cli, SAMPLES / "digits_cnn.pt2", tmp_path / "b", "--max-accuracy-drop", "1", "--finetune", bad)
    assert r.code == 2, r
    assert "class ids 0..9" in r.json()["error"]["message"]
    assert not (tmp_path / "b").exists()


def test_the_guard_line_names_the_lever_kept_for_every_goal(finetuned):
    from edgeconv.render import _guard_line

    fb = finetuned[1]["fallback"]
    line = _guard_line("int8 guard", fb)
    assert "kept fine-tuned with quantization in the loop" in line and "drop 87.78 →" in line, line
    # without labels the guard's goal is parity (or agreement): no drop in points, a tolerance ratio instead
    parity = {**fb, "goal": "parity", "max_accuracy_drop": None, "drop_before": None, "drop_after": None,
              "score": {"metric": "tolerance_ratio", "before": 20.5, "after": 0.4}}
    line = _guard_line("int8 guard", parity)
    assert "(met parity)" in line and "worst error 20.50 → 0.40 × the tolerance" in line, line
