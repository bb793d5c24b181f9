"""The core that host and device share (edgeconv/core): Python 3.6 + numpy only, shipped in every bundle as one
deterministic file (edgeconv_runner.pyz), and the same report fields wherever a request runs — in-process here, or by
the bundle's runner as a separate process."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

from edgeconv.bundle import DEVICE_RUNNER_NAME, Bundle, device_runner_bytes, write_device_runner

CORE = ROOT / "edgeconv" / "core"
RUNTIMES = {"onnxruntime", "tensorrt", "cuda", "tensorflow", "ai_edge_litert", "tflite_runtime", "ncnn",  # lazily, in functions
            "onnxruntime_qnn", "rknnlite"}
NOT_IN_36 = {"dataclasses", "contextvars", "graphlib", "zoneinfo", "tomllib", "importlib.resources", "importlib.metadata"}
NOT_IN_36_NAMES = {"nullcontext", "perf_counter_ns", "time_ns", "isascii", "capture_output", "breakpoint"}


def report_keys(d, prefix=""):
    """Every key path of a report (its schema); a list of dicts contributes the keys of all its elements."""
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= report_keys(v, prefix + k + ".")
        elif isinstance(v, list) and v and all(isinstance(e, dict) for e in v):
            for e in v:
                out |= report_keys(e, prefix + k + "[].")
    return out


def _imports(tree):
    """``(module, top_level)`` for every absolute import in a module (relative ones stay inside the core)."""
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, id(node) in top
        elif isinstance(node, ast.ImportFrom) and not node.level:
            yield node.module, id(node) in top


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_is_python36_and_numpy_only(path):
    source = path.read_text()
    tree = ast.parse(source, feature_version=(3, 6))
    future = [a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__" for a in n.names]
    assert "annotations" not in future, f"{path.name}: from __future__ import annotations is Python 3.7+"
    for module, top_level in _imports(tree):
        root = module.split(".")[0]
        allowed = root in sys.stdlib_module_names or root == "numpy" or (not top_level and root in RUNTIMES)
        assert allowed, f"{path.name} imports {module}" + ("" if not top_level else " at module level")
        assert module not in NOT_IN_36 and root not in NOT_IN_36, f"{path.name}: {module} is not in Python 3.6"
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {n.arg for n in ast.walk(tree) if isinstance(n, ast.keyword)}
    assert not names & NOT_IN_36_NAMES, f"{path.name} uses {names & NOT_IN_36_NAMES} (Python 3.7+)"


def test_the_runner_is_one_deterministic_file_that_says_its_protocol(tmp_path, monkeypatch):
    from edgeconv.core.request import PROTOCOL_VERSION

    first = device_runner_bytes()
    assert device_runner_bytes() == first
    # the same sources with other timestamps give the same bytes
    copy = tmp_path / "core"
    shutil.copytree(CORE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr("edgeconv.bundle.DEVICE_RUNNER_SOURCE", copy)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    names = [write_device_runner(tmp_path / d) for d in ("a", "b")]
    assert names == [DEVICE_RUNNER_NAME] * 2
    digests = {hashlib.sha256((tmp_path / d / DEVICE_RUNNER_NAME).read_bytes()).hexdigest() for d in ("a", "b")}
    assert digests == {hashlib.sha256(first).hexdigest()}
    with zipfile.ZipFile(tmp_path / "a" / DEVICE_RUNNER_NAME) as z:
        entries = z.namelist()
        assert entries == sorted(entries) and "__main__.py" in entries and "edgeconv/core/cli.py" in entries
        assert not [n for n in entries if "__pycache__" in n or not n.endswith(".py")]
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    r = subprocess.run([sys.executable, str(tmp_path / "a" / DEVICE_RUNNER_NAME), "--protocol"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.strip() == str(PROTOCOL_VERSION) == "4", r.stderr


def test_a_request_of_an_unknown_protocol_is_refused(bundles, tmp_path):
    """A request made by a newer edgeconv: refused (exit 2) with a typed error, before any of its fields is read."""
    bundle = bundles("pt")
    (tmp_path / "request.json").write_text(json.dumps({"protocol": 5, "runs": 2, "a_field_of_protocol_5": True}))
    r = subprocess.run([sys.executable, str(bundle / DEVICE_RUNNER_NAME), str(bundle), "--request",
                        str(tmp_path / "request.json"), "--json"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2, r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["type"] == "UnknownProtocol" and err["exit_code"] == 2 and "protocol 5" in err["message"]
    from edgeconv.core.request import complete_request
    from edgeconv.errors import BadInput, UnknownProtocol

    with pytest.raises(UnknownProtocol) as exc:
        complete_request({"protocol": 5})
    assert isinstance(exc.value, BadInput) and exc.value.exit_code == 2
    assert complete_request({"protocol": 1})["protocol"] == 1 and complete_request({})["protocol"] == 4


def test_one_error_per_kind():
    """The host's errors are the core's classes, not twins: what the device runner raises is what edgeconv catches."""
    from edgeconv import errors
    from edgeconv.core import errors as core

    for name in ("EdgeconvError", "BadInput", "ArtifactRefused", "MissingDependency", "NoLayerProfiler", "UnknownProtocol"):
        assert getattr(errors, name) is getattr(core, name), name
    assert [errors.CheckFailed.exit_code, errors.BadInput.exit_code, errors.MissingDependency.exit_code,
            errors.ConversionFailed.exit_code, errors.InternalError.exit_code] == [1, 2, 3, 4, 5]
    e = errors.BadInput("m", hint="h", details="d")
    assert (str(e), e.hint, e.details) == ("m", "h", "d")


def _runner(bundle, *args):
    r = subprocess.run([sys.executable, str(bundle / DEVICE_RUNNER_NAME), str(bundle), *map(str, args), "--json"],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_host_and_runner_reports_have_the_same_keys(cli, bundles, samples, tmp_path):
    """validate and profile: the report made in-process here and the one the bundle's runner writes as a separate
    process have the same fields, recursively."""
    from edgeconv.core.artifact import artifact_to_run
    from edgeconv.core.request import complete_request
    from edgeconv.core.sweep import execute_profile
    from edgeconv.profile import device_profile_report
    from edgeconv.runners import open_runner

    bundle = bundles("pt")
    r = cli("validate", bundle, "--data", samples / "digits_test.npz", "--runs", "5", "--report", tmp_path / "v.json")
    assert r.code == 0, r
    here = json.loads((tmp_path / "v.json").read_text())
    there = _runner(bundle, "--data", samples / "digits_test.npz", "--runs", "5")
    assert report_keys(here) == report_keys(there)
    assert there["measured_on"]["kind"] == "device" and here["measured_on"]["kind"] == "host"
    # profile: the finished reports, and what was measured before the knee was worked out
    r = cli("profile", bundle, "--batch-sizes", "1,2", "--runs", "5", "--report", tmp_path / "p.json")
    assert r.code == 0, r
    raw_there = _runner(bundle, "--batch-sizes", "1,2", "--runs", "5")
    assert report_keys(json.loads((tmp_path / "p.json").read_text())) == report_keys(
        device_profile_report(Bundle.open(bundle), raw_there))
    art, options = artifact_to_run(Bundle.open(bundle).manifest)
    request = complete_request({"command": "profile", "batch_sizes": [1, 2], "runs": 5})
    with open_runner(art["runner"], bundle / art["file"], options=options) as runner:
        raw_here = execute_profile(request, str(bundle), Bundle.open(bundle).manifest, art, runner)
    assert report_keys(raw_here) == report_keys(raw_there)
