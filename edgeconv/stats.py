"""One latency method for every runtime: warm-up, N timed runs of the runner's own inference time."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from edgeconv.device.edgeconv_runner import summarize_latency  # one method on the host and on the device

__all__ = ["cold_start", "summarize_latency", "time_runner"]

if TYPE_CHECKING:
    from edgeconv.runners.base import Runner


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
