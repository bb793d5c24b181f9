"""`edgeconv compress` on the digits samples: real torch, Torch-Pruning, ONNX Runtime and converters, no mocks.

Each compression (the issue's Done-when cases) runs once per module through the CLI; the compressed .pt2 is then
converted to tflite int8 and openvino int8 and validated on the held-out digits_test.npz, as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, convert_digits

TRAIN, TEST = SAMPLES / "digits_train.npz", SAMPLES / "digits_test.npz"

# name -> (source and its loading options, compression options); every case fine-tunes 10 epochs on digits_train.npz
CASES = {
    "sparsity": (["digits_cnn.pt2"], ["--sparsity", "0.9"]),
    # --keep-slower: these tests check the factorisation itself, not whether it pays on a loaded machine (that is
    # test_compress_coverage's); the timings are still taken and reported
    "low-rank": (["digits_cnn_state.pt", "--model-class", "samples/digits_model.py:DigitsCNN"],
                 ["--low-rank", "0.8", "--keep-slower"]),
    "prune-channels": (["digits_cnn.pt2"], ["--prune-channels", "0.5"]),
}


def _compress(cli, out: Path, source: list[str], *args) -> dict:
    r = cli("compress", SAMPLES / source[0], *source[1:], "-o", out, "--data", TEST, "--runs", 20, "--json", *args)
    assert r.code == 0, r
    report = r.json()
    assert out.is_file() and report["output"]["path"] == str(out)
    return report


@pytest.fixture(scope="module")
def compressed(cli, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """Each Done-when case compressed once: name -> (the .pt2, the JSON report)."""
    root = tmp_path_factory.mktemp("compress")
    out = {}
    for name, (source, opts) in CASES.items():
        path = root / f"{name}.pt2"
        out[name] = (path, _compress(cli, path, source, *opts, "--finetune", TRAIN, "--epochs", 10))
    return out


def _drop(report: dict) -> float:
    return (report["before"]["top1"] - report["after"]["top1"]) * 100


def test_digits_train_split_is_disjoint_from_test():
    with np.load(TRAIN) as tr, np.load(TEST) as te:
        assert tr["x"].shape == (1437, 1, 8, 8) and tr["x"].dtype == np.float32
        assert tr["y"].shape == (1437,) and tr["y"].dtype == np.int64 and set(tr["y"].tolist()) == set(range(10))
        train_rows = {row.tobytes() for row in tr["x"]}
        assert not any(row.tobytes() in train_rows for row in te["x"])


def test_sparsity_iterative(compressed):
    _, rep = compressed["sparsity"]
    b, a = rep["before"], rep["after"]
    assert b["nonzero_parameters"] / a["nonzero_parameters"] >= 9, rep["ratios"]
    assert _drop(rep) <= 1.0, (b["top1"], a["top1"])
    method = rep["methods"][0]
    assert method["method"] == "sparsity" and method["achieved"] == pytest.approx(0.9, abs=1e-3)
    # iterative: the sparsity rises over the first epochs while retraining, then stays at the target
    levels = [row["sparsity"] for row in rep["finetune"]["history"]]
    assert levels == sorted(levels) and levels[0] < 0.9 and levels[-1] == pytest.approx(0.9)
    # zeros do not shrink a dense graph, and the report says so; the zipped int8 artifact does shrink
    assert a["macs"] == b["macs"] and a["parameters"] == b["parameters"]
    assert any("do not make a dense runtime faster" in n for n in rep["notes"])
    assert a["int8_zip_bytes"] < 0.5 * b["int8_zip_bytes"]


def test_low_rank_head(compressed):
    _, rep = compressed["low-rank"]
    assert rep["after"]["parameters"] <= 0.6 * rep["before"]["parameters"], rep["ratios"]
    assert _drop(rep) <= 1.0, (rep["before"]["top1"], rep["after"]["top1"])
    layers = {d["layer"]: d for d in rep["methods"][0]["layers"]}
    assert "head.1" in layers and layers["head.1"]["rank"] < 64 and layers["head.1"]["energy_kept"] >= 0.8
    assert rep["source"]["format"] == "torch-state-dict"


def test_prune_channels_with_finetune(compressed):
    _, rep = compressed["prune-channels"]
    assert rep["after"]["macs"] <= 0.4 * rep["before"]["macs"], rep["ratios"]
    assert _drop(rep) <= 1.0, (rep["before"]["top1"], rep["after"]["top1"])
    method = rep["methods"][0]
    assert method["layers_kept_whole"] == ["head.3"]  # the classifier's 10 outputs stay 10
    widths = {d["layer"]: d["channels"] for d in method["layers"]}
    assert widths["features.0"] == [16, 8] and widths["features.3"] == [32, 16]
    ft = rep["finetune"]
    assert ft["epochs"] == 10 and len(ft["history"]) == 10 and ft["seed"] == 0
    assert all({"loss", "train_top1"} <= set(row) for row in ft["history"])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("target", ["tflite", "openvino"])
def test_compressed_converts_int8_and_validates(cli, compressed, tmp_path, case, target):
    path, _ = compressed[case]
    bundle = tmp_path / f"{case}-{target}"
    manifest = convert_digits(cli, bundle, "--target", target, "--precision", "int8", source=str(path))
    assert manifest["precision"] == "int8"
    r = cli("validate", bundle, "--data", TEST, "--runs", 20, "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["ok"]  # parity with the compressed .pt2
    # and the int8 artifact still classifies the held-out digits
    assert rep["accuracy"]["artifact"]["top1"] >= 0.9, rep["accuracy"]


def test_no_finetune_is_said(cli, tmp_path):
    rep = _compress(cli, tmp_path / "lr.pt2", ["digits_cnn.pt2"], "--low-rank", "0.8")
    assert rep["finetune"] is None
    assert any("no fine-tuning was done" in n for n in rep["notes"])
    # the written program is what convert reads: the same frontend, the same input
    assert rep["output"]["inputs"] == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}]


def test_help_lists_every_option(cli):
    r = cli("compress", "--help")
    assert r.code == 0
    for opt in ("--output", "--prune-channels", "--round-to", "--sparsity", "--low-rank", "--finetune", "--epochs", "--lr",
                "--batch-size", "--seed", "--data", "--runs", "--warmup", "--threads", "--input-shape", "--model-class",
                "--model-kwargs", "--trust-pickle", "--force", "--json"):
        assert opt in r.stdout, opt


# -- bad input: exit 2, the expected values in the message, nothing written ---------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    import torch

    root = tmp_path_factory.mktemp("compress-bad")
    only_classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.export.save(torch.export.export(only_classifier, (torch.zeros(1, 1, 8, 8),)), str(root / "linear.pt2"))
    with np.load(TRAIN) as z:
        x, y = z["x"], z["y"]
    np.savez(root / "wrong_shape.npz", x=x[:, :, :4, :], y=y)
    np.savez(root / "wrong_labels.npz", x=x, y=y + 5)
    np.savez(root / "float_labels.npz", x=x, y=y.astype(np.float32))
    return root


def _refused(cli, tmp_path: Path, *args) -> dict:
    out = tmp_path / "out.pt2"
    r = cli("compress", *args, "-o", out, "--json")
    assert r.code == 2, r
    assert not out.exists() and not list(tmp_path.glob(".out.pt2*")), "nothing is written on bad input"
    return r.json()["error"]


@pytest.mark.parametrize("args, expected", [
    (["--prune-channels", "1.5"], "--prune-channels 1.5 is outside (0, 1)"),
    (["--prune-channels", "0"], "--prune-channels 0 is outside (0, 1)"),
    (["--sparsity", "1"], "--sparsity 1 is outside (0, 1)"),
    (["--sparsity", "-0.2"], "--sparsity -0.2 is outside (0, 1)"),
    (["--low-rank", "2.5"], "neither an energy fraction in (0, 1) nor a whole rank"),
    ([], "nothing to do"),
    (["--sparsity", "0.5", "--epochs", "3"], "--epochs without --finetune"),
    (["--prune-channels", "0.3", "--keep-slower"], "--keep-slower without --low-rank"),
])
def test_bad_options(cli, tmp_path, args, expected):
    err = _refused(cli, tmp_path, SAMPLES / "digits_cnn.pt2", *args)
    assert expected in err["message"]


def test_nothing_prunable(cli, tmp_path, bad_files):
    err = _refused(cli, tmp_path, bad_files / "linear.pt2", "--prune-channels", "0.5")
    assert "nothing to prune" in err["message"] and "'1'" in err["message"]


def test_nothing_to_factorise(cli, tmp_path):
    err = _refused(cli, tmp_path, SAMPLES / "digits_cnn.pt2", "--low-rank", "0.9999")
    assert "nothing to factorise" in err["message"] and "head.1: rank 64 of 64" in err["message"]


@pytest.mark.parametrize("name, expected", [
    ("wrong_shape.npz", "has shape 1437x1x4x8 (float32), the model's input 'x' expects Nx1x8x8"),
    ("wrong_labels.npz", "labels 'y' go from 5 to 14; the model has 10 classes, so labels must be class ids 0..9"),
    ("float_labels.npz", "'y' must be 1437 integer class ids, got dtype float32"),
])
def test_training_set_that_does_not_fit(cli, tmp_path, bad_files, name, expected):
    err = _refused(cli, tmp_path, SAMPLES / "digits_cnn.pt2", "--prune-channels", "0.5", "--finetune", bad_files / name)
    assert expected in err["message"]


def test_torchscript_refused(cli, tmp_path):
    err = _refused(cli, tmp_path, SAMPLES / "digits_cnn.pt", "--sparsity", "0.5")
    assert "TorchScript only" in err["message"] and "torch.export cannot trace it" in err["message"]
    assert "--model-class" in err["hint"]


def test_keras_refused_with_the_reason(cli, tmp_path):
    err = _refused(cli, tmp_path, SAMPLES / "digits_keras.keras", "--sparsity", "0.5")
    assert "tfmot" in err["message"] and "Keras 3" in err["message"]


def test_existing_output_needs_force(cli, tmp_path):
    out = tmp_path / "out.pt2"
    out.write_bytes(b"keep me")
    r = cli("compress", SAMPLES / "digits_cnn.pt2", "-o", out, "--sparsity", "0.5", "--json")
    assert r.code == 2 and "--force" in json.loads(r.stdout)["error"]["hint"]
    assert out.read_bytes() == b"keep me"


def test_pickled_module_needs_trust_pickle(cli, tmp_path, monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(SAMPLES))
    from digits_model import DigitsCNN

    torch.manual_seed(0)
    whole = tmp_path / "whole.pt"
    torch.save(DigitsCNN().eval(), whole)
    err = _refused(cli, tmp_path, whole, "--sparsity", "0.5", "--data", TEST)
    assert "pickle of Python objects" in err["message"]
    rep = _compress(cli, tmp_path / "ok.pt2", [str(whole), "--trust-pickle"], "--sparsity", "0.5")
    assert rep["source"]["format"] == "torch-pickled-module"
    assert rep["after"]["nonzero_parameters"] < 0.55 * rep["before"]["nonzero_parameters"]
