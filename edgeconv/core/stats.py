"""Latency: one method and one throughput definition everywhere (warm-up, N timed runs of the runtime call, a true
median, throughput from it), for the host's runners and the device's backends alike. See docs/architecture.md."""

import os
import time

import numpy as np

LATENCY_METHOD = "runtime call only, inputs prepared once, time.perf_counter; throughput = batch / median latency"


def summarize_latency(seconds, batch=1):
    """p50 (the median)/p90/p99/mean/std/min/max in milliseconds; throughput in items per second from the median,
    so one slow run cannot move it."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50 = float(np.median(ms))
    p90, p99 = np.percentile(ms, [90, 99])
    return {"runs": int(ms.size), "p50_ms": p50, "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "throughput_items_s": float(batch * 1e3 / p50) if p50 > 0 else None}


def time_backend(backend, feed, warmup, runs):
    """Per-inference seconds as the backend measured them around the runtime call (inputs prepared once)."""
    prepared = backend.prepare(feed)
    for _ in range(warmup):
        backend.run(prepared)
    out = []
    for _ in range(runs):
        backend.run(prepared)
        out.append(backend.last_s)
    return out


def cold_start(make_backend, feed):
    """Load + first inference of a fresh backend, in milliseconds."""
    t0 = time.perf_counter()
    backend = make_backend()
    t1 = time.perf_counter()
    backend.run(backend.prepare(feed))
    t2 = time.perf_counter()
    backend.close()
    return {"load_ms": (t1 - t0) * 1e3, "first_inference_ms": (t2 - t1) * 1e3, "total_ms": (t2 - t0) * 1e3}


def rss_bytes():
    """This process's resident memory now (/proc), else its peak (getrusage, where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
