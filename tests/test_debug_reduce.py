"""``edgeconv debug --reduce`` (edgeconv/debug/reduce.py) on a real failing bundle: the planted digits CNN of the int8
tests (``features.3`` with two channels scaled by 1e4) on ONNX Runtime int8. The reduced piece still fails on its own
on the same backend, and the command printed reproduces it."""

from __future__ import annotations

import shlex
import subprocess

import onnx
from conftest import SAMPLES, planted_digits

PLANTED = "features.3"


def test_reduce_writes_a_small_piece_that_still_fails(cli, tmp_path):
    model = planted_digits(tmp_path)
    bundle = tmp_path / "int8"
    r = cli("convert", model, "-t", "onnx", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
            "--data", SAMPLES / "digits_test.npz", "-o", bundle, "--json")
    assert r.code in (1, 4), r  # the plain int8 bundle fails and is kept
    out = tmp_path / "reduced"
    r = cli("debug", bundle, "--data", SAMPLES / "digits_test.npz", "--reduce", out, "--json")
    assert r.code == 0, r
    found = r.json()
    assert found["first_diverging"] == PLANTED and found["runtime"] == "onnxruntime"
    piece = onnx.load(str(out / "reduced.onnx"))
    assert 1 <= len(piece.graph.node) <= 5 and piece.graph.node[0].op_type == "Conv", piece.graph.node
    assert (out / "inputs.npz").is_file() and (out / found["artifact"]).is_file()
    assert found["tried"][-1]["fails"] and found["tried"][-1]["snr_db"] < found["threshold_db"]
    argv = shlex.split(found["command"])
    run = subprocess.run([subprocess.sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "SNR" in run.stdout, run  # the failure, reproduced with ONNX Runtime alone
