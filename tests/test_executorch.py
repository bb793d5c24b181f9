"""ExecuTorch target: real torch.export lowering (XNNPACK / portable), real PT2E int8, the ExecuTorch runtime."""

from __future__ import annotations

import pytest

from conftest import convert_digits


@pytest.mark.parametrize("precision, backend", [("fp32", "xnnpack"), ("int8", "xnnpack"), ("fp32", "portable")])
def test_executorch_roundtrip(cli, samples, tmp_path, precision, backend):
    out = tmp_path / f"{precision}-{backend}"
    m = convert_digits(cli, out, "--target", "executorch", "--precision", precision, "--et-backend", backend, source="digits_cnn.pt2")
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    assert art["file"] == "model.pte" and art["delegation"]["backend"] == backend
    if backend == "xnnpack":
        assert art["delegation"]["delegated_nodes"] > art["delegation"]["non_delegated_nodes"] >= 0
        assert art["delegation"]["delegated_subgraphs"] >= 1
    else:
        assert art["delegation"]["delegated_nodes"] == 0
    rep = cli("validate", out, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "0.5", "--runs", "10", "--json")
    assert rep.code == 0, rep
    rep = rep.json()
    assert rep["measured_on"]["runtime"] == "executorch"
    if precision == "fp32":
        assert rep["parity"]["outputs"][0]["max_abs"] <= 1e-4


def test_executorch_refuses_torchscript(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "executorch", "-o", tmp_path / "o")
    assert r.code == 2 and "torch.export" in r.stderr and not (tmp_path / "o").exists()


def test_executorch_refuses_an_onnx_source_in_its_own_terms(cli, samples, tmp_path):
    """An ONNX file is not told that TorchScript cannot be re-exported: it is told ExecuTorch needs the PyTorch
    model, and which targets take ONNX; before any export work (nothing written)."""
    onnx_file = tmp_path / "m.onnx"
    r = cli("convert", samples / "digits_cnn.pt", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    (tmp_path / "b" / "model.onnx").rename(onnx_file)
    r = cli("convert", onnx_file, "--target", "executorch", "-o", tmp_path / "o")
    assert r.code == 2, r
    assert "is an ONNX model (onnx)" in r.stderr and "takes ONNX: onnx, tflite, openvino, ncnn" in r.stderr, r
    assert "TorchScript" not in r.stderr and "Exporting" not in r.stderr and not (tmp_path / "o").exists()
