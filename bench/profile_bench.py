"""Does `edgeconv profile` add overhead over the runner's own timed loop? Its batch-1 p50 against a bare
`run_prepared` loop on the same runner, interleaved rounds, on the MobileNetV2-sized ONNX bundle.
Budget: profile's p50 within 5% of the bare loop's."""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import mobilenet_onnx, write_result  # noqa: E402


def main(rounds: int = 6, runs: int = 40) -> dict:
    from edgeconv.profile import ProfileRequest, profile
    from edgeconv.runners import open_runner
    from edgeconv.bundle import Bundle

    bundle = mobilenet_onnx()
    b = Bundle.open(bundle)
    feed = {k: v[:1] for k, v in b.reference()[0].items()}
    prof, bare = [], []
    tmp = tempfile.mkdtemp(prefix="edgeconv-bench-")
    for _ in range(rounds):
        rep = profile(ProfileRequest(bundle=bundle, batch_sizes=[1], threads=2, runs=runs, report=Path(tmp) / "profile.json"))
        prof.append(rep["rows"][0]["p50_ms"])
        # a fresh runner each round, dropped after it: two live ONNX Runtime sessions' spinning thread pools
        # would measure each other on 2 cores
        gc.collect()
        runner = open_runner("onnxruntime", bundle / b.model_artifact["file"], threads=2)
        prepared = runner.prepare(feed)
        samples = []
        for _ in range(5):
            runner.run_prepared(prepared)
        for _ in range(runs):
            t0 = time.perf_counter()
            runner.run_prepared(prepared)
            samples.append((time.perf_counter() - t0) * 1e3)
        bare.append(sorted(samples)[len(samples) // 2])
        del runner, prepared
        gc.collect()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    ratio = med(prof) / med(bare)
    result = {"method": f"{rounds} interleaved rounds of {runs} runs: `profile --batch-sizes 1` vs a bare run_prepared loop "
                        "timed around the call (2 threads); medians of round p50s",
              "profile_p50_ms": med(prof), "bare_p50_ms": med(bare), "ratio": ratio, "rounds": {"profile": prof, "bare": bare},
              "ok": ratio <= 1.05}
    write_result("profile_bench", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
