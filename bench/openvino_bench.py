"""OpenVINO on the MobileNetV2-sized model: validate's p50 against `benchmark_app`'s median (same IR, hint,
threads and precision, interleaved), and NNCF int8 p50 against the fp32 IR (f32 hint), interleaved.

Budgets: validate within 10% of benchmark_app; int8 at least 1.5x faster than fp32.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bundle, mobilenet, write_result  # noqa: E402

THREADS = 2


def ir_bundle(precision: str) -> Path:
    # Random weights, so random calibration (flagged in the manifest): this measures speed, not accuracy.
    extra = ["--calib", "random", "--calib-count", "50"] if precision == "int8" else []
    return bundle(mobilenet(".keras"), f"mobilenetv2-openvino-{precision}", "--target", "openvino",
                  "--precision", precision, *extra)


def validate_p50(runner, feed, runs: int) -> float:
    from edgeconv.stats import summarize_latency, time_runner

    return summarize_latency(time_runner(runner, feed, warmup=5, runs=runs))["p50_ms"]


def benchmark_app_median(xml: Path, iterations: int) -> float:
    exe = shutil.which("benchmark_app", path=str(Path(sys.executable).parent))
    # benchmark_app allows -nthreads only with -hint none; one stream is what the LATENCY hint gives
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-api", "sync", "-nthreads", str(THREADS),
           "-infer_precision", "f32", "-niter", str(iterations)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True, env=os.environ.copy())
    latency = r.stdout[r.stdout.index("Latency:"):]
    return float(re.search(r"Median:\s+([0-9.]+) ms", latency).group(1))


def main(rounds: int = 4, runs: int = 60) -> dict:
    from edgeconv.bundle import Bundle
    from edgeconv.runners import open_runner
    from edgeconv.runners.openvino import isa_note

    fp32, int8 = ir_bundle("fp32"), ir_bundle("int8")
    feed = {k: v[:1] for k, v in Bundle.open(fp32).reference()[0].items()}
    opts = {"device": "CPU", "inference_precision": "f32", "performance_hint": "LATENCY"}
    r32 = open_runner("openvino", fp32 / "model.xml", threads=THREADS, options=opts)
    r8 = open_runner("openvino", int8 / "model.xml", threads=THREADS, options=opts)
    # benchmark_app runs in a subprocess with the same environment, including any ISA cap the runner set
    v32, v8, app = [], [], []
    for _ in range(rounds):
        v32.append(validate_p50(r32, feed, runs))
        app.append(benchmark_app_median(fp32 / "model.xml", runs))
        v8.append(validate_p50(r8, feed, runs))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    ratio_app = med(v32) / med(app)
    speedup = med(v32) / med(v8)
    result = {
        "method": f"{rounds} interleaved rounds of {runs} runs each: edgeconv's runner (validate's timing), benchmark_app "
                  f"(-hint none -nstreams 1 -api sync -nthreads {THREADS} -infer_precision f32), and the int8 IR; "
                  "medians of per-round p50s",
        "threads": THREADS, "runner_info": r32.info(), "isa_note": isa_note,
        "validate_fp32_p50_ms": med(v32), "benchmark_app_fp32_median_ms": med(app), "validate_vs_benchmark_app": ratio_app,
        "int8_p50_ms": med(v8), "int8_speedup_vs_fp32": speedup,
        "rounds": {"validate_fp32": v32, "benchmark_app_fp32": app, "validate_int8": v8},
        "ok_validate_within_10pct": abs(ratio_app - 1) <= 0.10, "ok_int8_1_5x": speedup >= 1.5,
    }
    result["ok"] = result["ok_validate_within_10pct"] and result["ok_int8_1_5x"]
    write_result("openvino_bench", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
