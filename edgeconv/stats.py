"""One latency method for every runtime: warm-up, N timed runs of the runner's own inference time."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from edgeconv.runners.base import Runner


def summarize_latency(seconds: list[float], batch: int = 1) -> dict[str, float]:
    """p50/p90/p99/mean/std/min/max in milliseconds, throughput in items per second."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "runs": int(ms.size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "throughput_items_s": float(batch * 1e3 / ms.mean()),
    }


def time_runner(runner: Runner, feed: dict[str, np.ndarray], *, warmup: int, runs: int) -> list[float]:
    """Per-inference seconds as the runner measured them around the runtime call (inputs prepared once)."""
    prepared = runner.prepare(feed)
    for _ in range(warmup):
        runner.run_prepared(prepared)
    out = []
    for _ in range(runs):
        runner.run_prepared(prepared)
        out.append(runner.last_inference_s)
    return out


def cold_start(make_runner, feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Load + first inference of a fresh runner, in milliseconds."""
    t0 = time.perf_counter()
    runner = make_runner()
    t1 = time.perf_counter()
    runner.infer(feed)
    t2 = time.perf_counter()
    runner.close()
    return {"load_ms": (t1 - t0) * 1e3, "first_inference_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}
