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
    r = cli("convert", samples / "digits_cnn.pt", "--target", "ncnn", "--precision", "int8",
            "--calib", samples / "digits_calib.npz", "-o", tmp_path / "o")
    assert r.code == 2 and "ncnn2table" in r.stderr and not (tmp_path / "o").exists()


def test_ncnn_failing_on_the_pnnx_output_is_a_conversion_failure_not_a_dead_process(cli, samples, tmp_path):
    """ncnn segfaults on some graphs pnnx writes (Keras EfficientNet-B0 in the zoo): the probe loads and runs the
    .param/.bin in a child process, so a crash or a refusal is a conversion failure with the files kept."""
    from edgeconv.errors import ConversionFailed
    from edgeconv.targets.ncnn import _probe_in_child

    out = tmp_path / "ok"
    m = convert_digits(cli, out, "--target", "ncnn")
    options = next(a for a in m["artifacts"] if a["role"] == "model")["runner_options"]
    param, binary = out / "model.ncnn.param", out / "model.ncnn.bin"
    _probe_in_child(param, options, {"x": [1, 1, 8, 8]}, tmp_path / "failed")  # the real graph runs
    assert not (tmp_path / "failed").exists()
    binary.write_bytes(binary.read_bytes()[:100])  # weights cut short: ncnn refuses (or crashes) in the child
    with pytest.raises(ConversionFailed, match=r"ncnn .* (crashes \(SIG\w+\)|fails \(exit \d+\)) loading or running"):
        _probe_in_child(param, options, {"x": [1, 1, 8, 8]}, tmp_path / "failed")
    assert (tmp_path / "failed" / "model.ncnn.param").exists()
