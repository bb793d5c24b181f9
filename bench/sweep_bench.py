"""`edgeconv sweep` on the zoo's fast subset: the local pool (`--jobs 2`) against a two-node Ray cluster started on
127.0.0.1 (one CPU each: the same two cores), the same cells, alternating order, each run from an empty run directory
and export cache. Checks that both give the same cell statuses and records the wall times and their ratio (issue:
Ray ≤ 1.2× the local pool).

    python bench/sweep_bench.py [--rounds 1]

Writes bench/results/sweep_bench.json (with the CPU)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_result
from zoo import BY_NAME, FAST, corpus_key
from zoo import build_model as zoo_build

# the cells of tests/test_zoo_fast.py: onnx for the whole subset, openvino and jetson for four, tflite for three
OPENVINO_JETSON = ["user_dscnn_kws_sd", "hf_bert", "onnx_ir3_cnn", "keras_normalization_cnn"]
TFLITE = ["user_dscnn_kws_sd", "onnx_ir3_mlp", "keras_normalization_cnn"]
VALIDATE = ["--runs", "3", "--warmup", "1", "--min-seconds", "0.2", "--warmup-seconds", "0.05"]


def _targets(name: str) -> list[str]:
    return ["onnx"] + (["openvino", "jetson"] if name in OPENVINO_JETSON else []) + (["tflite"] if name in TFLITE else [])


def write_plan(path: Path) -> int:
    """The fast subset as a sweep plan; the number of cells."""
    key, body, cells = corpus_key(), "", 0
    for name in FAST:
        folder, built, _ = zoo_build(BY_NAME[name], key, rebuild=False)
        if built is None:
            continue
        body += f"[[models]]\nname = {json.dumps(name)}\npath = {json.dumps(str(folder / built.model))}\n"
        body += f"sample = {json.dumps(str(folder / built.sample))}\n"
        if built.data:
            body += f"data = {json.dumps(str(folder / built.data))}\n"
        body += f"convert_args = {json.dumps(list(built.args))}\nvalidate_args = {json.dumps(VALIDATE)}\n"
        body += f"targets = {json.dumps(_targets(name))}\n"
        cells += len(_targets(name))
    path.write_text(body)
    return cells


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> None:
    subprocess.run([str(Path(sys.executable).parent / "ray"), *args], check=True, capture_output=True, timeout=120, env=env)


def start_cluster(env: dict) -> str:
    port = _port()
    _ray("stop", "--force", env=env)
    _ray("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats", env=env)
    _ray("start", f"--address=127.0.0.1:{port}", "--num-cpus=1", env=env)
    time.sleep(3)  # the second node registers
    return f"127.0.0.1:{port}"


def one_run(plan: Path, how: list[str], env: dict) -> dict:
    run = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgeconv", "sweep", "--plan", str(plan), "-o", str(run / "run"), *how],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=7200)
    wall = time.perf_counter() - started
    if r.returncode != 0:
        raise SystemExit(f"sweep {' '.join(how)} failed: {r.stderr[-2000:]}")
    cells = json.loads((run / "run" / "results.json").read_text())["cells"]
    shutil.rmtree(run, ignore_errors=True)
    return {"wall_s": round(wall, 1), "statuses": {c["cell_id"]: c["status"] for c in cells}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    work = Path(tempfile.mkdtemp(prefix="sweep-plan-"))
    cells = write_plan(work / "plan.toml")
    address = start_cluster(env)
    runs = []
    try:
        for k in range(args.rounds):  # alternate which goes first
            order = [("local", ["--jobs", "2"]), ("ray", ["--ray", address])]
            for name, how in order if k % 2 == 0 else order[::-1]:
                runs.append({"executor": name, **one_run(work / "plan.toml", how, env)})
                print(f"{name}: {runs[-1]['wall_s']} s", file=sys.stderr)
    finally:
        _ray("stop", "--force", env=env)
    local = [r for r in runs if r["executor"] == "local"]
    ray = [r for r in runs if r["executor"] == "ray"]
    same = all(r["statuses"] == local[0]["statuses"] for r in runs)
    ratio = sum(r["wall_s"] for r in ray) / sum(r["wall_s"] for r in local)
    write_result("sweep_bench", {"cells": cells, "runs": runs, "same_statuses": same, "ray_over_local": round(ratio, 3),
                                 "budget": "ray_over_local <= 1.2 and the same statuses",
                                 "ok": same and ratio <= 1.2})


if __name__ == "__main__":
    main()
