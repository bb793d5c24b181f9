"""Memory per phase: edgeconv's figures against an independent measurement of a bare script doing the same phases.

edgeconv reports, for every validate run, the peak resident memory of each phase (runtime import, model load, first
inference, steady state), resetting the kernel's high-water mark between phases (core/memory.py). The reference here
never resets anything: a bare script (numpy and the runtime only) runs in a fresh process up to phase k (k = 1..4),
the phases in the runner's order with the same data resident (the input read first, the bundle's reference.npz read
after the load: the runner's parity data), and reports its own VmHWM at exit, checked against `/usr/bin/time -v`'s
"Maximum resident set size" where that tool exists; process k's peak is the peak of phases 1..k, which is phase k's as
long as the phases' peaks do not fall (the result records the edgeconv side's running maximum next to each phase, so a
falling phase shows).

edgeconv's side is the bundle's own device runner (`python BUNDLE/edgeconv_runner.pyz BUNDLE --threads 2 --json`): the
same core code `edgeconv validate` runs (execute + memory), with the same small baseline as the bare script (numpy and
the runner, no CLI), so each phase's absolute peak compares directly; `edgeconv validate` itself is recorded too, its
phases above its own larger baseline (the RSS before the runtime's import) against the bare script's above its own.

Cases: the MobileNetV2-sized model on ONNX Runtime (the Keras model's ONNX bundle) and on LiteRT (the PyTorch model's
fp32 .tflite bundle), 2 threads; each process 3 times (the median). Budget: every phase within 10%. With `--board`, the
same on the aarch64 qemu board (`make arm-board`): edgeconv through `validate --remote` (the device runner there), the
bare script over the same SSH.

On the board every run is emulated, so it gets one repeat and a short steady state on both sides (10 runs, >= 0.5 s).

    flock /tmp/edgeconv-heavy.lock .venv/bin/python bench/memory_vs_bare.py [--board | --board-only]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, ROOT, median, mobilenet_onnx, timed_json, write_result  # noqa: E402
from stable_vs_references import litert_feed, tflite_fp32  # noqa: E402
from validate_vs_bare import reference_feed  # noqa: E402

THREADS = 2
TOLERANCE = 0.10
REPEATS = 3
# on the board every run is emulated (qemu-user, ~100x slower): one repeat, and a short steady state on both sides
BOARD_REPEATS, BOARD_RUNS = 1, ["--runs", "10", "--warmup", "2", "--min-seconds", "0.5", "--warmup-seconds", "0"]
PHASES = ("runtime_import", "model_load", "first_inference", "steady_state")

# Phases 1..UPTO of a bare run, then this process's VmHWM (its peak RSS since it started: never reset) and its RSS just
# before the runtime's import. The same phases in the same order as edgeconv's runner: the input file read first; the
# runtime imported; the model loaded; the bundle's reference.npz read into memory (the runner's parity data: it reads
# it between the load and the first inference) and one inference; steady state: 10 warm-up runs, then runs for 1 s
# (validate's defaults).
BARE = """
import json, sys, time
import numpy as np
runtime, model, feed, ref, threads, upto = sys.argv[1:5] + [int(sys.argv[5]), int(sys.argv[6])]
warmup, seconds = (int(sys.argv[7]), float(sys.argv[8])) if len(sys.argv) > 8 else (10, 1.0)
def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) / 1024.0 for l in f if l.startswith(key + ":"))
with np.load(feed) as z:
    x = {k: z[k] for k in z.files}
base = status_mb("VmRSS")
if runtime == "onnxruntime":
    import onnxruntime as ort
else:
    from ai_edge_litert.interpreter import Interpreter
if upto >= 2:
    if runtime == "onnxruntime":
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        run = lambda: sess.run(names, x)
    else:
        it = Interpreter(model_path=model, num_threads=threads)
        it.allocate_tensors()
        index = it.get_input_details()[0]["index"]
        def run():
            it.set_tensor(index, x["x"])
            it.invoke()
if upto >= 3:
    with np.load(ref) as z:
        reference = {k: z[k] for k in z.files}
    run()
if upto >= 4:
    for _ in range(warmup):
        run()
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        run()
print(json.dumps({"baseline_mb": base, "vmhwm_mb": status_mb("VmHWM"), "upto": upto}))
"""


def feeds(copy: Path, runtime: str, dest: Path) -> None:
    """The input the bare script feeds: the bundle's first reference item (LiteRT: in the artifact's own layout)."""
    if runtime == "litert":
        litert_feed(copy, dest)
    else:
        reference_feed(copy, dest)


def bare_once(cmd: list[str]) -> dict:
    """The bare script under /usr/bin/time -v (when present): its VmHWM and time's maximum resident set size."""
    timer = shutil.which("time", path="/usr/bin")
    full = [timer, "-v", *cmd] if timer else cmd
    r = subprocess.run(full, capture_output=True, text=True, timeout=600, check=True)
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    doc["time_v_max_rss_mb"] = int(m.group(1)) / 1024.0 if m else None
    return doc


def edgeconv_phases(report: dict) -> dict:
    """Each phase's peak (MB), the running maximum up to it, and the RSS before the runtime's import (the baseline)."""
    phases = {p["phase"]: p for p in report["memory"]["phases"]}
    out, running = {}, 0.0
    for name in PHASES:
        running = max(running, phases[name]["peak_mb"])
        out[name] = {"peak_mb": phases[name]["peak_mb"], "running_max_mb": running, "peak_by": phases[name]["peak_by"]}
    return {"phases": out, "baseline_mb": phases["runtime_import"]["rss_before_mb"], "method": report["memory"]["method"]}


def compare(ours: list[dict], bare: dict[int, list[dict]]) -> dict:
    """Per phase: edgeconv's peak (median of runs) against the bare process's VmHWM (median), absolute and above each
    side's baseline; ok when the absolute figures agree within TOLERANCE."""
    rows = {}
    base_ours = median([o["baseline_mb"] for o in ours])
    for k, name in enumerate(PHASES, start=1):
        mine = median([o["phases"][name]["peak_mb"] for o in ours])
        ref = median([b["vmhwm_mb"] for b in bare[k]])
        base_ref = median([b["baseline_mb"] for b in bare[k]])
        time_v = [b["time_v_max_rss_mb"] for b in bare[k] if b["time_v_max_rss_mb"] is not None]
        rows[name] = {"edgeconv_peak_mb": mine, "edgeconv_running_max_mb": median([o["phases"][name]["running_max_mb"]
                                                                                  for o in ours]),
                      "bare_vmhwm_mb": ref, "bare_time_v_max_rss_mb": median(time_v) if time_v else None,
                      "ratio": mine / ref, "edgeconv_above_baseline_mb": mine - base_ours,
                      "bare_above_baseline_mb": ref - base_ref, "ok": abs(mine / ref - 1) <= TOLERANCE,
                      "ok_above_baseline": abs((mine - base_ours) / (ref - base_ref) - 1) <= TOLERANCE}
    return {"phases": rows, "edgeconv_baseline_mb": base_ours,
            "bare_baseline_mb": median([b["baseline_mb"] for b in bare[1]]), "ok": all(r["ok"] for r in rows.values()),
            "ok_above_baseline": all(r["ok_above_baseline"] for r in rows.values())}


@contextlib.contextmanager
def staged(bundle_dir: Path, runtime: str):
    """A copy of the bundle in a temporary folder (reports land there), the bare script's input file, the model file."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        copy = Path(tmp) / bundle_dir.name
        shutil.copytree(bundle_dir, copy)
        feed = Path(tmp) / "feed.npz"
        feeds(copy, runtime, feed)
        yield Path(tmp), copy, feed, copy / ("model.tflite" if runtime == "litert" else "model.onnx")


def host_case(runtime: str, bundle_dir: Path) -> dict:
    with staged(bundle_dir, runtime) as (tmp, copy, feed, model):
        runner = [sys.executable, str(copy / "edgeconv_runner.pyz"), str(copy), "--threads", str(THREADS), "--json"]
        validate = [*EDGECONV, "validate", str(copy), "--threads", str(THREADS), "--report", str(tmp / "v.json"), "--json"]
        ours, cli, bare = [], [], {k: [] for k in range(1, 5)}
        for i in range(REPEATS):  # interleaved: the runner, the bare processes, validate, order turning each repeat
            ours.append(edgeconv_phases(timed_json(runner)[1]))
            for k in (range(1, 5) if i % 2 == 0 else range(4, 0, -1)):
                bare[k].append(bare_once([sys.executable, "-c", BARE, runtime, str(model), str(feed),
                                          str(copy / "reference.npz"), str(THREADS), str(k)]))
            cli.append(edgeconv_phases(timed_json(validate)[1]))
    return {"runtime": runtime, "bundle": bundle_dir.name, "where": "host", "device_runner": compare(ours, bare),
            "validate_cli": compare(cli, bare), "runs": {"device_runner": ours, "validate_cli": cli, "bare": bare}}


def board_case(runtime: str, bundle_dir: Path, board: dict) -> dict:
    """The same on the aarch64 board: edgeconv through `validate --remote` (the device runner there), the bare script
    over the same SSH with the board's own python3 (its VmHWM: qemu-user's process, as for the runner)."""
    from board_ssh import remote_python, upload  # noqa: PLC0415 - only with --board

    with staged(bundle_dir, runtime) as (tmp, copy, feed, model):
        rdir = upload(board, [model, feed, copy / "reference.npz"])
        validate = [*EDGECONV, "validate", str(copy), "--threads", str(THREADS), *board["args"], *BOARD_RUNS,
                    "--report", str(tmp / "v.json"), "--json"]
        ours, bare = [], {k: [] for k in range(1, 5)}
        for i in range(BOARD_REPEATS):
            doc = timed_json(validate)[1]
            ours.append(edgeconv_phases(doc["devices"][0]["report"]))
            for k in (range(1, 5) if i % 2 == 0 else range(4, 0, -1)):
                out = remote_python(board, BARE, [runtime, f"{rdir}/{model.name}", f"{rdir}/feed.npz", f"{rdir}/reference.npz",
                                                  str(THREADS), str(k), "2", "0.5"])
                bare[k].append({**json.loads(out.strip().splitlines()[-1]), "time_v_max_rss_mb": None})
    return {"runtime": runtime, "bundle": bundle_dir.name, "where": "aarch64 board (qemu-user)",
            "steady_state": "10 runs after 2 warm-up runs, >= 0.5 s, on both sides",
            "device_runner": compare(ours, bare), "runs": {"device_runner": ours, "bare": bare}}


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--board", action="store_true", help="also on the aarch64 qemu board (make arm-board)")
    ap.add_argument("--board-only", action="store_true", help="only on the board (results in memory_vs_bare_board.json)")
    args = ap.parse_args()
    bundles = {"onnxruntime": mobilenet_onnx(), "litert": tflite_fp32()}
    cases = [] if args.board_only else [host_case(rt, b) for rt, b in bundles.items()]
    result = {"method": f"per runtime, {REPEATS} repeats interleaved: the bundle's device runner (`python "
                        f"BUNDLE/edgeconv_runner.pyz BUNDLE --threads {THREADS} --json`, each phase's VmHWM after a "
                        "clear_refs reset) and `edgeconv validate` vs a bare script (numpy + the runtime) in a fresh process "
                        "per prefix of the phases, its own VmHWM at exit (never reset; /usr/bin/time -v's maximum RSS "
                        "beside it); medians; ok when each phase's absolute peak is within 10% (the device runner's; "
                        "validate's larger CLI baseline makes its figures comparable above the baseline only)",
              "tolerance": TOLERANCE, "cases": cases}
    if args.board or args.board_only:
        from board_ssh import start_board  # noqa: PLC0415 - only with --board

        board = start_board(ROOT)
        result["board"] = {"record": {k: board["record"].get(k) for k in ("facts", "started")},
                           "cases": [board_case(rt, b, board) for rt, b in bundles.items()]}
    result["ok"] = all(c["device_runner"]["ok"] for c in cases + (result.get("board") or {}).get("cases", []))
    write_result("memory_vs_bare_board" if args.board_only else "memory_vs_bare", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
