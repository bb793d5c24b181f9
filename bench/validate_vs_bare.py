"""Does `edgeconv validate` measure the runtime, not Python? The whole command against a bare script.

Each round runs, as separate processes, `edgeconv validate BUNDLE --runs N --json` (the whole command path: CLI,
bundle checks, parity on reference.npz, latency, cold start, report) and a bare script that loads the same artifact
with ONNX Runtime (same session options) and times the same N runs of `session.run` on the same input; the order
alternates every round (A, B, then B, A). Compared: the p50 each reports (budget: validate's within 10% of the bare
script's, median of per-round ratios) and the wall time of each whole command (recorded, with the extra seconds).
Cases: the digits CNN (1 thread) and the MobileNetV2-sized model (2 threads).

Secondary figure, kept from before: validate's timing code (time_runner) against a bare `session.run` loop on the
same session in one process, interleaved blocks.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, alternating, bare_ort, digits_onnx, median, mobilenet_onnx, timed_json, write_result

from edgeconv.core.stats import DEFAULT_MIN_SECONDS, DEFAULT_WARMUP_SECONDS

TOLERANCE = 0.10
WARMUP = 10


def reference_feed(bundle: Path, dest: Path) -> int:
    """The first reference item(s) at the model's batch, saved for the bare script; returns the batch."""
    from edgeconv.bundle import Bundle

    b = Bundle.open(bundle)
    shape0 = b.manifest["inputs"][0]["shape"][0]
    batch = shape0 if isinstance(shape0, int) and shape0 > 0 else 1
    np.savez(dest, **{k: np.ascontiguousarray(v[:batch]) for k, v in b.reference()[0].items()})
    return batch


def whole_command(bundle: Path, rounds: int, runs: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        copy = Path(tmp) / bundle.name  # reports land in the copy, not in the cached bundle
        shutil.copytree(bundle, copy)
        feed = Path(tmp) / "feed.npz"
        batch = reference_feed(copy, feed)
        validate = [*EDGECONV, "validate", str(copy), "--runs", str(runs), "--warmup", str(WARMUP), "--threads", str(threads),
                    "--report", str(Path(tmp) / "validation.json"), "--json"]
        bare = bare_ort(copy / "model.onnx", feed, threads, WARMUP, runs, DEFAULT_MIN_SECONDS, DEFAULT_WARMUP_SECONDS)

        def measure(who: str) -> dict:
            wall, doc = timed_json(validate if who == "validate" else bare)
            return {"wall_s": wall, "p50_ms": doc["latency"]["p50_ms"] if who == "validate" else doc["p50_ms"]}

        rows = alternating(measure, ("validate", "bare"), rounds)
    p50_ratios = [r["validate"]["p50_ms"] / r["bare"]["p50_ms"] for r in rows]
    wall_ratios = [r["validate"]["wall_s"] / r["bare"]["wall_s"] for r in rows]
    ratio = median(p50_ratios)
    return {"bundle": bundle.name, "threads": threads, "batch": batch, "runs": runs, "warmup": WARMUP, "rounds": rows,
            "validate_p50_ms": median([r["validate"]["p50_ms"] for r in rows]),
            "bare_p50_ms": median([r["bare"]["p50_ms"] for r in rows]),
            "p50_ratio_per_round": p50_ratios, "p50_ratio": ratio,
            "validate_wall_s": median([r["validate"]["wall_s"] for r in rows]),
            "bare_wall_s": median([r["bare"]["wall_s"] for r in rows]),
            "wall_ratio": median(wall_ratios),
            "wall_extra_s": median([r["validate"]["wall_s"] - r["bare"]["wall_s"] for r in rows]),
            "ok": abs(ratio - 1) <= TOLERANCE}


def inner_call(bundle: Path, rounds: int, per_block: int, threads: int) -> dict:
    """Validate's timing code against a bare session.run loop on the runner's own session (two sessions' spinning thread
    pools would fight over 2 cores and measure each other), interleaved blocks in one process."""
    from edgeconv.bundle import Bundle
    from edgeconv.runners import open_runner
    from edgeconv.stats import summarize_latency, time_runner

    b = Bundle.open(bundle)
    ref_in, _ = b.reference()
    runner = open_runner("onnxruntime", bundle / b.model_artifact["file"], threads=threads)
    batch = runner.fixed_batch() or 1
    feed = {k: np.ascontiguousarray(v[:batch]) for k, v in ref_in.items()}
    sess = runner.session
    names = [o.name for o in sess.get_outputs()]  # as the backend does (run(None, …) is ~1 µs slower)
    for _ in range(20):
        sess.run(names, feed)
    validate_s, bare_s = [], []
    for i in range(rounds):
        for who in (("validate", "bare") if i % 2 == 0 else ("bare", "validate")):
            if who == "validate":
                validate_s += time_runner(runner, feed, warmup=2, runs=per_block)
            else:
                for _ in range(per_block):
                    t0 = time.perf_counter()
                    sess.run(names, feed)
                    bare_s.append(time.perf_counter() - t0)
    runner.close()
    v, bare = summarize_latency(validate_s), summarize_latency(bare_s)
    ratio = v["p50_ms"] / bare["p50_ms"]
    return {"bundle": bundle.name, "threads": threads, "batch": batch, "samples_each": len(bare_s),
            "validate_p50_ms": v["p50_ms"], "bare_p50_ms": bare["p50_ms"], "ratio": ratio}


def main() -> dict:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 8  # smoke runs: python bench/validate_vs_bare.py 2
    digits, mobilenet = digits_onnx(), mobilenet_onnx()
    cases = [whole_command(digits, rounds, runs=2000, threads=1), whole_command(mobilenet, rounds, runs=100, threads=2)]
    inner = [inner_call(digits, rounds=10, per_block=200, threads=1), inner_call(mobilenet, rounds=6, per_block=10, threads=2)]
    result = {"method": f"{rounds} rounds, order alternating (A, B then B, A): `edgeconv validate BUNDLE --runs N "
                        f"--warmup {WARMUP} --threads T --json` as a subprocess (its defaults: warm-up >= {WARMUP} runs and "
                        f">= {DEFAULT_WARMUP_SECONDS} s, timed runs >= N and >= {DEFAULT_MIN_SECONDS} s) vs a bare ONNX "
                        "Runtime script in its own process (same artifact, session options, input, warm-up and runs by "
                        "count and time, each run timed around session.run); p50 ratio = median of per-round "
                        "ratios of the reported p50s; wall = start to exit of each whole command. Secondary (inner_call): "
                        "edgeconv.stats.time_runner vs a bare session.run loop on the same session, interleaved blocks",
              "tolerance": TOLERANCE, "cases": cases, "inner_call": inner, "ok": all(c["ok"] for c in cases)}
    write_result("validate_vs_bare", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
