"""`edgeconv compare` on the digits .pt2 (issue 35): is its baseline the source framework's own speed, and is the default
run short enough to use?

1. baseline: compare's torch baseline (``edgeconv.compare.source_baseline``: a clean child process, the core's timing)
   against a bare eager-torch loop a user would write (its own process, ``torch.inference_mode``, warm-up, timed runs
   around the module call), in alternating rounds on the same input; they must agree within 1.5x. Then
   ``compare --targets executorch,onnx,tflite --precisions fp32`` itself: its baseline against the bare loop timed
   right after, and every speed-up = baseline p50 / row p50.
2. the default ``compare samples/digits_cnn.pt2`` (every family, fp32/fp16/int8 without --calib): wall time <= 90 s,
   one ONNX export for the run.
3. an interrupted default compare (SIGINT once rows have finished): exit 130 and the finished rows printed.

    flock /tmp/edgeconv-heavy.lock .venv/bin/python bench/compare_bench.py [--rounds 5] [--skip-default] [--skip-interrupt]

Writes bench/results/compare_bench.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, ROOT, alternating, median, timed_json, write_result  # noqa: E402

MODEL = ROOT / "samples" / "digits_cnn.pt2"
RATIO_LIMIT = 1.5
DEFAULT_LIMIT_S = 90.0

# What a user writes to time the model in eager PyTorch: its own process, the module called on a prepared tensor in
# inference mode, 10 warm-up runs and 0.2 s, then >= RUNS runs and >= 1 s, each timed around the call.
BARE_TORCH = """
import json, sys, time
import numpy as np
import torch
model, feed, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
m = torch.export.load(model).module()
with np.load(feed) as z:
    x = torch.from_numpy(z[z.files[0]])
with torch.inference_mode():
    t_end, n = time.perf_counter() + 0.2, 0
    while n < 10 or time.perf_counter() < t_end:
        m(x)
        n += 1
    times, t_end = [], time.perf_counter() + 1.0
    while len(times) < runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        m(x)
        times.append(time.perf_counter() - t0)
print(json.dumps({"p50_ms": float(np.median(times)) * 1e3, "runs": len(times)}))
"""


def bare_torch(feed_npz: Path, runs: int) -> float:
    out = subprocess.run([sys.executable, "-c", BARE_TORCH, str(MODEL), str(feed_npz), str(runs)], capture_output=True,
                         text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])["p50_ms"]


def baseline_rounds(rounds: int, runs: int, tmp: Path) -> dict:
    from edgeconv.compare import source_baseline
    from edgeconv.frontends import LoadOptions

    x = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
    np.savez(tmp / "feed.npz", x=x)

    def measure(label: str) -> float:
        if label == "bare eager torch":
            return bare_torch(tmp / "feed.npz", runs)
        return source_baseline(MODEL, LoadOptions(), {"x": x}, 1, runs)["p50_ms"]

    got = alternating(measure, ("compare baseline", "bare eager torch"), rounds)
    ours, bare = median([r["compare baseline"] for r in got]), median([r["bare eager torch"] for r in got])
    return {"rounds": got, "compare_baseline_p50_ms": ours, "bare_eager_p50_ms": bare, "ratio": ours / bare,
            "within_limit": 1 / RATIO_LIMIT <= ours / bare <= RATIO_LIMIT}


def compare_three(runs: int, tmp: Path) -> dict:
    """``compare --targets executorch,onnx,tflite --precisions fp32``: its baseline, the bare loop right after, the speed-ups."""
    wall, res = timed_json([*EDGECONV, "compare", str(MODEL), "--targets", "executorch,onnx,tflite", "--precisions", "fp32",
                            "--runs", str(runs), "--json"])
    bare = bare_torch(tmp / "feed.npz", runs)
    base = res["source_baseline"]["p50_ms"]
    rows = [{"target": r["target"], "p50_ms": r.get("p50_ms"), "speedup": r.get("speedup_vs_source")} for r in res["rows"]]
    consistent = all(r["speedup"] and abs(r["speedup"] - base / r["p50_ms"]) < 1e-9 for r in rows if r["p50_ms"])
    return {"wall_s": round(wall, 1), "baseline_p50_ms": base, "bare_eager_p50_ms_after": bare, "ratio": base / bare,
            "within_limit": 1 / RATIO_LIMIT <= base / bare <= RATIO_LIMIT, "how": res["source_baseline"]["how"],
            "rows": rows, "speedups_from_baseline": consistent}


def default_compare(tmp: Path) -> dict:
    wall, res = timed_json([*EDGECONV, "compare", str(MODEL), "--json", "--out-dir", str(tmp / "default")])
    statuses = {f"{r['target']} {r['precision']}": r["status"] + (f": {r['reason']}" if r.get("reason") else "")
                for r in res["rows"]}
    return {"wall_s": round(wall, 1), "within_limit": wall <= DEFAULT_LIMIT_S, "limit_s": DEFAULT_LIMIT_S,
            "export": res["export"], "rows": len(res["rows"]), "measured_rows": sum(1 for r in res["rows"] if r.get("p50_ms")),
            "statuses": statuses}


def interrupted_compare(after_rows: int = 2) -> dict:
    """SIGINT once ``after_rows`` rows have been announced; the exit code and the rows the table printed."""
    proc = subprocess.Popen([*EDGECONV, "compare", str(MODEL), "--wide"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    seen, t0, lines = 0, time.perf_counter(), []
    for line in proc.stderr:
        lines.append(line.rstrip())
        if line.lstrip().startswith("✓") and "/" in line.split()[1]:
            seen += 1
        if seen >= after_rows:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    table = [ln for ln in out.splitlines() if "onnxruntime-cpu" in ln or "litert-cpu" in ln or "intel-cpu" in ln]
    return {"exit": proc.returncode, "signal_after_s": round(time.perf_counter() - t0, 1), "progress_lines": lines[-6:],
            "table_rows": table, "interrupted_line": [ln for ln in out.splitlines() if "interrupted" in ln],
            "ok": proc.returncode == 130 and bool(table)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--skip-default", action="store_true")
    ap.add_argument("--skip-interrupt", action="store_true")
    args = ap.parse_args()
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="edgeconv-compare-bench-") as d:
        tmp = Path(d)
        result["baseline"] = baseline_rounds(args.rounds, args.runs, tmp)
        result["compare_executorch_onnx_tflite"] = compare_three(args.runs, tmp)
        if not args.skip_default:
            result["default_compare"] = default_compare(tmp)
        if not args.skip_interrupt:
            result["interrupted"] = interrupted_compare()
    checks = [result["baseline"]["within_limit"], result["compare_executorch_onnx_tflite"]["within_limit"],
              result["compare_executorch_onnx_tflite"]["speedups_from_baseline"]]
    checks += [result["default_compare"]["within_limit"]] if "default_compare" in result else []
    checks += [result["interrupted"]["ok"]] if "interrupted" in result else []
    result["all_ok"] = all(checks)
    write_result("compare_bench", result)
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
