"""`edgeconv sweep`'s warm workers (the local pool's default): the same statuses and facts as a fresh process per
command, in less time; a command past --timeout is a "timeout" cell and the next cell runs; a worker killed in the
middle of a command is a "crashed" cell with its signal and the next cell gets a new worker; Ctrl-C leaves nothing
running. The model is the digits CNN's ONNX graph (no PyTorch export per cell)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep import FAST_VALIDATE, ROOT, _cmdline, _results, _statuses

pytestmark = pytest.mark.slow
HANG = ["--min-seconds", "600"]  # a real validate that runs far past the tests' --timeout


@pytest.fixture(scope="module")
def models(tmp_path_factory, bundles):
    d = tmp_path_factory.mktemp("sweep-worker-models")
    paths = {name: d / name / "model.onnx" for name in ("digits", "twin", "broken")}
    for p in paths.values():
        p.parent.mkdir()
    shutil.copy(bundles("pt2") / "model.onnx", paths["digits"])
    shutil.copy(bundles("pt2") / "model.onnx", paths["twin"])
    paths["broken"].write_bytes(b"this is not an ONNX model\n")
    return paths


def _plan(path: Path, models: list[tuple[str, Path, list[str]]], samples: Path) -> Path:
    body = 'targets = ["onnx"]\n'
    for name, p, validate_args in models:
        body += (f"[[models]]\nname = \"{name}\"\npath = \"{p}\"\ndata = \"{samples / 'digits_test.npz'}\"\n"
                 f"validate_args = {json.dumps(validate_args)}\n")
    path.write_text(body)
    return path


def _start(plan: Path, run: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeconv", "sweep", "--plan", str(plan), "-o", str(run), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _worker_of(sweep: int) -> int:
    """The warm worker the sweep ``sweep`` started (its child running edgeconv.serve)."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and "edgeconv.serve" in _cmdline(int(p.name)):
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == sweep:
                    return int(p.name)
            except (OSError, IndexError, ValueError):
                continue
    raise AssertionError(f"sweep {sweep} has no warm worker")


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


def _facts(cell: dict) -> dict:
    """What a cell's record says regardless of how its commands ran (not its times, pids, latency or memory)."""
    keep = ("status", "exit_code", "stage", "precision", "profile", "size_bytes", "parity", "accuracy", "measured_on")
    facts = {k: cell.get(k) for k in keep}
    facts["parity"] = {"ok": (cell.get("parity") or {}).get("ok")}
    facts["stages"] = {name: s["exit_code"] for name, s in cell["stages"].items()}
    facts["reason"] = cell["reason"]
    return facts


@pytest.mark.alone
def test_warm_workers_give_the_same_cells_as_fresh_processes_faster(models, samples, tmp_path):
    plan = _plan(tmp_path / "plan.toml", [(n, models[n], FAST_VALIDATE) for n in ("digits", "twin", "broken")], samples)
    seconds, runs = {}, {}
    for mode in ("--fresh-processes", "--warm-workers"):
        runs[mode] = tmp_path / mode.strip("-")
        started = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "edgeconv", "sweep", "--plan", str(plan), "-o", str(runs[mode]), mode],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        seconds[mode] = time.perf_counter() - started
        assert r.returncode == 0, r.stdout + r.stderr
    fresh, warm = (_results(runs[m])["cells"] for m in ("--fresh-processes", "--warm-workers"))
    assert _statuses(runs["--warm-workers"]) == {"digits|onnx|default": "passed", "twin|onnx|default": "passed",
                                                 "broken|onnx|default": "refused"}
    assert [_facts(c) for c in warm] == [_facts(c) for c in fresh]
    assert next(c for c in warm if c["model"] == "digits")["accuracy"]["top1"] > 0.9
    # one worker ran the five commands (one job thread); each fresh command had a process of its own
    assert {s["pid"] for c in warm for s in c["stages"].values()} == {warm[0]["stages"]["convert"]["pid"]}
    assert [s["worker_command"] for c in warm for s in c["stages"].values()] == [1, 2, 3, 4, 5]
    assert len({s["pid"] for c in fresh for s in c["stages"].values()}) == 5
    for name in ("convert", "validate"):  # the same log a user's shell gets, up to its figures
        assert (runs["--warm-workers"] / "cells" / "digits_onnx_default" / f"{name}.log").exists()
    broken = [(r / "cells" / "broken_onnx_default" / "convert.log").read_text() for r in runs.values()]
    assert broken[0] == broken[1] and "error:" in broken[0]
    print(f"3 cells, 5 commands: fresh processes {seconds['--fresh-processes']:.1f} s, warm workers "
          f"{seconds['--warm-workers']:.1f} s")
    assert seconds["--warm-workers"] < seconds["--fresh-processes"]


@pytest.mark.alone
def test_a_timeout_and_a_killed_worker_cost_one_cell_each(models, samples, tmp_path):
    plan = _plan(tmp_path / "plan.toml", [("hang", models["digits"], HANG), ("killed", models["twin"], HANG),
                                          ("digits", models["digits"], FAST_VALIDATE)], samples)
    sweep = _start(plan, tmp_path / "run", "--timeout", 20, "--jobs", 1)
    _wait_for(tmp_path / "run" / "cells" / "killed_onnx_default" / "validate.log", sweep)
    victim = _worker_of(sweep.pid)
    os.kill(victim, signal.SIGKILL)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, out + err
    cells = {c["model"]: c for c in _results(tmp_path / "run")["cells"]}
    assert {m: c["status"] for m, c in cells.items()} == {"hang": "timeout", "killed": "crashed", "digits": "passed"}
    assert cells["hang"]["stage"] == "validate" and cells["hang"]["reason"] == "validate ran past 20 s"
    killed = cells["killed"]
    assert killed["stage"] == "validate" and killed["exit_code"] == -signal.SIGKILL, killed
    assert killed["reason"] == "validate died of SIGKILL" and killed["stages"]["validate"]["pid"] == victim
    log = (tmp_path / "run" / "cells" / "killed_onnx_default" / "validate.log").read_text()
    assert log.rstrip().endswith("the worker process running this command died (signal SIGKILL)")
    pids = {c["stages"][s]["pid"] for c in cells.values() for s in c["stages"]}
    assert len(pids) == 3  # a new worker after the timeout and after the kill
    assert cells["digits"]["stages"]["convert"]["worker_command"] == 1 and cells["digits"]["parity"]["ok"]
    assert not [p for p in pids if _alive(p)]  # the timed-out worker was killed, the last one ended with the sweep


@pytest.mark.alone
def test_workers_are_recycled_and_ctrl_c_leaves_none_running(models, samples, tmp_path):
    plan = _plan(tmp_path / "plan.toml", [("digits", models["digits"], FAST_VALIDATE), ("hang", models["twin"], HANG)],
                 samples)
    sweep = _start(plan, tmp_path / "run", "--recycle", 2)
    _wait_for(tmp_path / "run" / "cells" / "hang_onnx_default" / "validate.log", sweep)
    worker = _worker_of(sweep.pid)
    first = _results(tmp_path / "run")["cells"][0]  # digits: done before hang began
    assert first["status"] == "passed" and [s["worker_command"] for s in first["stages"].values()] == [1, 2]
    recycled = first["stages"]["convert"]["pid"]
    assert recycled != worker and not _alive(recycled)  # two commands: that worker ended, hang has a new one
    sweep.send_signal(signal.SIGINT)
    out, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, out + err
    deadline = time.time() + 5
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)  # killed with the command it ran
    assert [c["cell_id"] for c in _results(tmp_path / "run")["cells"]] == ["digits|onnx|default"]  # still whole


@pytest.mark.alone
def test_a_native_crash_in_a_warm_worker_runs_the_command_again_fresh(models, samples, tmp_path):
    """A worker dying of SIGSEGV in a command (native libraries earlier commands loaded can do that to a later one)
    does not cost the cell: the command runs again in a fresh process, and the record keeps the crash and its log."""
    plan = _plan(tmp_path / "plan.toml", [("segv", models["digits"], [*FAST_VALIDATE, "--min-seconds", "4"])], samples)
    sweep = _start(plan, tmp_path / "run", "--jobs", 1)
    cell_dir = tmp_path / "run" / "cells" / "segv_onnx_default"
    _wait_for(cell_dir / "validate.log", sweep)
    victim = _worker_of(sweep.pid)
    os.kill(victim, signal.SIGSEGV)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, out + err
    (cell,) = _results(tmp_path / "run")["cells"]
    assert cell["status"] == "passed" and cell["parity"]["ok"], cell
    stage = cell["stages"]["validate"]
    assert stage["warm_crash"] == "SIGSEGV" and stage["warm_crash_pid"] == victim and stage["pid"] != victim
    crash_log = Path(stage["warm_crash_log"])
    assert crash_log.parent == cell_dir and "died (signal SIGSEGV)" in crash_log.read_text()
