"""TFLite/LiteRT target: real onnx2tf, real TFLiteConverter, real LiteRT interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest



def convert(cli, src, out, *extra):
    r = cli("convert", src, "--target", "tflite", "-o", out, "--json", *extra)
    assert r.code == 0, r
    return r.json()["manifest"]


@pytest.fixture(scope="module")
def tfl(tmp_path_factory, cli, samples):
    base = tmp_path_factory.mktemp("tfl")
    made = {}
    calib = ["--calib", samples / "digits_calib.npz"]
    for src in ("digits_cnn.pt", "digits_cnn.pt2", "digits_keras.keras"):
        for precision in ("fp32", "fp16", "int8", "int8-dynamic"):
            out = base / f"{src}-{precision}"
            made[(src, precision)] = (out, convert(cli, samples / src, out, "--precision", precision,
                                                   "--data", samples / "digits_test.npz",
                                                   *(calib if precision == "int8" else [])))
    return made


@pytest.mark.parametrize("src", ["digits_cnn.pt", "digits_cnn.pt2", "digits_keras.keras"])
def test_tflite_precisions_validate(tfl, cli, samples, src):
    sizes = {}
    for precision in ("fp32", "fp16", "int8", "int8-dynamic"):
        out, m = tfl[(src, precision)]
        art = next(a for a in m["artifacts"] if a["role"] == "model")
        assert art["file"] == "model.tflite" and art["runner"] == "litert"
        sizes[precision] = art["bytes"]
        parity = m["checks"][1]
        assert parity["ok"] and parity["label"].startswith("model.tflite (litert)")
        if precision == "fp32":
            assert parity["outputs"][0]["max_abs"] <= 1e-4
        r = cli("validate", out, "--data", samples / "digits_test.npz", "--runs", "10", "--json",
                *(["--max-accuracy-drop", "0.5"] if precision == "int8" else []))
        assert r.code == 0, r
        rep = r.json()
        assert rep["measured_on"]["runtime"] == "litert"
        assert rep["accuracy"]["drop_points"] <= (0.5 if precision.startswith("int8") else 0.0 + 1e-9)
    assert sizes["int8"] <= 0.35 * sizes["fp32"]
    assert sizes["fp16"] < 0.6 * sizes["fp32"]


def test_layouts_recorded_and_handled(tfl, samples):
    _, m = tfl[("digits_cnn.pt", "fp32")]
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    assert "onnx2tf" in art["converter"]
    assert art["runner_options"]["permutations"]["x"] == [0, 2, 3, 1]  # NCHW source, NHWC artifact
    from edgeconv.runners.litert import signature_io

    ins, _ = signature_io(tfl[("digits_cnn.pt", "fp32")][0] / "model.tflite")
    assert ins[0]["shape"] == [1, 8, 8, 1]
    _, mk = tfl[("digits_keras.keras", "fp32")]
    artk = next(a for a in mk["artifacts"] if a["role"] == "model")
    assert "from the Keras" in artk["converter"] and artk["runner_options"]["permutations"]["x"] is None


def test_io_layout_nhwc_feeds_the_artifacts_layout(tfl, cli, samples, tmp_path):
    import numpy as np

    out, _ = tfl[("digits_cnn.pt", "int8")]
    with np.load(samples / "digits_test.npz") as z:
        np.savez(tmp_path / "nhwc.npz", x=z["x"].transpose(0, 2, 3, 1), y=z["y"])
    src = cli("validate", out, "--data", samples / "digits_test.npz", "--runs", "5", "--json").json()
    r = cli("validate", out, "--io-layout", "nhwc", "--data", tmp_path / "nhwc.npz", "--runs", "5", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["io_layout"] == "nhwc" and rep["parity"]["ok"]
    assert rep["accuracy"]["artifact"]["top1"] == src["accuracy"]["artifact"]["top1"]
    # NCHW data given as NHWC is refused with both shapes
    bad = cli("validate", out, "--io-layout", "nhwc", "--data", samples / "digits_test.npz")
    assert bad.code == 2 and "expects Nx8x8x1" in bad.stderr


def test_int8_io_dtypes(cli, samples, tmp_path):
    for io in ("int8", "uint8"):
        m = convert(cli, samples / "digits_cnn.pt", tmp_path / io, "--precision", "int8", "--calib", samples / "digits_calib.npz",
                    "--io-dtype", io, "--data", samples / "digits_test.npz")
        art = next(a for a in m["artifacts"] if a["role"] == "model")
        assert set(art["tensor_dtypes"].values()) == {io}
        acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
        assert acc["drop_points"] <= 0.5
    r = cli("convert", samples / "digits_cnn.pt", "--target", "tflite", "--precision", "fp32", "--io-dtype", "int8",
            "-o", tmp_path / "x")
    assert r.code == 2 and "needs --precision int8" in r.stderr


def test_int8_needs_calib_and_mismatch_is_exit_2(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "tflite", "--precision", "int8", "-o", tmp_path / "x")
    assert r.code == 2 and "--calib" in r.stderr
    np.savez(tmp_path / "c.npz", x=np.zeros((5, 3, 8, 8), np.float32))
    r = cli("convert", samples / "digits_cnn.pt", "--target", "tflite", "--precision", "int8", "--calib", tmp_path / "c.npz",
            "-o", tmp_path / "x")
    assert r.code == 2 and "shape 5x3x8x8" in r.stderr and "expects Nx1x8x8" in r.stderr


def test_runner_resizes_batch(tfl, samples):
    from edgeconv.runners import open_runner

    out, m = tfl[("digits_cnn.pt", "fp32")]
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    x = np.load(samples / "digits_test.npz")["x"][:5]
    with open_runner("litert", out / "model.tflite", options=art["runner_options"]) as r:
        one = np.concatenate([r.infer({"x": x[i : i + 1]})[0] for i in range(5)])
        five = r.infer({"x": x})[0]
    np.testing.assert_allclose(five, one, atol=1e-5)


def test_unconvertible_op_is_exit_4_naming_it(cli, tmp_path):
    """An ONNX op onnx2tf has no converter for: exit 4, the op named, the log kept, not a 300-line dump."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])
    node = helper.make_node("LpPool", ["x"], ["h"], name="the_lppool", kernel_shape=[2, 2], strides=[2, 2], p=2)
    add = helper.make_node("Relu", ["h"], ["y"], name="relu")
    g = helper.make_graph([node, add], "g", [x], [y])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    src = tmp_path / "hm.onnx"
    onnx.save(model, src)
    r = cli("convert", src, "--target", "tflite", "-o", tmp_path / "out")
    if r.code == 0:
        pytest.fail("onnx2tf converted LpPool; pick another op it has no converter for (see onnx2tf/ops)")
    assert r.code == 4, r
    assert not (tmp_path / "out").exists()
    log = tmp_path / "out.failed-build" / "onnx2tf.log"
    assert log.exists() and log.stat().st_size > 0
    assert len(r.stderr.splitlines()) < 40
    assert "LpPool (the_lppool)" in r.stderr


def _sin_model(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])
    g = helper.make_graph([helper.make_node("Sin", ["x"], ["y"], name="the_sin")], "g", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)


def test_int8_with_an_op_left_in_float_is_refused(cli, tmp_path):
    """TFLiteConverter keeps SIN (no int8 kernel) in float even under TFLITE_BUILTINS_INT8; an "int8" bundle
    like that would be a silent downgrade: exit 4 naming the op, no bundle. int8-dynamic is the way out."""
    _sin_model(tmp_path / "sin.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).uniform(-1, 1, (8, 1, 4, 4)).astype(np.float32))
    for io in ("float", "int8"):
        r = cli("convert", tmp_path / "sin.onnx", "--target", "tflite", "--precision", "int8", "--io-dtype", io,
                "--calib", tmp_path / "calib.npz", "-o", tmp_path / f"out-{io}")
        assert r.code == 4, r
        assert "1 op(s) stayed in float: SIN" in r.stderr and "int8-dynamic" in r.stderr
        assert not (tmp_path / f"out-{io}").exists()
    r = cli("convert", tmp_path / "sin.onnx", "--target", "tflite", "--precision", "int8", "--allow-float-ops",
            "--calib", tmp_path / "calib.npz", "-o", tmp_path / "allowed")
    assert r.code == 0, r
    assert "left in float (no int8 kernel): SIN" in " ".join(r.stdout.split())
    art = json.loads((tmp_path / "allowed" / "manifest.json").read_text())["artifacts"]
    assert [a["float_ops"] for a in art if a["role"] == "model"] == [["SIN (PartitionedCall:0)"]]


def test_torch_gelu_becomes_tflite_gelu(cli, tmp_path):
    """At the exporters' default opset 18 GELU is spelt with Erf, which TFLite has no builtin for; TFLite targets
    export PyTorch at opset 20, where GELU stays one op and onnx2tf maps it to TFLite's GELU (fp32 and int8)."""
    import torch

    from edgeconv.targets.tflite import tflite_graph

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 6 * 6, 4)).eval()
    src = tmp_path / "gelu.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 8, 8),)), str(src))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).uniform(-1, 1, (16, 3, 8, 8)).astype(np.float32))
    for precision, extra in (("fp32", []), ("int8", ["--calib", tmp_path / "calib.npz"])):
        m = convert(cli, src, tmp_path / precision, "--precision", precision, *extra)
        assert m["export"]["opset"] == 20 and any("TFLite's GELU" in n for n in m["export"]["notes"])
        assert "GELU" in [op["op"] for op in tflite_graph(tmp_path / precision / "model.tflite")[0]]
        assert all(c["ok"] for c in m["checks"])


def test_child_reports_a_tflite_converter_failure_apart_from_onnx2tf(tmp_path):
    """The child's contract: onnx2tf worked but TFLiteConverter failed → exit TFLITE_FAILED and the message in
    the error file (the parent turns it into exit 4 with that message, not an onnx2tf log)."""
    from edgeconv.targets.tflite_job import TFLITE_FAILED

    _sin_model(tmp_path / "sin.onnx")
    # 2 inputs for 1
    np.savez(tmp_path / "calib.npz", x=np.zeros((2, 1, 1, 4, 4), np.float32), z=np.zeros((2, 1, 1, 4, 4), np.float32))
    job = {"onnx2tf_args": ["-i", str(tmp_path / "sin.onnx"), "-o", str(tmp_path / "sm"), "-osd", "-nuo", "-v", "error"],
           "saved_model": str(tmp_path / "sm"), "precision": "int8", "io_dtype": "float",
           "calibration": str(tmp_path / "calib.npz"), "output": str(tmp_path / "m.tflite"), "error": str(tmp_path / "err.txt")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    r = subprocess.run([sys.executable, "-m", "edgeconv.targets.tflite_job", str(tmp_path / "job.json")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == TFLITE_FAILED, r.stderr[-2000:]
    assert (tmp_path / "err.txt").read_text().startswith("TFLiteConverter failed for int8:")
    assert (tmp_path / "sm" / "saved_model.pb").exists() and not (tmp_path / "m.tflite").exists()


NETBLOCK = """
import socket, os
_log = os.environ["EDGECONV_TEST_NETLOG"]
def _refuse(self, address, *a):
    with open(_log, "a") as f:
        f.write(repr(address) + "\\n")
    raise OSError("network disabled by the test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
"""


def test_rgb_model_converts_without_network(tmp_path):
    """An RGB 224x224 model, fp32 and int8, with every socket connect refused in this process and its
    subprocesses (onnx2tf would fetch a sample file for RGB inputs): both convert, and no connect is tried."""
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    src = tmp_path / "rgb.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(src), dynamo=False, input_names=["image"])
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.uniform(0, 1, (8, 3, 224, 224)).astype(np.float32))
    block = tmp_path / "netblock"
    block.mkdir()
    (block / "sitecustomize.py").write_text(NETBLOCK)
    netlog = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": str(block), "EDGECONV_TEST_NETLOG": str(netlog)}
    for precision, extra in (("fp32", []), ("int8", ["--calib", str(tmp_path / "calib.npz")])):
        r = subprocess.run([sys.executable, "-m", "edgeconv", "convert", str(src), "--target", "tflite", "--precision", precision,
                            "-o", str(tmp_path / precision), *extra],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert (tmp_path / precision / "model.tflite").exists()
    assert not netlog.exists(), netlog.read_text()
    # the blocker works: a connect from a process with it installed is recorded
    probe = subprocess.run([sys.executable, "-c",
                            "import socket\ntry:\n socket.create_connection(('127.0.0.1', 9), 1)\nexcept OSError:\n pass"],
                           env=env, timeout=60)
    assert probe.returncode == 0 and netlog.exists()
