"""Toolchain environments (issue 28): a missing or unverifiable toolchain is exit 3 with the one command that installs
it; `toolchain list --json`; run_job's failures are conversion failures naming what happened."""

from __future__ import annotations

import json
import shutil

import pytest

from edgeconv import toolchains
from edgeconv.errors import ConversionFailed, MissingDependency


@pytest.fixture
def empty_root(tmp_path, monkeypatch):
    root = tmp_path / "toolchains"
    monkeypatch.setenv(toolchains.ENV_VAR, str(root))
    return root


def test_missing_toolchain_is_exit_3_with_the_install_command(cli, samples, tmp_path, empty_root):
    out = tmp_path / "o"
    r = cli("convert", samples / "digits_cnn.pt", "--target", "rk3588", "--precision", "fp16", "-o", out)
    assert r.code == 3, r
    assert "edgeconv toolchain install rknn" in r.stderr and str(empty_root / "rknn") in r.stderr
    assert not out.exists()


def _fake_install(root, **overrides):
    """A toolchain folder whose toolchain.json is right except for ``overrides`` (the real python of this test run)."""
    import sys

    path = root / "rknn"
    (path / "bin").mkdir(parents=True)
    python = path / "bin" / "python"
    python.symlink_to(sys.executable)
    rec = {"name": "rknn", "python": str(python), "python_version": "3.11", "versions": {"rknn-toolkit2": "2.5.0"},
           "installed_at": "now", "size_bytes": 1, "pins_hash": toolchains.pins_hash("rknn"), **overrides}
    (path / "toolchain.json").write_text(json.dumps(rec))
    return path


@pytest.mark.parametrize("damage, why", [
    ({"pins_hash": "0" * 64}, "other pins"),
    ({"python": "/nonexistent/bin/python"}, "python is missing"),
    (None, "unreadable"),
])
def test_a_damaged_toolchain_json_is_not_trusted(cli, empty_root, damage, why):
    path = _fake_install(empty_root, **(damage or {}))
    if damage is None:
        (path / "toolchain.json").write_text('{"name": "rknn", "python": ')  # cut short
    with pytest.raises(MissingDependency) as exc:
        toolchains.require("rknn")
    assert "edgeconv toolchain install rknn" in str(exc.value) and why in str(exc.value)
    r = cli("toolchain", "list", "--json")
    assert r.code == 0, r
    row = next(t for t in r.json()["toolchains"] if t["name"] == "rknn")
    assert row["installed"] is False and why in row["reason"]


def test_a_verified_toolchain_json_is_trusted(empty_root):
    _fake_install(empty_root)
    tc = toolchains.require("rknn")
    assert tc.versions == {"rknn-toolkit2": "2.5.0"} and tc.record()["name"] == "rknn"


def test_toolchain_list_json_names_the_installed_rknn(cli):
    r = cli("toolchain", "list", "--json")
    assert r.code == 0, r
    rows = {t["name"]: t for t in r.json()["toolchains"]}
    assert {"rknn", "qnn"} <= set(rows)
    rknn = rows["rknn"]
    assert rknn["installed"], f"the rknn toolchain is not installed ({rknn['reason']}): run `make toolchains`"
    assert rknn["versions"]["rknn-toolkit2"] == "2.5.0" and rknn["versions"]["numpy"] == "1.26.4"
    assert rknn["size_bytes"] > 100e6 and rknn["path"].endswith("rknn")


def test_install_refuses_an_unknown_toolchain(cli, empty_root):
    r = cli("toolchain", "install", "nosuch")
    assert r.code == 2 and "unknown toolchain" in r.stderr and not empty_root.exists()


def test_run_job_failures_are_conversion_failures(tmp_path):
    """The real rknn job: a request it cannot do comes back as its error; a timeout kills it and says so."""
    tc = toolchains.require("rknn")
    with pytest.raises(ConversionFailed) as exc:
        toolchains.run_job(tc, "rknn_job.py", {"onnx": str(tmp_path / "missing.onnx"), "rknn": str(tmp_path / "m.rknn"),
                                               "platform": "rk3588", "precision": "fp16"}, workdir=tmp_path, timeout=300)
    assert "load_onnx" in exc.value.message and "rknn-job.log" in exc.value.message
    assert json.loads((tmp_path / "rknn-request.json").read_text())["parent_pid"] > 0
    with pytest.raises(ConversionFailed) as exc:
        toolchains.run_job(tc, "rknn_job.py", {"onnx": "x"}, workdir=tmp_path / "t", timeout=0.2)
    assert "timeout" in exc.value.message
    shutil.rmtree(tmp_path / "t")


def test_targets_says_a_profile_needs_its_toolchain(cli, empty_root):
    """`edgeconv targets` does not call a toolchain target convertible here until its environment verifies."""
    rows = {r["name"]: r for r in cli("targets", "--json").json()["targets"]}
    for name, tc in (("rk3588", "rknn"), ("qnn-v73", "qnn"), ("imx500", "imx500")):
        assert rows[name]["available"] is False and rows[name]["toolchain"]["missing"], rows[name]
        assert f"edgeconv toolchain install {tc}" in rows[name]["install"]
    assert rows["onnxruntime-cpu"]["available"] and rows["onnxruntime-cpu"]["toolchain"] is None
