"""Bad input gets its exit code and a one-paragraph message naming the file — never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_subprocess


def assert_refused(r, code: int, *needles: str):
    assert r.code == code, r
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def test_nonexistent_path(cli, tmp_path):
    r = cli("convert", tmp_path / "nope.pt", "-o", tmp_path / "out")
    assert_refused(r, 2, "nope.pt", "does not exist")


def test_directory_where_file_expected(cli, tmp_path):
    (tmp_path / "d").mkdir()
    r = cli("convert", tmp_path / "d", "-o", tmp_path / "out")
    assert_refused(r, 2, "is a directory")


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".onnx", ".keras"])
def test_empty_model_file(cli, tmp_path, suffix):
    f = tmp_path / f"empty{suffix}"
    f.write_bytes(b"")
    r = cli("convert", f, "-o", tmp_path / "out")
    assert_refused(r, 2, f.name, "empty")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["digits_cnn.pt", "digits_cnn.pt2", "digits_keras.keras", "model.onnx"])
def test_truncated_model_file(cli, tmp_path, samples, bundles, name):
    src = bundles("pt") / name if name == "model.onnx" else samples / name
    data = src.read_bytes()
    f = tmp_path / ("trunc" + src.suffix)
    f.write_bytes(data[: len(data) // 2])
    r = cli("convert", f, "-o", tmp_path / "out")
    assert_refused(r, 2, f.name)
    assert not (tmp_path / "out").exists()


def test_text_file_renamed_onnx(cli, tmp_path):
    f = tmp_path / "notes.onnx"
    f.write_text("this is not a model\n" * 20)
    r = cli("convert", f, "-o", tmp_path / "out")
    assert_refused(r, 2, "notes.onnx", "ONNX")


class _Evil:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_running_pickle_is_not_executed(cli, tmp_path):
    import torch

    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pt"
    torch.save({"weights": _Evil(str(marker))}, f)
    assert not marker.exists()
    r = cli("convert", f, "-o", tmp_path / "out")
    assert_refused(r, 2, "evil.pt", "run code", "TorchScript", "--model-class")
    assert not marker.exists()


def test_state_dict_without_class(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn_state.pt", "-o", tmp_path / "out")
    assert_refused(r, 2, "state_dict", "--model-class")


def test_keras_lambda_needs_trust(cli, tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Dense(3)])
    f = tmp_path / "lambda.keras"
    model.save(f)
    r = cli("convert", f, "-o", tmp_path / "out")
    assert_refused(r, 2, "Lambda", "--trust-pickle")
    r = cli("convert", f, "-o", tmp_path / "out", "--trust-pickle", "--json")
    assert r.code == 0, r


@pytest.mark.parametrize(
    "arrays, needle",
    [
        ({"a": np.zeros((3, 1, 8, 8), np.float32), "y": np.zeros(3, np.int64)}, "expected 'x'"),
        ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.zeros(3, np.int64)},
         "shape 3x1x4x4 (float32), the model's input 'x' expects Nx1x8x8"),
        ({"x": np.zeros((3, 1, 8, 8), np.int32), "y": np.zeros(3, np.int64)}, "dtype int32"),
        ({"x": np.zeros((3, 1, 8, 8), np.float32), "y": np.zeros(4, np.int64)}, "'y' must be 3 integer"),
    ],
)
def test_bad_data_npz(cli, bundles, tmp_path, arrays, needle):
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    r = cli("validate", bundles("pt"), "--data", f)
    assert_refused(r, 2, "bad.npz", needle)


def test_data_that_is_not_npz(cli, bundles, tmp_path):
    f = tmp_path / "bad.npz"
    f.write_text("hello")
    assert_refused(cli("validate", bundles("pt"), "--data", f), 2, "bad.npz")


def test_existing_output_needs_force(cli, samples, tmp_path, bundles):
    out = tmp_path / "b"
    assert cli("convert", samples / "digits_cnn.pt", "-o", out, "--json").code == 0
    before = (out / "manifest.json").read_text()
    r = cli("convert", samples / "digits_cnn.pt", "-o", out)
    assert_refused(r, 2, "already exists", "--force")
    assert (out / "manifest.json").read_text() == before
    r = cli("convert", samples / "digits_cnn.pt", "-o", out, "--force", "--precision", "fp16", "--json")
    assert r.code == 0, r
    assert (out / "model_fp16.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temp or trash folders left beside it


def test_force_never_replaces_a_non_bundle(cli, samples, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    r = cli("convert", samples / "digits_cnn.pt", "-o", out, "--force")
    assert_refused(r, 2, "not an edgeconv bundle")
    assert (out / "thesis.tex").exists()


def test_output_not_writable(cli, samples, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("convert", samples / "digits_cnn.pt", "-o", blocker / "bundle")
    assert_refused(r, 2, "cannot create the output folder")


def test_unknown_target_and_precision(cli, samples, tmp_path):
    assert_refused(cli("convert", samples / "digits_cnn.pt", "--target", "toaster", "-o", tmp_path / "o"), 2,
                   "unknown target 'toaster'")
    assert_refused(cli("convert", samples / "digits_cnn.pt", "--precision", "int3", "-o", tmp_path / "o"), 2, "precision 'int3'")


def test_not_a_bundle(cli, tmp_path):
    assert_refused(cli("validate", tmp_path), 2, "not an edgeconv bundle")


def test_tampered_artifact_is_refused(cli, samples, tmp_path):
    out = tmp_path / "b"
    assert cli("convert", samples / "digits_cnn.pt", "-o", out, "--json").code == 0
    with open(out / "model.onnx", "ab") as f:
        f.write(b"\0")
    assert_refused(cli("validate", out), 2, "changed since conversion")  # a damaged bundle is bad input (issue 26)


def test_debug_shows_traceback(tmp_path):
    r = run_subprocess("--debug", "convert", tmp_path / "nope.pt", "-o", tmp_path / "o")
    assert r.returncode != 0 and "Traceback" in r.stderr
    r = run_subprocess("convert", tmp_path / "nope.pt", "-o", tmp_path / "o")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope.pt" in r.stderr


def test_ctrl_c_during_convert_leaves_nothing(tmp_path):
    """SIGINT while the ONNX export runs: exit 130, nothing at -o, no temporary folder left."""
    import keras

    layers = [keras.Input((64,), name="x")] + [keras.layers.Dense(64, activation="relu") for _ in range(200)]
    src = tmp_path / "deep.keras"
    keras.Sequential(layers).save(src)
    out_parent = tmp_path / "outs"
    out_parent.mkdir()
    out = out_parent / "bundle"
    proc = subprocess.Popen([sys.executable, "-m", "edgeconv", "convert", str(src), "-o", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not any(out_parent.iterdir()):
        time.sleep(0.01)
    assert proc.poll() is None, "convert finished before it could be interrupted: " + proc.stderr.read()[-2000:]
    time.sleep(0.3)  # inside the export
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "Traceback" not in err
    assert list(out_parent.iterdir()) == []


def test_a_torchscript_export_failure_keeps_json_output_clean(tmp_path):
    """The TorchScript exporter prints the whole graph from C++ to fd 1 when an op fails (a complex STFT here): with
    --json, stdout must still be one JSON document, the failure named with the way to the dynamo exporter."""
    import json

    import torch

    class Spectrogram(torch.nn.Module):
        def forward(self, x):
            return torch.stft(x, n_fft=64, hop_length=32, window=torch.hann_window(64), return_complex=True).abs()

    torch.jit.trace(Spectrogram().eval(), torch.randn(1, 1024)).save(tmp_path / "spec.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 1024)).astype(np.float32))
    p = run_subprocess("convert", tmp_path / "spec.pt", "--target", "onnx", "--data", tmp_path / "x.npy", "-o",
                       tmp_path / "b", "--json")
    assert p.returncode == 4, p.stderr
    err = json.loads(p.stdout)["error"]  # nothing else on stdout
    assert "both exporters" in err["message"] and "torch.export" in err["hint"], err


def test_a_float64_torchscript_model_is_told_how_to_get_float64_inputs(cli, tmp_path):
    """TorchScript records no input dtype and numpy's float64 data is read as float32 (what edge models take): a model
    that computes in float64 then fails, and the refusal names the dtype option that works, and it does."""
    import torch

    torch.jit.trace(torch.nn.Linear(10, 3).double().eval(), torch.randn(1, 10, dtype=torch.float64)).save(tmp_path / "f64.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 10)))
    args = ["convert", tmp_path / "f64.pt", "--target", "onnx", "--data", tmp_path / "x.npy", "--json"]
    r = cli(*args, "-o", tmp_path / "refused")
    assert r.code == 2, r
    err = r.json()["error"]
    assert "same dtype" in err["message"] and "TorchScript interpreter" not in err["message"], err
    assert "--input-shape input=1x10:float64" in err["hint"], err
    assert cli(*args, "-o", tmp_path / "b", "--input-shape", "input=1x10:float64").code == 0


def test_a_float64_model_is_refused_for_tflite_before_conversion(cli, tmp_path):
    """TFLite has no float64 kernels: the preflight says so (exit 2) instead of TFLiteConverter's MLIR error."""
    import torch

    program = torch.export.export(torch.nn.Linear(10, 3).double().eval(), (torch.randn(1, 10, dtype=torch.float64),))
    torch.export.save(program, tmp_path / "f64.pt2")
    r = cli("convert", tmp_path / "f64.pt2", "--target", "tflite", "-o", tmp_path / "b", "--json")
    assert r.code == 2, r
    assert "float64" in r.json()["error"]["message"] and "model.float()" in r.json()["error"]["message"]
