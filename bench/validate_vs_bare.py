"""Does validate measure the runtime, not Python? Its p50 against a bare `session.run` loop.

Both use the same ONNX Runtime session and preallocated inputs, on the digits bundle and the
MobileNetV2-sized model; blocks are interleaved (A, B, A, B, …) in one run so machine drift hits both.
The budget: validate's p50 within 10% of the bare loop's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, MODELS, ROOT, mobilenet_onnx, write_result  # noqa: E402

TOLERANCE = 0.10


def digits_bundle() -> Path:
    bundle = MODELS / "digits-onnx"
    if not (bundle / "manifest.json").exists():
        subprocess.run([*EDGECONV, "convert", str(ROOT / "samples" / "digits_cnn.pt"), "-o", str(bundle), "--force"],
                       check=True, timeout=600, cwd=ROOT)
    return bundle


def compare(bundle: Path, rounds: int, per_block: int, threads: int) -> dict:
    import time

    from edgeconv.bundle import Bundle
    from edgeconv.runners import open_runner
    from edgeconv.stats import summarize_latency, time_runner

    b = Bundle.open(bundle)
    model = bundle / b.model_artifact["file"]
    ref_in, _ = b.reference()
    runner = open_runner("onnxruntime", model, threads=threads)
    batch = runner.fixed_batch() or 1
    feed = {k: np.ascontiguousarray(v[:batch]) for k, v in ref_in.items()}
    # The bare loop runs on the runner's own session: two sessions' spinning thread pools would fight over
    # 2 cores and measure each other instead of validate's overhead.
    sess = runner.session
    for _ in range(20):
        sess.run(None, feed)
    validate_s, bare_s = [], []
    for _ in range(rounds):
        validate_s += time_runner(runner, feed, warmup=2, runs=per_block)  # validate's own timing code
        for _ in range(per_block):
            t0 = time.perf_counter()
            sess.run(None, feed)
            bare_s.append(time.perf_counter() - t0)
    v, bare = summarize_latency(validate_s), summarize_latency(bare_s)
    ratio = v["p50_ms"] / bare["p50_ms"]
    return {"bundle": bundle.name, "threads": threads, "batch": batch, "samples_each": len(bare_s),
            "validate_p50_ms": v["p50_ms"], "bare_p50_ms": bare["p50_ms"], "ratio": ratio, "ok": abs(ratio - 1) <= TOLERANCE}


def main() -> dict:
    cases = [compare(digits_bundle(), rounds=20, per_block=200, threads=1),
             compare(mobilenet_onnx(), rounds=10, per_block=10, threads=2)]
    result = {"method": "interleaved blocks: edgeconv.stats.time_runner (validate's timing) vs a bare session.run loop, "
                        "same session and preallocated inputs", "tolerance": TOLERANCE, "cases": cases,
              "ok": all(c["ok"] for c in cases)}
    write_result("validate_vs_bare", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
