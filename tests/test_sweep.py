"""`edgeconv sweep`: many models × targets through the commands themselves, on this machine (`--jobs 2`) and on a
real two-node Ray cluster started on 127.0.0.1; resumable; device cells that never overlap on one board (the loopback
sshd); a node lost mid-sweep; `--baseline` as a CI gate. The models are the digits CNN's ONNX graph (fast cells: no
PyTorch export per cell), a twin of it, a slower variant (the same function with extra identity MatMuls) and a file
that is not a model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_remote import _free_port, remote, sshd  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
FAST_VALIDATE = ["--runs", "20", "--min-seconds", "0.3", "--warmup-seconds", "0.05"]
pytestmark = pytest.mark.slow


def _sweep(*args, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeconv", "sweep", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _slow_variant(src: Path, dest: Path, extra: int = 400) -> None:
    """The same function, slower: ``extra`` MatMuls by the identity after the logits (ONNX Runtime keeps them)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    out = m.graph.output[0]
    width = out.type.tensor_type.shape.dim[-1].dim_value
    m.graph.initializer.append(numpy_helper.from_array(np.eye(width, dtype=np.float32), "eye"))
    prev = out.name
    last = [n for n in m.graph.node if out.name in n.output][0]
    last.output[list(last.output).index(out.name)] = prev = "slow_in"
    for i in range(extra):
        name = out.name if i == extra - 1 else f"slow_{i}"
        m.graph.node.append(helper.make_node("MatMul", [prev, "eye"], [name], name=f"slow_matmul_{i}"))
        prev = name
    onnx.save(m, str(dest))


@pytest.fixture(scope="module")
def models(tmp_path_factory, cli, samples):
    d = tmp_path_factory.mktemp("sweep-models")
    r = cli("convert", samples / "digits_cnn.pt2", "--target", "onnx", "-o", d / "bundle")
    assert r.code == 0, r.stderr
    paths = {}
    for name in ("digits", "twin", "slow", "broken"):
        (d / name).mkdir()
        paths[name] = d / name / "model.onnx"
    shutil.copy(d / "bundle" / "model.onnx", paths["digits"])
    shutil.copy(d / "bundle" / "model.onnx", paths["twin"])
    _slow_variant(d / "bundle" / "model.onnx", paths["slow"])
    paths["broken"].write_bytes(b"this is not an ONNX model\n")
    return paths


def _plan(path: Path, models: dict[str, Path], targets: list[str], samples: Path, devices: str = "") -> Path:
    body = f"targets = {json.dumps(targets)}\n"
    for name, p in models.items():
        body += (f"[[models]]\nname = \"{name}\"\npath = \"{p}\"\ndata = \"{samples / 'digits_test.npz'}\"\n"
                 f"validate_args = {json.dumps(FAST_VALIDATE)}\n")
    path.write_text(body + devices)
    return path


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _statuses(run: Path) -> dict[str, str]:
    cells = _results(run)["cells"]
    ids = [c["cell_id"] for c in cells]
    assert len(ids) == len(set(ids)), ids  # every cell exactly once
    return {c["cell_id"]: c["status"] for c in cells}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, models, samples):
    d = tmp_path_factory.mktemp("sweep-local")
    plan = _plan(d / "plan.toml", {k: models[k] for k in ("digits", "twin", "broken")}, ["onnx", "openvino"], samples)
    started = time.time()
    r = _sweep("--plan", plan, "-o", d / "run", "--jobs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    return {"plan": plan, "run": d / "run", "seconds": time.time() - started, "stdout": r.stdout, "stderr": r.stderr}


def test_local_sweep_writes_results_matrix_and_resumes(local_run):
    st = _statuses(local_run["run"])
    assert st == {"digits|onnx|default": "passed", "digits|openvino|default": "passed", "twin|onnx|default": "passed",
                  "twin|openvino|default": "passed", "broken|onnx|default": "refused",
                  "broken|openvino|default": "refused"}
    cell = next(c for c in _results(local_run["run"])["cells"] if c["cell_id"] == "digits|onnx|default")
    assert cell["parity"]["ok"] and cell["accuracy"]["top1"] > 0.9 and cell["latency"]["p50_ms"] > 0
    assert cell["precision"] == "fp32" and cell["exit_code"] == 0 and cell["key"]
    broken = next(c for c in _results(local_run["run"])["cells"] if c["cell_id"] == "broken|onnx|default")
    assert broken["stage"] == "convert" and broken["exit_code"] == 2 and broken["reason"]
    matrix = (local_run["run"] / "matrix.md").read_text()
    assert "| model | onnx | openvino |" in matrix and "| digits | ✅" in matrix
    assert "broken|onnx|default: refused at convert" in matrix
    assert (local_run["run"] / "results.html").read_text().startswith("<!doctype html>")
    assert not (local_run["run"] / "cells" / "digits_onnx_default" / "bundle").exists()  # reports only by default
    again = _sweep("--plan", local_run["plan"], "-o", local_run["run"], "--jobs", "2")
    assert again.returncode == 0 and "6 already done at the same inputs; running 0" in again.stderr, again.stderr


def test_baseline_reports_exactly_the_changed_cells(local_run, models, samples, tmp_path):
    same = _sweep("--plan", local_run["plan"], "-o", local_run["run"], "--baseline", local_run["run"] / "results.json")
    assert same.returncode == 0 and "0 regression(s)" in same.stdout, same.stdout + same.stderr
    run = tmp_path / "run"
    shutil.copytree(local_run["run"], run)
    # twin now fails to load, digits became slower: their cells rerun (new keys), the others are reused as they are
    shutil.copy(models["broken"], models["twin"].parent / "changed.onnx")
    changed = {"digits": models["slow"], "twin": models["twin"].parent / "changed.onnx", "broken": models["broken"]}
    plan = _plan(tmp_path / "plan.toml", changed, ["onnx", "openvino"], samples)
    r = _sweep("--plan", plan, "-o", run, "--jobs", "2", "--baseline", local_run["run"] / "results.json", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    base = json.loads(r.stdout)["baseline"]
    regressions = {(c["cell_id"], c["kind"]) for c in base["changes"] if c["regression"]}
    assert regressions == {("twin|onnx|default", "status"), ("twin|openvino|default", "status"),
                           ("digits|onnx|default", "latency"), ("digits|openvino|default", "latency")}, base["changes"]


def _device_plan(path: Path, models, samples, sshd) -> Path:  # noqa: F811
    dev = (f"[devices.board]\nremote = \"{remote(sshd)}\"\nremote_python = \"{sys.executable}\"\n"
           f"identity = \"{sshd['dir'] / 'client_key'}\"\n"
           f"ssh_options = [\"UserKnownHostsFile={sshd['dir'] / 'known_hosts'}\", \"StrictHostKeyChecking=yes\"]\n")
    return _plan(path, {k: models[k] for k in ("digits", "twin")}, ["onnx@board"], samples, dev)


def _never_overlap(run: Path) -> None:
    spans = sorted((c["stages"]["validate"]["started"], c["stages"]["validate"]["ended"])
                   for c in _results(run)["cells"] if "validate" in c.get("stages", {}))
    assert len(spans) == 2, _results(run)["cells"]
    assert spans[0][1] <= spans[1][0], spans  # the second device run starts after the first ended


def test_device_cells_never_overlap_with_jobs_2(models, samples, sshd, tmp_path):  # noqa: F811
    plan = _device_plan(tmp_path / "plan.toml", models, samples, sshd)
    r = _sweep("--plan", plan, "-o", tmp_path / "run", "--jobs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert set(_statuses(tmp_path / "run").values()) == {"passed"}
    _never_overlap(tmp_path / "run")


# ---------------------------------------------------------------------------------------------------------------
# a real two-node Ray cluster on 127.0.0.1


def _ray(*args, check=True, env=None):
    return subprocess.run([str(Path(sys.executable).parent / "ray"), *args], capture_output=True, text=True, timeout=120,
                          check=check, env=env)


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="the Ray tests need edgeconv[ray] (the dev extra installs it)")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    port, node_port = _free_port(), _free_port()
    _ray("stop", "--force", check=False, env=env)
    _ray("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
         "--resources", json.dumps({"edgeconv_device_board": 1}), env=env)
    _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", f"--node-manager-port={node_port}", env=env)
    yield {"address": f"127.0.0.1:{port}", "node_port": node_port, "env": env}
    _ray("stop", "--force", check=False, env=env)


def test_device_cells_never_overlap_on_ray(models, samples, sshd, ray_cluster, tmp_path):  # noqa: F811
    plan = _device_plan(tmp_path / "plan.toml", models, samples, sshd)
    r = _sweep("--plan", plan, "-o", tmp_path / "run", "--ray", ray_cluster["address"], env=ray_cluster["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    _never_overlap(tmp_path / "run")


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _second_raylet(node_port: int) -> int:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return next(p for p in pids if "raylet" in _cmdline(p) and f"--node_manager_port={node_port}" in _cmdline(p))


def test_ray_sweep_matches_local_and_survives_a_lost_node(models, samples, ray_cluster, local_run, tmp_path):
    raylet = _second_raylet(ray_cluster["node_port"])
    proc = subprocess.Popen([sys.executable, "-m", "edgeconv", "sweep", "--plan", str(local_run["plan"]), "-o",
                             str(tmp_path / "run"), "--ray", ray_cluster["address"]], cwd=ROOT, env=ray_cluster["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not any("edgeconv convert" in _cmdline(p) for p in _tree(raylet)):
        time.sleep(0.2)
    victims = _tree(raylet)
    assert any("edgeconv convert" in _cmdline(p) for p in victims), "no cell ever ran on the second node"
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert _statuses(tmp_path / "run") == _statuses(local_run["run"])  # every cell once, the same statuses
    nodes = {c["node"] for c in _results(tmp_path / "run")["cells"]}
    assert len(nodes) >= 1 and all("ray node" in n for n in nodes)
