"""One latency method for every runtime: warm-up, N timed runs of the runner's own inference time, a true median
and throughput from it. The code lives once, in ``edgeconv.core.stats`` (the device runner's); the host uses it from
there (docs/architecture.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgeconv.core.stats import LATENCY_METHOD, cold_start, summarize_latency, time_backend

__all__ = ["LATENCY_METHOD", "cold_start", "summarize_latency", "time_runner"]

if TYPE_CHECKING:
    from edgeconv.runners.base import Runner


def time_runner(runner: Runner, feed: dict[str, np.ndarray], *, warmup: int, runs: int) -> list[float]:
    """Per-inference seconds as the runner measured them around the runtime call (inputs prepared once)."""
    return time_backend(runner, feed, warmup, runs)
