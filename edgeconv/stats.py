"""One latency method for every runtime: warm-up and timed runs of the runner's own inference time, each by count AND
by time, a true median and throughput from it. The code lives once, in ``edgeconv.core.stats`` (the device runner's);
the host uses it from there (docs/architecture.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgeconv.core.stats import LATENCY_METHOD, cold_start, summarize_latency, time_backend

__all__ = ["LATENCY_METHOD", "cold_start", "summarize_latency", "time_runner"]

if TYPE_CHECKING:
    from edgeconv.runners.base import Runner


def time_runner(runner: Runner, feed: dict[str, np.ndarray], *, warmup: int, runs: int, min_seconds: float = 0.0,
                warmup_seconds: float = 0.0) -> list[float]:
    """Per-inference seconds as the runner measured them around the runtime call (inputs prepared once): at least
    ``warmup`` runs and ``warmup_seconds`` of warm-up, then at least ``runs`` runs and ``min_seconds`` of them
    (``edgeconv.core.stats.time_backend``, validate's loop). The times default to 0 for the callers that interleave many
    short blocks (compress, convert's attempts): their rounds, not one block, cover the machine's drift; validate's
    defaults are ``core.stats.DEFAULT_MIN_SECONDS`` and ``DEFAULT_WARMUP_SECONDS``."""
    return time_backend(runner, feed, warmup, runs, min_seconds, warmup_seconds)
