"""Coral Edge TPU: full-int8 TFLite through the real converters, the mapping prediction, the compiler log parser."""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import pytest

from conftest import convert_digits

FIXTURES = Path(__file__).parent / "fixtures" / "edgetpu_compiler"


@pytest.fixture(scope="module")
def coral(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("coral") / "b"
    return out, convert_digits(cli, out, "--target", "coral", "--precision", "int8")


def test_coral_bundle_is_full_int8_and_predicts_full_mapping(coral, cli, samples):
    out, m = coral
    assert m["precision"] == "int8"  # the profile's default precision
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    assert set(art["tensor_dtypes"].values()) == {"int8"}
    from edgeconv.targets.tflite import tflite_graph

    ops, tensors, _, _ = tflite_graph(out / "model.tflite")
    assert all(tensors[i]["dtype"] in ("int8", "int32") for op in ops for i in op["inputs"] + op["outputs"])
    mapping = next(c for c in m["checks"] if c["kind"] == "edgetpu-mapping")
    assert mapping["ok"] and mapping["tpu_share_ops"] == 1.0 and mapping["split_at"] is None
    assert {r["op"] for r in mapping["table"]} >= {"CONV_2D", "FULLY_CONNECTED"}
    build = art["device_build"]
    assert build["compiled"] is False and "edgetpu_compiler" in build["reason"] and "edgetpu_compiler -s" in build["command"]
    r = cli("validate", out, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "0.5", "--runs", "10", "--json")
    assert r.code == 0, r
    assert r.json()["measured_on"]["kind"] == "host emulation, not device"


def test_coral_refuses_float(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "coral", "--precision", "fp32", "-o", tmp_path / "o")
    assert r.code == 2 and "precision 'fp32' is not offered for coral-usb" in " ".join(r.stderr.split())
    r = cli("convert", samples / "digits_cnn.pt", "--target", "coral", "-o", tmp_path / "o")
    assert r.code == 2 and "--calib" in r.stderr
    r = cli("convert", samples / "digits_cnn.pt", "--target", "coral", "--io-dtype", "float",
            "--calib", samples / "digits_calib.npz", "-o", tmp_path / "o")
    assert r.code == 2 and "needs integer input/output tensors" in r.stderr


def test_unsupported_op_in_the_middle_predicts_the_split(cli, samples, tmp_path):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.c2(torch.nn.functional.elu(self.c1(x))), 1))

    src = tmp_path / "elu.pt2"
    torch.export.save(torch.export.export(Net().eval(), (torch.zeros(1, 1, 8, 8),)), str(src))
    r = cli("convert", src, "--target", "coral", "--calib", samples / "digits_calib.npz", "-o", tmp_path / "a", "--json")
    assert r.code == 0, r  # by default only a model that maps nothing fails
    mapping = next(c for c in r.json()["manifest"]["checks"] if c["kind"] == "edgetpu-mapping")
    assert 0 < mapping["tpu_share_ops"] < 0.5 and mapping["split_at"]["index"] >= 1
    assert any("Elu" in f for f in mapping["onnx_findings"])
    assert any(row["op"] == "ELU" and row["status"].startswith("not mapped") for row in mapping["table"])
    r = cli("convert", src, "--target", "coral", "--calib", samples / "digits_calib.npz", "-o", tmp_path / "b",
            "--min-tpu-share", "0.9")
    assert r.code == 1
    err = " ".join(r.stderr.split())
    assert "below --min-tpu-share 0.9" in err and "the split comes at" in err
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["status"] == "failed-check"


def test_compiler_log_parser_on_documented_output():
    from edgeconv.targets.coral import parse_compiler_log

    full = parse_compiler_log((FIXTURES / "fully_mapped.txt").read_text())
    assert full["compiler_version"] == "16.0.384591198" and full["success"]
    assert full["mapped_ops"] == full["table_ops"] == full["total_ops"] == 8
    assert full["on_chip_used"] == "1.56MiB" and full["off_chip_used"] == "0.00B" and full["subgraphs"] == 1
    part = parse_compiler_log((FIXTURES / "partially_mapped.txt").read_text())
    assert part["mapped_ops"] == 2 == part["tpu_ops_reported"] and part["table_ops"] == 155 == part["total_ops"]
    assert {"op": "FULLY_CONNECTED", "count": 1, "status": "More than one subgraph is not supported"} in part["rows"]
    zero = parse_compiler_log((FIXTURES / "zero_mapped.txt").read_text())
    assert zero["success"] and zero["mapped_ops"] == 0 and zero["subgraphs"] == 0
    assert all("unspecified limitation" in r["status"] for r in zero["rows"])


def test_prediction_vs_compiler_comparison():
    from edgeconv.targets.coral import compare_with_prediction, parse_compiler_log

    part = parse_compiler_log((FIXTURES / "partially_mapped.txt").read_text())
    assert compare_with_prediction(part, {"tpu_ops": 2, "ops": 155}) is None
    assert "mapped 2 of 155" in compare_with_prediction(part, {"tpu_ops": 155, "ops": 155})


def test_build_without_compiler_is_exit_3(cli, coral):
    out, _ = coral
    r = cli("build", out)
    assert r.code == 3 and "edgetpu_compiler is not on PATH" in r.stderr


def test_edgetpu_device_runner_runs_on_python37_syntax(coral):
    """The Coral Dev Board's Python is 3.7: every module of the bundle's runner parses as 3.7."""
    from edgeconv.bundle import DEVICE_RUNNER_NAME, device_runner_bytes

    out, _ = coral
    assert (out / DEVICE_RUNNER_NAME).read_bytes() == device_runner_bytes()
    with zipfile.ZipFile(out / DEVICE_RUNNER_NAME) as z:
        for name in z.namelist():
            ast.parse(z.read(name).decode(), filename=name, feature_version=(3, 7))


def test_ops_table_is_data_with_source():
    from edgeconv.targets.coral import load_table

    t = load_table()
    assert t["source"].startswith("https://coral.ai/") and "CONV_2D" in t["ops"] and "ELU" not in t["ops"]
    assert t["requirements"]["max_mapped_rank"] == 3
