"""The imx500 target (issue 28) on the real edge-mdt in its toolchain: the digits sample (its nn.Module: state_dict +
class) through MCT PTQ and imxconv-pt to packerOut.zip with the memory report, top-1 on the quantized ONNX labelled
simulated quantization, and the sources MCT cannot quantize refused before any work."""

from __future__ import annotations

import zipfile

import pytest

from conftest import SAMPLES
from edgeconv.runners.imx500 import SIM_LABEL

STATE = ["--model-class", f"{SAMPLES / 'digits_model.py'}:DigitsCNN", "--input-shape", "x=1x1x8x8"]


@pytest.fixture(scope="module")
def imx_bundle(cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("imx500") / "int8"
    calib = ["--calib", SAMPLES / "digits_calib.npz"]
    r = cli("convert", SAMPLES / "digits_cnn_state.pt", *STATE, "--target", "imx500", "--precision", "int8", "-o", out,
            "--data", SAMPLES / "digits_test.npz", *calib)
    assert r.code == 0, r
    return out, r  # the human output (its memory figure); the manifest is read from the bundle


def test_digits_to_imx500_packs_and_reports_memory(imx_bundle):
    import json

    out, r = imx_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["role"] == "model")
    assert art["runner"] == "imx500" and art["file"] == "imx500/model_mct.onnx"
    tc = art["toolchain"]
    assert tc["name"] == "imx500" and tc["versions"]["edge-mdt"] == "1.3.0" and tc["versions"]["imx500-converter"]
    memory = art["imx500"]["memory"]
    assert memory["fits"] and memory["available"] == "8.00MB" and memory["usage"].endswith("KB"), memory
    assert art["imx500"]["calibration_samples"] == 200 and art["imx500"]["onnx_opset"]["ai.onnx"] == 20
    assert art["imx500"]["onnx_opset"]["mct_quantizers"] >= 1  # MCT's quantizer ops are in the graph
    with zipfile.ZipFile(out / "imx500" / "packerOut.zip") as z:
        assert z.namelist()
    roles = {a["role"] for a in manifest["artifacts"]}
    assert {"imx500-packer", "imx500-memory-report"} <= roles
    shown = " ".join(r.stdout.split())  # the figure is in convert's output
    assert f"IMX500 memory report: fits: {memory['usage']} of 8.00MB ({memory['utilization']}" in shown, r.stdout


def test_validate_reports_top1_on_simulated_quantization(cli, samples, imx_bundle):
    out, _ = imx_bundle
    rep = cli("validate", out, "--data", samples / "digits_test.npz", "--runs", "3", "--json")
    assert rep.code == 0, rep
    rep = rep.json()
    mo = rep["measured_on"]
    assert mo["runtime"] == "imx500" and mo["device"] == SIM_LABEL and "device only" in mo["note"]
    assert mo["kind"].startswith("host emulation"), mo
    assert rep["latency"]["device_only"].startswith("device only")  # a few runs here, labelled: the camera's only
    top1 = rep["accuracy"]["artifact"]["top1"]
    assert top1 >= 0.9 and rep["accuracy"]["source"]["top1"] - top1 <= 0.03, rep["accuracy"]
    assert rep["parity"]["outputs"][0]["cosine"] >= 0.99


@pytest.mark.parametrize("source, why", [("digits_cnn.pt", "TorchScript"), ("digits_cnn.pt2", "torch.export")])
def test_sources_mct_cannot_quantize_are_refused(cli, samples, tmp_path, source, why):
    r = cli("convert", samples / source, "--target", "imx500", "--precision", "int8", "-o", tmp_path / "o",
            "--calib", samples / "digits_calib.npz", "--json")
    assert r.code == 2, r
    err = r.json()["error"]
    assert why in err["message"] and "torch.fx" in err["message"] and "--model-class" in err["hint"]
    assert not (tmp_path / "o").exists()


def test_opsets_below_15_are_refused(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn_state.pt", *STATE, "--target", "imx500", "--opset", "13", "-o", tmp_path / "o",
            "--calib", samples / "digits_calib.npz", "--json")
    assert r.code == 2, r
    assert "opset 13: imxconv-pt takes opset 15 or newer" in r.json()["error"]["message"]


def test_a_model_over_the_8_mb_is_refused_with_the_figure(imx_bundle, tmp_path):
    """The converter's own memory report of the digits bundle, as imxconv-pt writes it for a model that does not fit."""
    import json

    from edgeconv.errors import ConversionFailed
    from edgeconv.targets.imx500 import check_converter

    out, _ = imx_bundle
    report = json.loads((out / "imx500" / "model_mct_MemoryReport.json").read_text())["Memory Report"]
    report.update({"Memory Usage": "9.31MB", "Memory Utilization": "116%", "Fit In Chip": False})
    (tmp_path / "imxconv.log").write_text("")
    with pytest.raises(ConversionFailed) as err:
        check_converter({"memory_report": report, "log": str(tmp_path / "imxconv.log"), "returncode": 1, "packer": None})
    assert err.value.exit_code == 4
    assert "does not fit the IMX500's on-chip memory: 9.31MB of 8.00MB (116%" in err.value.message


def test_without_the_toolchain_it_is_exit_3_with_the_install_command(cli, samples, tmp_path, monkeypatch):
    from edgeconv import toolchains

    monkeypatch.setenv(toolchains.ENV_VAR, str(tmp_path / "none"))
    r = cli("convert", samples / "digits_cnn_state.pt", *STATE, "--target", "imx500", "-o", tmp_path / "o",
            "--calib", samples / "digits_calib.npz", "--json")
    assert r.code == 3, r
    assert "edgeconv toolchain install imx500" in r.stdout + r.stderr
    assert not (tmp_path / "o").exists()
