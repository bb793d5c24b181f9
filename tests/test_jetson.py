"""Jetson: every host-side part with real ONNX Runtime and real quantization; the TensorRT parts skip here."""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import convert_digits
from edgeconv.bundle import DEVICE_RUNNER_NAME, device_runner_bytes



@pytest.fixture(scope="module")
def orin(tmp_path_factory, cli):
    base = tmp_path_factory.mktemp("orin")
    out = {}
    for precision in ("fp16", "int8"):
        convert_digits(cli, base / precision, "--target", "jetson-orin-nano", "--precision", precision)
        out[precision] = base / precision
    return out


def build_line(bundle):
    lines = [line for line in (bundle / "build.sh").read_text().splitlines() if "trtexec" in line and not line.startswith("#")]
    assert len(lines) == 1
    return shlex.split(lines[0])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_orin_bundle_validates_on_host(orin, cli, samples, precision):
    bundle = orin[precision]
    m = json.loads((bundle / "manifest.json").read_text())
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    assert art["host_emulation"] is True and art["runner"] == "onnxruntime"
    assert art["device_build"]["built"] is False and art["device_build"]["for_device"]["tensorrt"].startswith("10.")
    r = cli("validate", bundle, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "1", "--runs", "10", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["measured_on"]["kind"] == "host emulation, not device"
    assert rep["accuracy"]["drop_points"] <= 1.0


def test_int8_is_symmetric_per_channel_qdq(orin):
    import onnx
    from onnx import numpy_helper

    m = json.loads((orin["int8"] / "manifest.json").read_text())
    q = next(a for a in m["artifacts"] if a["role"] == "model")
    assert q["file"] == "model_int8_qdq.onnx" and q["quantization"]["per_channel"]
    proto = onnx.load(str(orin["int8"] / "model_int8_qdq.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    zps = [numpy_helper.to_array(i) for i in proto.graph.initializer if "zero_point" in i.name]
    assert zps and all(not np.any(z) for z in zps) and all(z.dtype == np.int8 for z in zps)
    per_channel = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("_scale") and i.dims]
    assert any(a.size > 1 for a in per_channel)  # weight scales per output channel
    assert m["calibration"]["count"] == 200


def test_build_sh_matches_the_bundle(orin, tmp_path, cli, samples):
    for precision, bundle in orin.items():
        m = json.loads((bundle / "manifest.json").read_text())
        build = next(a for a in m["artifacts"] if a["role"] == "model")["device_build"]
        args = build_line(bundle)
        assert args[0] == "${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}"
        flags = dict(a.split("=", 1) if "=" in a else (a, True) for a in args[1:])
        assert (bundle / flags["--onnx"]).exists() and flags["--onnx"] == build["onnx"]
        assert flags["--saveEngine"] == "model.engine" and flags["--memPoolSize"] == "workspace:1024M"
        assert ("--int8" in flags) == (precision == "int8") and "--fp16" in flags
        assert "--minShapes" not in flags
    r = cli("convert", samples / "digits_cnn.pt", "--target", "jetson-xavier-nx", "--precision", "fp16", "--dynamic-batch",
            "--max-batch", "16", "-o", tmp_path / "dyn", "--json")
    assert r.code == 0, r
    flags = dict(a.split("=", 1) if "=" in a else (a, True) for a in build_line(tmp_path / "dyn")[1:])
    assert flags["--minShapes"] == "x:1x1x8x8" and flags["--optShapes"] == "x:16x1x8x8" and flags["--maxShapes"] == "x:16x1x8x8"
    r = cli("convert", samples / "digits_cnn.pt", "--target", "jetson-xavier-nx", "--precision", "fp16", "--dla-core", "1",
            "-o", tmp_path / "dla", "--json")
    assert r.code == 0, r
    args = build_line(tmp_path / "dla")
    assert "--useDLACore=1" in args and "--allowGPUFallback" in args


def test_preflight_refusals(cli, samples, tmp_path):
    def refused(*args):
        r = cli("convert", samples / "digits_cnn.pt", *args, "-o", tmp_path / "o")
        assert r.code == 2, r
        assert not (tmp_path / "o").exists()
        return " ".join(r.stderr.split())

    assert "jetson-nano has no fast int8" in refused("--target", "jetson-nano", "--precision", "int8", "--calib",
                                                     samples / "digits_calib.npz")
    assert "no DLA cores" in refused("--target", "jetson-orin-nano", "--precision", "fp16", "--dla-core", "0")
    assert "not fp32" in refused("--target", "jetson-agx-orin", "--precision", "fp32", "--dla-core", "0")
    assert "must be 0..1" in refused("--target", "jetson-agx-xavier", "--precision", "fp16", "--dla-core", "2")
    assert "opset 18 is newer than jetson-nano accepts (13)" in refused("--target", "jetson-nano", "--opset", "18")


def test_old_jetpack_gets_its_opset(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "jetson-nano", "--precision", "fp16", "-o", tmp_path / "n",
            "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["export"]["opset"] == 13 and any("opset 13" in n for n in m["export"]["notes"])


def test_unsupported_op_fails_preflight_naming_it(cli, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="the_det")], "g", [x], [y])
    src = tmp_path / "det.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), src)
    r = cli("convert", src, "--target", "jetson-orin-nano", "--precision", "fp16", "-o", tmp_path / "o")
    assert r.code == 2
    err = " ".join(r.stderr.split())
    assert "op Det (the_det) is not supported by the TensorRT 10.3.0 ONNX parser" in err


def test_device_runner_is_python36_and_runs_here(orin, bundles, tmp_path):
    """JetPack 4.6's Python is 3.6: every module of the bundle's runner parses as 3.6, and it runs here."""
    for bundle in (bundles("pt"), orin["int8"]):
        copy = bundle / DEVICE_RUNNER_NAME
        assert copy.read_bytes() == device_runner_bytes()
        with zipfile.ZipFile(copy) as z:
            for name in z.namelist():
                ast.parse(z.read(name).decode(), filename=name, feature_version=(3, 6))
        r = subprocess.run([sys.executable, str(copy), "--runs", "5", "--json"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["ok"] and rep["measured_on"]["runtime"] == "onnxruntime" and rep["latency"]["runs"] >= 5
        assert rep["parity"]["ok"] and rep["budgets"] == []


def test_device_runner_reports_a_broken_artifact(bundles, tmp_path):
    """Parity is a real check: a bundle whose reference outputs are wrong makes the runner exit 1."""
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(bundles("pt"), copy)
    with np.load(copy / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["output:output"] = arrays["output:output"] + 1.0
    np.savez(copy / "reference.npz", **arrays)
    r = subprocess.run([sys.executable, str(copy / DEVICE_RUNNER_NAME), "--runs", "2"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "FAILED" in r.stdout


def test_engine_compatibility_rule():
    from edgeconv.core.backends.tensorrt import engine_mismatch

    built = {"tensorrt": "8.5.2", "compute_capability": "7.2"}
    assert engine_mismatch(built, {"tensorrt": "8.5.2", "compute_capability": "7.2"}) is None
    msg = engine_mismatch(built, {"tensorrt": "8.6.2", "compute_capability": "8.7"})
    assert "built with TensorRT 8.5.2 for compute 7.2; this device has 8.6.2 / 8.7" in msg and "edgeconv build" in msg


def test_device_facts_parsers():
    from edgeconv.targets.jetson_device import parse_nvpmodel, parse_tegra_release

    text = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    assert parse_tegra_release(text) == "36.4.3"
    assert parse_tegra_release("# R32 (release), REVISION: 7.6, GCID: 1") == "32.7.6"
    assert parse_nvpmodel("NV Power Mode: MAXN_SUPER\n2\n") == {"mode": "MAXN_SUPER", "id": "2"}
    assert parse_tegra_release("garbage") is None


def test_build_and_selftest_need_the_device(cli, orin, bundles):
    r = cli("build", orin["fp16"])
    assert r.code == 3 and "tensorrt not installed (needs an NVIDIA GPU/JetPack)" in r.stderr
    r = cli("selftest", "--target", "jetson")
    assert r.code == 3 and "not a Jetson" in r.stderr
    r = cli("build", bundles("pt"))  # an ONNX Runtime bundle has nothing to build on a device
    assert r.code == 2 and "nothing to build on a device" in r.stderr


def test_engine_build_and_run_on_device(orin, cli, samples):
    pytest.importorskip("tensorrt", reason="tensorrt not installed (needs an NVIDIA GPU/JetPack)")
    r = cli("build", orin["int8"], "--json")
    assert r.code == 0, r
    r = cli("validate", orin["int8"], "--data", samples / "digits_test.npz", "--max-accuracy-drop", "1", "--json")
    assert r.code == 0 and r.json()["measured_on"]["runtime"] == "tensorrt"
