"""Latency: one method and one throughput definition everywhere (warm-up, timed runs of the runtime call by count AND
by time, a true median, throughput from it), for the host's runners and the device's backends alike, and the judgement
of whether those runs mean anything (stability: CV, outliers, drift, order-statistic intervals, a verdict with its
reasons). See docs/architecture.md ("Measurements carry their quality")."""

import contextlib
import math
import os
import time

import numpy as np

LATENCY_METHOD = "runtime call only, inputs prepared once, time.perf_counter; throughput = batch / median latency"

# Defaults of validate (and the device runner), against the anchors the tools people trust use:
# trtexec warms up for 200 ms and times >= 10 iterations and >= 3 s; benchmark_app runs 60 s on CPU; pyperf runs 20
# processes. A validate run is a CI gate run on every bundle, so it takes the trtexec warm-up (10 runs and 200 ms, which
# covers the first-run allocations and the governor's ramp-up) and >= 100 runs and >= 1 s of timed runs: 100 runs give a
# p50 interval at 95% from ranks 40..60 and 1 s covers several scheduler periods and the 1 s sampling of a governor, while
# the verdict below says when that was not enough (then: --min-seconds 3 or more, or --stable).
DEFAULT_RUNS, DEFAULT_WARMUP = 100, 10
DEFAULT_MIN_SECONDS, DEFAULT_WARMUP_SECONDS = 1.0, 0.2
PROFILE_MIN_SECONDS = 0.5  # profile: per batch size (a sweep times 6 sizes by default; 1 s each would make it 6 s+)

# The verdict. trtexec warns above a CV of 1%, a figure for a dedicated GPU; on the shared CPUs of edge boards 2-5% is
# normal noise, so the limit is pyperf's: a std >= 10% of the mean is unstable. The CV is taken over the runs that are
# not outliers (a rare interrupt of 1 ms among 0.05 ms runs is an outlier, counted and reported, not noise of the p50;
# the outliers are not a reason of their own: a runtime's latency is often bimodal, e.g. 20% of a tiny model's runs 50%
# slower where a thread pool's worker was descheduled, and its p50 is still well defined) up to 20% of the runs: past
# that a second mode is as likely as the first (a process competing for the same core preempts a run of 1 ms in 4 in
# our tests). The p50 interval must be within +-5% of the p50 (a budget is a p50 figure); the medians of the first and
# second half of the runs must agree within 10% (a load, a thermal throttle or a governor change during the run is a
# drift, not noise), and their p90s within 25% (a load that preempts some runs moves the tail before the median).
CV_LIMIT = 0.10
CI_HALF_WIDTH_LIMIT = 0.05
DRIFT_LIMIT, TAIL_DRIFT_LIMIT = 0.10, 0.25
OUTLIER_FRACTION_LIMIT = 0.20
# outlier: further than 3 scaled MADs (1.4826 * MAD, the std of a normal) and 10% from the median (a timer's quantum
# can make the MAD of a fast model 0.1 microsecond, and then every run 0.5 microsecond off would be an "outlier")
MAD_OUTLIER_K, OUTLIER_MIN_DEVIATION = 3.0, 0.10
CONFIDENCE = 0.95
STABLE_TOLERANCE, STABLE_MAX_S, STABLE_MAX_ROUNDS = 0.02, 30.0, 10  # --stable: successive rounds' p50 within 2%


def summarize_latency(seconds, batch=1):
    """p50 (the median)/p90/p99/mean/std/min/max in milliseconds; throughput in items per second from the median,
    so one slow run cannot move it; and the runs' stability (:func:`stability`)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50 = float(np.median(ms))
    p90, p99 = np.percentile(ms, [90, 99])
    return {"runs": int(ms.size), "p50_ms": p50, "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "throughput_items_s": float(batch * 1e3 / p50) if p50 > 0 else None, "stability": stability(ms)}


def quantile_interval(sorted_values, q, confidence=CONFIDENCE):
    """A distribution-free interval for the ``q`` quantile from order statistics: the number of runs below the true
    quantile is Binomial(n, q), so ``[x_(l), x_(u)]`` covers it with probability ``P(l <= B < u)``; l and u are the
    ranks with at most (1 - confidence) / 2 of that probability outside each side (MLPerf's early stopping bounds its
    percentile the same way, one-sided). ``None`` for a side when n is too small to bound it."""
    n = len(sorted_values)
    if n == 0:
        return {"low": None, "high": None, "ranks": None, "confidence": confidence}
    cdf = _binomial_cdf(n, q)
    tail = (1.0 - confidence) / 2
    low_rank = int(np.searchsorted(cdf, tail, side="right"))  # P(B <= low_rank - 1) <= tail  (1-based rank)
    high_rank = int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1  # P(B <= high_rank - 1) >= 1 - tail
    low = float(sorted_values[low_rank - 1]) if low_rank >= 1 else None
    high = float(sorted_values[high_rank - 1]) if high_rank <= n else None
    return {"low": low, "high": high, "ranks": [low_rank, high_rank], "confidence": confidence}


def _binomial_cdf(n, q):
    """P(B <= k) for k = 0..n, B ~ Binomial(n, q), from log-probabilities (no overflow for large n)."""
    k = np.arange(n, dtype=np.float64)
    steps = np.log((n - k) / (k + 1)) + math.log(q / (1.0 - q))
    logpmf = np.concatenate([[n * math.log(1.0 - q)], n * math.log(1.0 - q) + np.cumsum(steps)])
    return np.minimum(np.cumsum(np.exp(logpmf)), 1.0)


def stability(ms):
    """Whether these runs (milliseconds, in the order they ran) can carry a verdict: the CV of the non-outliers,
    the outliers by median absolute deviation, whether the first run was one, the drift between the halves, 95%
    intervals for p50/p90/p99 from order statistics, and ``verdict`` "stable"/"unstable" with every ``reason``."""
    ms = np.asarray(ms, dtype=np.float64)
    med = float(np.median(ms))
    mad = float(np.median(np.abs(ms - med))) * 1.4826
    far = np.abs(ms - med) > max(MAD_OUTLIER_K * mad, OUTLIER_MIN_DEVIATION * med)
    kept = ms[~far]
    cv = float(kept.std(ddof=1) / kept.mean()) if kept.size > 1 and kept.mean() > 0 else 0.0
    half = ms.size // 2
    drift = _drift(ms, half, 50) if half >= 5 else None
    tail_drift = _drift(ms, half, 90) if half >= 10 else None
    srt = np.sort(ms)
    ci = dict(("p%d" % int(q * 100), quantile_interval(srt, q)) for q in (0.5, 0.9, 0.99))
    p50 = ci["p50"]
    width = (max(med - p50["low"], p50["high"] - med) / med if p50["low"] is not None and p50["high"] is not None and med > 0
             else None)
    out = {"cv": cv, "outliers": int(far.sum()), "outlier_fraction": float(far.mean()), "mad_ms": mad,
           "first_run_outlier": bool(far[0]), "first_run_ms": float(ms[0]),
           "drift": drift, "tail_drift": tail_drift, "p50_interval_half_width": width, "intervals_ms": ci,
           "limits": {"cv": CV_LIMIT, "p50_interval_half_width": CI_HALF_WIDTH_LIMIT, "drift": DRIFT_LIMIT,
                      "tail_drift": TAIL_DRIFT_LIMIT, "outlier_fraction": OUTLIER_FRACTION_LIMIT, "outlier_mads": MAD_OUTLIER_K,
                      "outlier_min_deviation": OUTLIER_MIN_DEVIATION}}
    reasons = _reasons(out, ms.size)
    out.update(verdict="unstable" if reasons else "stable", reasons=reasons)
    return out


def _drift(ms, half, q):
    """The second half's ``q`` percentile relative to the first half's."""
    first = float(np.percentile(ms[:half], q))
    return float(np.percentile(ms[half:], q)) / first - 1.0 if first > 0 else None


def _reasons(s, n):
    """Why the runs are unstable (an empty list: stable)."""
    reasons = []
    if s["cv"] > CV_LIMIT:
        reasons.append("CV %.1f%% > %.0f%% (runs that are not outliers)" % (100 * s["cv"], 100 * CV_LIMIT))
    if s["outlier_fraction"] > OUTLIER_FRACTION_LIMIT:
        reasons.append("%d of %d runs (%.0f%%) are outliers (> %g MADs and %.0f%% from the median) > %.0f%%" % (
            s["outliers"], n, 100 * s["outlier_fraction"], MAD_OUTLIER_K, 100 * OUTLIER_MIN_DEVIATION,
            100 * OUTLIER_FRACTION_LIMIT))
    if s["drift"] is not None and abs(s["drift"]) > DRIFT_LIMIT:
        reasons.append("the second half's median is %+.1f%% from the first half's (> %.0f%%: a load, throttling or a "
                       "governor change during the run)" % (100 * s["drift"], 100 * DRIFT_LIMIT))
    if s["tail_drift"] is not None and abs(s["tail_drift"]) > TAIL_DRIFT_LIMIT:
        reasons.append("the second half's p90 is %+.0f%% from the first half's (> %.0f%%: something preempted the runs "
                       "part of the time)" % (100 * s["tail_drift"], 100 * TAIL_DRIFT_LIMIT))
    width = s["p50_interval_half_width"]
    if width is None:
        reasons.append("%d runs are too few to bound the p50 at %.0f%%" % (n, 100 * CONFIDENCE))
    elif width > CI_HALF_WIDTH_LIMIT:
        reasons.append("the p50's %.0f%% interval is +-%.1f%% wide (> +-%.0f%%)" % (100 * CONFIDENCE, 100 * width,
                                                                                  100 * CI_HALF_WIDTH_LIMIT))
    return reasons


def timed_runs(backend, prepared, runs, min_seconds=0.0):
    """At least ``runs`` runs and at least ``min_seconds`` of them; the runtime's own seconds per run."""
    out = []
    t_end = time.perf_counter() + (min_seconds or 0.0)
    while len(out) < runs or time.perf_counter() < t_end:
        backend.run(prepared)
        out.append(backend.last_s)
    return out


def time_backend(backend, feed, warmup, runs, min_seconds=0.0, warmup_seconds=0.0):
    """Per-inference seconds as the backend measured them around the runtime call (inputs prepared once), after at
    least ``warmup`` runs and ``warmup_seconds`` of warm-up; at least ``runs`` timed runs and ``min_seconds``."""
    prepared = backend.prepare(feed)
    if warmup or warmup_seconds:
        timed_runs(backend, prepared, warmup, warmup_seconds)
    return timed_runs(backend, prepared, runs, min_seconds)


@contextlib.contextmanager
def _nothing():
    yield


def measure(backend, feed, request, batch=1, around=_nothing, clock=time.perf_counter, reopen=None):
    """The latency of a validate request: warm-up by count and time, timed runs by count and time, summarized with
    their stability; with ``stable``, rounds repeated until two successive rounds' p50 agree within
    ``stable_tolerance`` or ``stable_max_s`` has passed, the way pyperf calibrates. pyperf spreads its runs over fresh
    processes because most of the variance is between them (allocation, thread placement), not between runs: with
    ``reopen()`` (a fresh backend) every round after the first runs in a fresh session, warmed up the same way, and the
    p50 interval stated for the series spans every round's interval (``rounds.p50_interval_ms``): the last two agree
    by the stopping rule, so they alone would understate how far sessions differ. The last
    round is reported, every round's p50 with it, and a round series that never agreed is unstable. ``around()``: a
    context manager around the first round's runs alone (the steady state's memory phase), not the statistics."""
    prepared = backend.prepare(feed)
    with around():
        t0 = clock()
        warm = _warm_up(backend, prepared, request)
        t1 = clock()
        samples = timed_runs(backend, prepared, request["runs"], request["min_seconds"])
    rounds = [_round(samples, "the validated session")]
    while request["stable"] and not _agree([r["p50_ms"] for r in rounds], request["stable_tolerance"]) and \
            clock() - t1 <= request["stable_max_s"] and len(rounds) < STABLE_MAX_ROUNDS:
        samples, session = _another_round(backend, prepared, feed, request, reopen)
        rounds.append(_round(samples, session))
    t2 = clock()
    lat = summarize_latency(samples, batch)
    lat.update(warmup=request["warmup"], warmup_runs=len(warm), warmup_s=t1 - t0, timed_s=t2 - t1,
               min_seconds=request["min_seconds"], warmup_seconds=request["warmup_seconds"])
    lat["stability"]["rounds"] = _rounds(rounds, request) if request["stable"] else None
    if request["stable"] and not lat["stability"]["rounds"]["agreed"]:
        lat["stability"]["reasons"].append(lat["stability"]["rounds"]["why"])
        lat["stability"]["verdict"] = "unstable"
    return lat


def _warm_up(backend, prepared, request):
    if request["warmup"] or request["warmup_seconds"]:
        return timed_runs(backend, prepared, request["warmup"], request["warmup_seconds"])
    return []


def _another_round(backend, prepared, feed, request, reopen):
    """One more --stable round: in a fresh session when the backend can be opened again (closed after it), else in
    the same one."""
    if reopen is None:
        return timed_runs(backend, prepared, request["runs"], request["min_seconds"]), "the validated session"
    fresh = reopen()
    try:
        again = fresh.prepare(feed)
        _warm_up(fresh, again, request)
        return timed_runs(fresh, again, request["runs"], request["min_seconds"]), "a fresh session"
    finally:
        fresh.close()


def _round(samples, session):
    ms = np.sort(np.asarray(samples, dtype=np.float64) * 1e3)
    ci = quantile_interval(ms, 0.5)
    return {"p50_ms": float(np.median(ms)), "low": ci["low"], "high": ci["high"], "session": session}


def _agree(p50s, tolerance):
    return len(p50s) >= 2 and abs(p50s[-1] - p50s[-2]) <= tolerance * p50s[-2]


def _rounds(rounds, request):
    p50s = [r["p50_ms"] for r in rounds]
    agreed = _agree(p50s, request["stable_tolerance"])
    why = ("rounds %d and %d agree within %.1f%%" % (len(p50s) - 1, len(p50s), 100 * request["stable_tolerance"]) if agreed
           else "%d rounds' p50 did not agree within %.1f%% in %g s (%d rounds at most)" % (
               len(p50s), 100 * request["stable_tolerance"], request["stable_max_s"], STABLE_MAX_ROUNDS))
    bounded = [r for r in rounds if r["low"] is not None and r["high"] is not None]
    interval = {"low": min(r["low"] for r in bounded), "high": max(r["high"] for r in bounded), "confidence": CONFIDENCE,
                "over": "every round's order-statistic interval (%d rounds, %d in fresh sessions)" % (
                    len(bounded), sum(r["session"] != rounds[0]["session"] for r in bounded))} if bounded else None
    return {"p50_ms": p50s, "sessions": [r["session"] for r in rounds], "agreed": agreed,
            "tolerance": request["stable_tolerance"], "why": why, "p50_interval_ms": interval}


def latency_budget(lat, limit, allow_unstable):
    """The p50 budget: never passed on an unstable measurement ("unstable, not a verdict"), unless ``allow_unstable``."""
    st = lat["stability"]
    budget = {"name": "max_latency_ms_p50", "limit": limit, "value": lat["p50_ms"], "ok": lat["p50_ms"] <= limit,
              "stability": st["verdict"], "compared": "p50 %.4g ms %s %s ms, on a stable measurement" % (
                  lat["p50_ms"], "<=" if lat["p50_ms"] <= limit else ">", limit)}
    if st["verdict"] == "unstable":
        if allow_unstable:
            budget["compared"] = ("p50 %.4g ms %s %s ms on an UNSTABLE measurement, judged anyway (--allow-unstable): %s"
                                  % (lat["p50_ms"], "<=" if budget["ok"] else ">", limit, "; ".join(st["reasons"])))
        else:
            budget["ok"] = False
            budget["compared"] = "unstable, not a verdict (p50 %.4g ms, limit %s ms): %s; rerun on a quiet machine, with " \
                                 "--stable, or pass --allow-unstable" % (lat["p50_ms"], limit, "; ".join(st["reasons"]))
    return budget


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
