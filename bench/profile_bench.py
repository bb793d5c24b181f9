"""Does `edgeconv profile` add overhead over a bare timed loop? The whole command against a bare script.

Each round runs, as separate processes, `edgeconv profile BUNDLE --batch-sizes 1 --runs N --json` (the whole command
path: CLI, bundle, batch-1 agreement run, the sweep with its RSS sampling, report) and a bare script that loads the
same artifact with ONNX Runtime (same session options) and times N runs of `session.run` on the same input; the order
alternates every round. Budget, for every case: profile's batch-1 p50 within 5% of the bare script's (median of
per-round ratios); the wall time of each whole command is recorded too. Cases: the MobileNetV2-sized model (2 threads)
and the digits CNN (1 thread, where any per-run overhead shows most).

Secondary figure, kept from before: in-process `profile()` against a bare `run` loop (the runner's inference call) on a
fresh runner.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, alternating, bare_ort, digits_onnx, median, mobilenet_onnx, timed_json, write_result
from validate_vs_bare import reference_feed

from edgeconv.core.stats import PROFILE_MIN_SECONDS

BUDGET = 1.05
WARMUP = 5  # profile's default


def whole_command(bundle: Path, rounds: int, runs: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        copy = Path(tmp) / bundle.name  # profile writes BUNDLE/profile.json: into the copy, not the cached bundle
        shutil.copytree(bundle, copy)
        feed = Path(tmp) / "feed.npz"
        reference_feed(copy, feed)
        prof = [*EDGECONV, "profile", str(copy), "--batch-sizes", "1", "--runs", str(runs), "--warmup", str(WARMUP),
                "--threads", str(threads), "--json"]
        bare = bare_ort(copy / "model.onnx", feed, threads, WARMUP, runs, PROFILE_MIN_SECONDS)

        def measure(who: str) -> dict:
            wall, doc = timed_json(prof if who == "profile" else bare)
            return {"wall_s": wall, "p50_ms": doc["rows"][0]["p50_ms"] if who == "profile" else doc["p50_ms"]}

        rows = alternating(measure, ("profile", "bare"), rounds)
    ratios = [r["profile"]["p50_ms"] / r["bare"]["p50_ms"] for r in rows]
    ratio = median(ratios)
    return {"bundle": bundle.name, "threads": threads, "runs": runs, "warmup": WARMUP, "rounds": rows,
            "profile_p50_ms": median([r["profile"]["p50_ms"] for r in rows]),
            "bare_p50_ms": median([r["bare"]["p50_ms"] for r in rows]),
            "p50_ratio_per_round": ratios, "p50_ratio": ratio,
            "profile_wall_s": median([r["profile"]["wall_s"] for r in rows]),
            "bare_wall_s": median([r["bare"]["wall_s"] for r in rows]),
            "wall_ratio": median([r["profile"]["wall_s"] / r["bare"]["wall_s"] for r in rows]),
            "wall_extra_s": median([r["profile"]["wall_s"] - r["bare"]["wall_s"] for r in rows]), "ok": ratio <= BUDGET}


def in_process(bundle: Path, rounds: int, runs: int) -> dict:
    """profile() in this process against a bare run loop on a fresh runner (dropped after each round: two live
    ONNX Runtime sessions' spinning thread pools would measure each other on 2 cores), order alternating."""
    from edgeconv.bundle import Bundle
    from edgeconv.profile import ProfileRequest, profile
    from edgeconv.runners import open_runner

    b = Bundle.open(bundle)
    feed = {k: v[:1] for k, v in b.reference()[0].items()}
    tmp = tempfile.mkdtemp(prefix="edgeconv-bench-")

    def measure(who: str) -> float:
        if who == "profile":
            rep = profile(ProfileRequest(bundle=bundle, batch_sizes=[1], threads=2, runs=runs, report=Path(tmp) / "profile.json"))
            return rep["rows"][0]["p50_ms"]
        gc.collect()
        runner = open_runner("onnxruntime", bundle / b.model_artifact["file"], threads=2)
        prepared = runner.prepare(feed)
        for _ in range(WARMUP):
            runner.run(prepared)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            runner.run(prepared)
            samples.append((time.perf_counter() - t0) * 1e3)
        runner.close()
        del runner, prepared
        gc.collect()
        return median(samples)

    rows = alternating(measure, ("profile", "bare"), rounds)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"bundle": bundle.name, "profile_p50_ms": median([r["profile"] for r in rows]),
            "bare_p50_ms": median([r["bare"] for r in rows]),
            "ratio": median([r["profile"] / r["bare"] for r in rows])}


def main() -> dict:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6  # smoke runs: python bench/profile_bench.py 2
    mobilenet = mobilenet_onnx()
    cases = [whole_command(mobilenet, rounds, runs=100, threads=2), whole_command(digits_onnx(), rounds, runs=2000, threads=1)]
    result = {"method": f"{rounds} rounds, order alternating: `edgeconv profile BUNDLE --batch-sizes 1 --runs N "
                        f"--warmup {WARMUP} --threads T --json` as a subprocess (its default --min-time: timed runs >= N "
                        f"and >= {PROFILE_MIN_SECONDS} s) vs a bare ONNX Runtime script in its own process (same artifact, "
                        "session options, input, warm-up runs, and timed runs by count and time, each run timed around "
                        "session.run); p50 ratio = median of per-round "
                        "ratios; wall = start to exit of each whole command. Secondary (in_process): profile() vs a bare "
                        "runner.run loop on a fresh runner, 2 threads",
              "budget": BUDGET, "cases": cases, "in_process": in_process(mobilenet, rounds, runs=40),
              "ok": all(c["ok"] for c in cases)}
    write_result("profile_bench", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
