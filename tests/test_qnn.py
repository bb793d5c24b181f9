"""The qnn target (issue 28) on the real onnxruntime-qnn in its toolchain: the digits sample to QNN int8 (QDQ + the
offline context binary) and fp16, parity and top-1 on QNN's HTP emulator (labelled as such, latency "device only"),
the manifest naming the environment; a node the HTP does not take is refused by name, at convert (exit 4) and in the
runner (exit 1); without the toolchain, exit 3 with the install command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import convert_digits
from edgeconv import toolchains
from test_remote import remote, sshd  # noqa: F401 (the loopback OpenSSH "device" of the remote tests)

if toolchains.inspect("qnn")[0] is None:
    pytest.skip("the qnn toolchain is not installed (edgeconv toolchain install qnn)", allow_module_level=True)

EMULATOR = "host emulation on the QNN HTP emulator, not the device"


@pytest.fixture(scope="module")
def qnn_bundles(cli, tmp_path_factory):
    """int8 on the family's default (v73), fp16 on v79: one conversion each, shared by the tests."""
    base = tmp_path_factory.mktemp("qnn")
    targets = {"int8": "qnn", "fp16": "qnn-v79"}
    return {p: (base / p, convert_digits(cli, base / p, "--target", t, "--precision", p)) for p, t in targets.items()}


def _planted_erf(path: Path) -> Path:
    """Conv → Erf (named "planted") → pool: QNN's HTP backend takes no Erf, in float or in QDQ."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Erf", ["c"], ["e"], name="planted"),
             helper.make_node("GlobalAveragePool", ["e"], ["g"], name="pool"),
             helper.make_node("Flatten", ["g"], ["y"], name="flat")]
    graph = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_digits_to_qnn_validates_on_the_htp_emulator(cli, samples, qnn_bundles, precision):
    out, manifest = qnn_bundles[precision]
    art = next(a for a in manifest["artifacts"] if a["role"] == "model")
    assert art["file"] == "model_ctx.onnx" and art["runner"] == "qnn"
    roles = {a["role"]: a["file"] for a in manifest["artifacts"]}
    assert roles["context-binary"] == "model_ctx_qnn.bin" and (out / "model_ctx_qnn.bin").stat().st_size > 0
    assert ("qdq-onnx" in roles) == (precision == "int8")
    tc = art["toolchain"]
    assert tc["name"] == "qnn" and tc["versions"]["onnxruntime-qnn"] == "2.7.0" and tc["versions"]["onnxruntime"] == "1.32.0"
    qnn = art["qnn"]
    assert qnn["htp_arch"] == (73 if precision == "int8" else 79)
    assert list(qnn["nodes_by_ep"]) == ["QNNExecutionProvider"] and qnn["cpu_ep_nodes"] == []
    assert qnn["emulator_check"]["runs"] >= 1
    if precision == "int8":
        assert art["quantization"]["activations"].startswith("uint8") and art["quantization"]["samples"] == 200
    else:
        assert qnn["provider_options"]["enable_htp_fp16_precision"] == "1" and qnn["provider_options"]["soc_model"] == "69"
    rep = cli("validate", out, "--data", samples / "digits_test.npz", "--runs", "5", "--json")
    assert rep.code == 0, rep
    rep = rep.json()
    mo = rep["measured_on"]
    assert mo["runtime"] == "onnxruntime-qnn" and mo["device"] == "HTP emulator (x86-64)"
    assert mo["kind"].startswith("host emulation") and mo["label"] == EMULATOR + "; latency: device only"
    assert rep["parity"]["ok"] and rep["accuracy"]["artifact"]["top1"] >= 0.9
    # the emulator's timing says nothing about the NPU: a few runs, labelled "device only"
    assert rep["latency"]["device_only"].startswith("device only") and rep["latency"]["runs"] <= 5


def test_a_node_the_htp_does_not_take_is_refused_by_name(cli, tmp_path, samples):
    model = _planted_erf(tmp_path / "erf.onnx")
    r = cli("convert", model, "-t", "qnn", "-p", "int8", "--calib", samples / "digits_calib.npz", "-o", tmp_path / "b")
    assert r.code == 4, r
    assert "planted (Erf)" in (r.stdout + r.stderr) and "CPU EP" in (r.stdout + r.stderr)
    assert not (tmp_path / "b").exists() and (tmp_path / "b.failed-build" / "qnn-job.log").exists()


def test_the_runner_refuses_a_cpu_ep_node_by_name(tmp_path):
    from edgeconv.errors import CheckFailed
    from edgeconv.runners import open_runner

    with pytest.raises(CheckFailed, match=r"planted \(Erf\).*CPU EP") as info:
        open_runner("qnn", _planted_erf(tmp_path / "erf.onnx"))
    assert info.value.exit_code == 1


def test_without_the_toolchain_qnn_is_exit_3_with_the_install_command(cli, tmp_path, monkeypatch, samples):
    monkeypatch.setenv(toolchains.ENV_VAR, str(tmp_path / "none"))
    r = cli("convert", _planted_erf(tmp_path / "erf.onnx"), "-t", "qnn-v75", "-p", "fp16", "-o", tmp_path / "b")
    assert r.code == 3, r
    assert "edgeconv toolchain install qnn" in (r.stdout + r.stderr)


def test_the_bundle_runner_runs_qnn_on_the_htp_over_ssh(cli, qnn_bundles, sshd, tmp_path):  # noqa: F811
    """The device path for real: `validate --remote` with a Python that has onnxruntime-qnn and no edgeconv (the qnn
    toolchain's venv), so the bundle's own edgeconv_runner.pyz runs it there, on QNN's HTP backend (on x86-64 its
    emulator), CPU fallback disabled; its report comes back labelled."""
    out, _ = qnn_bundles["int8"]
    device_tmp = tmp_path / "device-tmp"
    device_tmp.mkdir()
    python = str(toolchains.inspect("qnn")[0].python)
    r = cli("validate", out, "--remote", remote(sshd), *sshd["opts"], "--ssh-option", f"SetEnv=TMPDIR={device_tmp}",
            "--remote-python", python, "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert rep["device"]["ran"] == "device runner" and rep["runner"] == "qnn"
    mo = rep["measured_on"]
    assert mo["runtime"] == "onnxruntime-qnn" and mo["device"] == "HTP emulator (x86-64)" and mo["emulated"]
    assert mo["kind"].startswith("host emulation") and mo["label"].startswith(EMULATOR)
    assert rep["ok"] and rep["parity"]["ok"] and rep["latency"]["device_only"].startswith("device only")


def test_the_bundle_runner_refuses_a_cpu_ep_node_with_a_clean_json_report(qnn_bundles, tmp_path):
    """The same refusal as edgeconv's runner, in the bare device runner: a graph with a node the HTP does not take is
    exit 1 naming it; and stdout stays one JSON document (QNN's library prints on file descriptor 1 at load)."""
    import json
    import shutil
    import subprocess

    out, _ = qnn_bundles["int8"]
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    _planted_erf(bad / "model_ctx.onnx")
    python = str(toolchains.inspect("qnn")[0].python)
    r = subprocess.run([python, str(bad / "edgeconv_runner.pyz"), str(bad), "--runs", "1", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1, r
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "CheckFailed" and "planted (Erf)" in err["message"] and "CPU EP" in err["message"]
