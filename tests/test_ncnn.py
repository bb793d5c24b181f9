"""NCNN target: real pnnx conversion, real ncnn runtime."""

from __future__ import annotations

import json

import pytest

from conftest import convert_digits


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_ncnn_roundtrip(cli, samples, tmp_path, precision):
    out = tmp_path / precision
    m = convert_digits(cli, out, "--target", "ncnn", "--precision", precision)
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    assert art["file"] == "model.ncnn.param" and (out / "model.ncnn.bin").exists()
    assert art["runner_options"]["tensor_names"] == {"x": "in0", "output": "out0"}
    assert art["weights_storage"] == precision
    rep = cli("validate", out, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "0.5", "--runs", "10", "--json")
    assert rep.code == 0, rep
    rep = rep.json()
    assert rep["measured_on"]["runtime"] == "ncnn"
    assert rep["measured_on"]["precision"] == f"fp16 storage {'on' if precision == 'fp16' else 'off'}, fp16 arithmetic off"
    if precision == "fp32":
        assert rep["parity"]["outputs"][0]["max_abs"] <= 1e-4
    sizes = json.loads((out / "manifest.json").read_text())["artifacts"]
    weights = next(a for a in sizes if a["role"] == "weights")["bytes"]
    assert weights > 0


def test_ncnn_refuses_int8_with_the_reason(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "ncnn", "--precision", "int8", "--calib", samples / "digits_calib.npz",
            "-o", tmp_path / "o")
    assert r.code == 2 and "ncnn2table" in r.stderr and not (tmp_path / "o").exists()
