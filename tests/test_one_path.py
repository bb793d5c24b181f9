"""One path for here and there (issue 14): a validate request runs in-process here and, with --remote, the same
request runs on the device (the bundle's device runner, or edgeconv where the device has it) through the same
``execute``: the same report schema, the same numbers, the same verdict and exit code. Against the real local sshd
of test_remote.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile

import numpy as np
import pytest

from test_core import report_keys
from test_remote import device_python, remote, sshd  # noqa: F401  (fixtures)

from edgeconv.bundle import DEVICE_RUNNER_NAME


def _validate(cli, bundle, *args):
    return cli("validate", bundle, *map(str, args))


def _on_device(cli, sshd, python, bundle, *args):  # noqa: F811
    return cli("validate", bundle, "--remote", remote(sshd), *sshd["opts"], "--remote-python", python, *map(str, args))


HOST_ONLY = {"report_file"}
DEVICE_ONLY = {"device", "device.target", "device.uname", "device.ran", "device.power_mode", "cross_architecture"}
SAME_WHERE_MEASURED = ("parity", "checks", "calibration", "io_layout", "artifact", "runner", "target", "precision")


def _schema(rep):
    skip = ("measured_on.", "request.", "cross_architecture.")
    return {k for k in report_keys(rep) if k not in HOST_ONLY | DEVICE_ONLY and not k.startswith(skip)}


@pytest.mark.parametrize("where", ["device runner", "edgeconv"])
def test_same_request_same_report_here_and_on_the_device(cli, bundles, sshd, device_python, samples, where):  # noqa: F811
    """--atol NAME=VALUE, --max-accuracy-drop and --max-latency-ms travel in the request: the device reports the
    same parity numbers, accuracy and budgets in the same fields as this host."""
    python = device_python if where == "device runner" else sys.executable
    opts = ["--data", samples / "digits_test.npz", "--atol", "output=1e-3", "--max-accuracy-drop", "0", "--max-latency-ms",
            "10000", "--allow-unstable", "--runs", "5", "--json"]  # a shared machine: stability is test_latency_stability's
    local = _validate(cli, bundles("pt"), *opts)
    assert local.code == 0, local
    r = _on_device(cli, sshd, python, bundles("pt"), *opts)
    assert r.code == 0, r
    dev = r.json()["devices"][0]["report"]
    here = local.json()
    assert dev["device"]["ran"] == where and dev["measured_on"]["kind"] == "device" and here["measured_on"]["kind"] == "host"
    assert _schema(dev) == _schema(here)
    for key in SAME_WHERE_MEASURED:
        assert dev[key] == here[key], key
    assert dev["parity"]["outputs"][0]["atol"] == 1e-3
    assert dev["accuracy"] == here["accuracy"]  # same file named the same, same source accuracy, same drop
    assert [b["name"] for b in dev["budgets"]] == ["max_accuracy_drop_points", "max_latency_ms_p50"]
    assert dev["budgets"][0] == here["budgets"][0]  # accuracy: the same numbers; latency: measured where it ran
    assert [(b["limit"], b["ok"]) for b in dev["budgets"]] == [(b["limit"], b["ok"]) for b in here["budgets"]]
    for k in ("runs", "warmup", "max_latency_ms", "max_accuracy_drop", "atol", "runner_options", "io_layout"):
        assert dev["request"][k] == here["request"][k], k


@pytest.mark.parametrize("where", ["device runner", "edgeconv"])
def test_a_budget_missed_on_the_device_exits_1(cli, bundles, sshd, device_python, where):  # noqa: F811
    python = device_python if where == "device runner" else sys.executable
    r = _on_device(cli, sshd, python, bundles("pt"), "--runs", "5", "--max-latency-ms", "0.000001", "--json")
    assert r.code == 1, r
    dev = r.json()["devices"][0]
    budgets = [dict((k, b[k]) for k in ("name", "limit", "value", "ok")) for b in dev["report"]["budgets"]]
    assert not dev["ok"] and budgets == [
        {"name": "max_latency_ms_p50", "limit": 1e-06, "value": dev["report"]["latency"]["p50_ms"], "ok": False}]
    table = _on_device(cli, sshd, python, bundles("pt"), "--runs", "5", "--max-latency-ms", "0.000001")
    assert table.code == 1
    assert remote(sshd) in table.stdout and "max_latency_ms_p50" in table.stdout  # the device named, the budget too


def test_checks_fail_on_the_device_as_here(cli, bundles, sshd, device_python, samples):  # noqa: F811
    """An impossible --atol and an impossible accuracy budget fail on the device exactly as here (exit 1, same rows)."""
    for opts in (["--atol", "output=1e-12"], ["--data", samples / "digits_test.npz", "--max-accuracy-drop", "-1"]):
        local = _validate(cli, bundles("pt"), *opts, "--runs", "3", "--json")
        r = _on_device(cli, sshd, device_python, bundles("pt"), *opts, "--runs", "3", "--json")
        assert local.code == 1 and r.code == 1, (local, r)
        dev, here = r.json()["devices"][0]["report"], local.json()
        assert dev["parity"] == here["parity"] and dev["budgets"] == here["budgets"] and dev["ok"] is here["ok"] is False


def test_io_layout_on_the_device_as_here(cli, sshd, device_python, samples, tmp_path):  # noqa: F811
    out = tmp_path / "tfl"
    assert cli("convert", samples / "digits_cnn.pt", "--target", "tflite", "-o", out, "--data", samples / "digits_test.npz",
               "--json").code == 0
    with np.load(samples / "digits_test.npz") as z:
        np.savez(tmp_path / "nhwc.npz", x=z["x"].transpose(0, 2, 3, 1), y=z["y"])
    opts = ["--io-layout", "nhwc", "--data", tmp_path / "nhwc.npz", "--runs", "3", "--json"]
    local = _validate(cli, out, *opts)
    r = _on_device(cli, sshd, device_python, out, *opts)
    assert local.code == 0 and r.code == 0, (local, r)
    dev, here = r.json()["devices"][0]["report"], local.json()
    assert dev["io_layout"] == here["io_layout"] == "nhwc"
    assert dev["parity"] == here["parity"] and dev["accuracy"] == here["accuracy"]
    assert dev["measured_on"]["io_layout"] == "artifact"
    # nhwc on an artifact that takes the source layout: refused on both sides, in the same words (exit 2)
    onnx_bundle = tmp_path / "onnx"
    assert cli("convert", samples / "digits_cnn.pt", "-o", onnx_bundle, "--json").code == 0
    local = _validate(cli, onnx_bundle, "--io-layout", "nhwc")
    assert local.code == 2 and "--io-layout nhwc applies to TFLite artifacts" in local.stderr


def test_runtime_options_are_refused_or_honoured_never_dropped(cli, bundles, sshd, device_python, samples, tmp_path):  # noqa: F811
    # --device on an ONNX Runtime artifact: refused here and on the device alike (exit 2)
    local = _validate(cli, bundles("pt"), "--device", "CPU")
    assert local.code == 2 and "--device does not apply to the onnxruntime runner" in local.stderr
    for python in (device_python, sys.executable):
        r = _on_device(cli, sshd, python, bundles("pt"), "--device", "CPU")
        assert r.code == 2, r
        assert "--device does not apply to the onnxruntime runner" in r.stdout + r.stderr
    # --device on OpenVINO: edgeconv on the device honours it as here; the bare device runner has no OpenVINO (exit 3)
    ov = tmp_path / "ov"
    assert cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "-o", ov, "--json").code == 0
    local = _validate(cli, ov, "--device", "CPU", "--runs", "3", "--json")
    r = _on_device(cli, sshd, sys.executable, ov, "--device", "CPU", "--runs", "3", "--json")
    assert local.code == 0 and r.code == 0, (local, r)
    dev, here = r.json()["devices"][0]["report"], local.json()
    assert dev["measured_on"]["device"] == here["measured_on"]["device"] == "CPU"
    assert dev["request"]["runner_options"] == here["request"]["runner_options"] == {"device": "CPU"}
    assert dev["parity"] == here["parity"]
    r = _on_device(cli, sshd, device_python, ov, "--device", "CPU")
    assert r.code == 3 and "no backend for 'openvino'" in r.stdout + r.stderr


def test_source_accuracy_is_measured_here_and_sent(cli, bundles, sshd, device_python, samples, tmp_path):  # noqa: F811
    """--source runs on the host (the device has no torch); its accuracy travels in the request."""
    with np.load(samples / "digits_test.npz") as z:
        np.savez(tmp_path / "other.npz", x=z["x"][:100], y=z["y"][:100])
    r = _on_device(cli, sshd, device_python, bundles("pt"), "--data", tmp_path / "other.npz", "--max-accuracy-drop", "1")
    assert r.code == 2 and "--source" in r.stdout + r.stderr  # the device says the source accuracy is unknown
    r = _on_device(cli, sshd, device_python, bundles("pt"), "--data", tmp_path / "other.npz", "--max-accuracy-drop", "1",
                   "--source", samples / "digits_cnn.pt", "--runs", "3", "--json")
    assert r.code == 0, r
    acc = r.json()["devices"][0]["report"]["accuracy"]
    assert "validate time" in acc["source"]["measured_with"] and acc["drop_points"] == pytest.approx(0.0, abs=1e-9)


def test_unlabelled_npy_data_here_and_on_the_device(cli, bundles, sshd, device_python, samples, tmp_path):  # noqa: F811
    """A .npy of inputs (no labels): every item runs, outputs must be finite, and with --source the top-1 agreement
    with the source (its predictions computed here, sent in the request) — the same numbers here and there."""
    with np.load(samples / "digits_test.npz") as z:
        np.save(tmp_path / "x.npy", z["x"][:80])
    args = ["--data", tmp_path / "x.npy", "--source", samples / "digits_cnn.pt", "--runs", "3", "--json"]
    here = cli("validate", bundles("pt"), *map(str, args))
    assert here.code == 0, here
    there = _on_device(cli, sshd, device_python, bundles("pt"), *args)
    assert there.code == 0, there
    for rep in (here.json(), there.json()["devices"][0]["report"]):
        o = rep["outputs_on_data"]
        assert o["finite"] and o["data"]["count"] == 80 and o["top1_agreement"] == 1.0 and "accuracy" not in rep
        assert {"name": "finite outputs", "ok": True} in rep["checks"]
    r = cli("validate", bundles("pt"), "--data", tmp_path / "x.npy", "--max-accuracy-drop", "1")
    assert r.code == 2 and "needs labels" in r.stderr


def _with_runner(bundle, tmp_path, code: str):
    """A copy of ``bundle`` whose device runner (its ``__main__.py``) starts a run with ``code``, once it has said its
    protocol (its manifest sha256 updated)."""
    copy = tmp_path / "crashing"
    shutil.copytree(bundle, copy)
    runner = copy / DEVICE_RUNNER_NAME
    with zipfile.ZipFile(runner) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    crash = "import sys\nif '--protocol' not in sys.argv:\n" + "".join("    " + line + "\n" for line in code.splitlines())
    entries["__main__.py"] = crash.encode() + entries["__main__.py"]
    with open(runner, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w") as z:
            for name, data in entries.items():
                z.writestr(name, data)
    m = json.loads((copy / "manifest.json").read_text())
    for art in m["artifacts"]:
        if art["file"] == DEVICE_RUNNER_NAME:
            art["sha256"] = hashlib.sha256(runner.read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(m))
    return copy


@pytest.mark.parametrize(("code", "exit_code", "said"), [
    ("import sys\nsys.stderr.write('boom: the NPU driver went away\\n')\nsys.exit(7)", 7, "boom: the NPU driver went away"),
    ("import os, signal, sys\nsys.stderr.write('about to segfault\\n')\nsys.stderr.flush()\nos.kill(os.getpid(), signal.SIGSEGV)",
     139, "signal 11"),
])
def test_a_crashing_device_runner_gives_its_own_code_and_stderr(cli, bundles, sshd, device_python, tmp_path, code, exit_code,  # noqa: F811
                                                                said):
    crashing = _with_runner(bundles("pt"), tmp_path, code)
    r = _on_device(cli, sshd, device_python, crashing, "--runs", "3")
    assert r.code == exit_code, r
    out = r.stdout + r.stderr
    assert "device runner crashed" in out and said in out
    r = _on_device(cli, sshd, device_python, crashing, "--runs", "3", "--json")
    dev = r.json()["devices"][0]
    assert dev["exit_code"] == exit_code and dev["details"]


def test_missing_runtime_names_the_package_and_the_install_line(cli, bundles, sshd, device_python, tmp_path):  # noqa: F811
    """A device Python without onnxruntime (hidden behind a module that fails to import): exit 3, with the fix."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "onnxruntime.py").write_text("raise ImportError(\"No module named 'onnxruntime'\")\n")
    wrapper = tmp_path / "python-without-ort"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={hide} exec {device_python} \"$@\"\n")
    wrapper.chmod(0o755)
    r = _on_device(cli, sshd, str(wrapper), bundles("pt"), "--runs", "3")
    assert r.code == 3, r
    out = " ".join((r.stdout + r.stderr).split())
    assert "onnxruntime is not installed: pip install onnxruntime" in out


def test_a_request_file_runs_here_as_it_runs_there(cli, bundles, samples, tmp_path):
    shutil.copy(samples / "digits_test.npz", tmp_path / "data.npz")
    (tmp_path / "request.json").write_text(json.dumps({
        "schema": 1, "command": "validate", "runs": 4, "warmup": 1, "max_latency_ms": 1e-6,
        "data": {"file": "data.npz", "path": "digits_test.npz"}}))
    r = cli("validate", bundles("pt"), "--request", tmp_path / "request.json", "--report", tmp_path / "r.json", "--json")
    assert r.code == 1, r
    rep = r.json()
    assert rep["latency"]["runs"] >= 4 and rep["accuracy"]["data"]["path"] == "digits_test.npz"
    assert rep["budgets"][0]["name"] == "max_latency_ms_p50" and not rep["budgets"][0]["ok"]
    (tmp_path / "bad.json").write_text(json.dumps({"schema": 1, "runs": 4, "max_latency": 1}))
    r = cli("validate", bundles("pt"), "--request", tmp_path / "bad.json")
    assert r.code == 2 and "max_latency" in r.stderr
    assert cli("validate", bundles("pt"), "--request", tmp_path / "request.json", "--runs", "9").code == 2


def test_one_parity_and_one_latency_implementation():
    """The host's parity, statistics, data loader and sweep are the core's own functions (the device runner's), not twins."""
    from edgeconv import data, parity, profile, stats
    from edgeconv.core import data as core_data
    from edgeconv.core import parity as core_parity
    from edgeconv.core import stats as core_stats
    from edgeconv.core import sweep as core_sweep
    from edgeconv.core.backends.onnxruntime import OnnxRuntimeBackend
    from edgeconv.runners.onnxruntime import OnnxRuntimeRunner

    assert parity.compare_outputs is core_parity.compare_outputs and stats.summarize_latency is core_stats.summarize_latency
    assert data.read_arrays is core_data.read_arrays and profile.default_batch_sizes is core_sweep.default_batch_sizes
    assert OnnxRuntimeRunner.accepted_options == OnnxRuntimeBackend.accepted_options
    # the cosine rule: a zero output against a non-zero reference scores 0, two zeros agree
    tol = core_parity.tolerance_of({"min_cosine": 0.99})
    rep = core_parity.compare_outputs("t", ["a", "b"], [np.ones((1, 3)), np.zeros((1, 3))], [np.zeros((1, 3)), np.zeros((1, 3))],
                                      tol)
    assert [o["cosine"] for o in rep["outputs"]] == [0.0, 1.0] and not rep["ok"]
    s = core_stats.summarize_latency([0.001, 0.002, 0.003, 0.100], batch=2)
    assert s["p50_ms"] == pytest.approx(2.5) and s["throughput_items_s"] == pytest.approx(2 / 0.0025)
