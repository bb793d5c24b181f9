"""Do the per-layer times of `edgeconv profile --layers` add up to the model's end-to-end time?

The MobileNetV2-sized model (samples/make_mobilenet.py; the PyTorch one by default, so the layers map to module paths)
is converted with `edgeconv convert MODEL --target onnx` and `--target openvino` (fp32; OpenVINO with
INFERENCE_PRECISION_HINT=f32 as every edgeconv OpenVINO run), then each bundle is profiled, as a user would, with
`edgeconv profile BUNDLE --layers --runs N --warmup W --threads T --json` in its own process, at 1 and 2 threads,
several rounds. Per round it records: the sum of the layers' p50s (ONNX Runtime's profiling trace; OpenVINO's
performance counters), the end-to-end p50 measured with the profiler off, their ratio, and the end-to-end p50 of the
profiled runs themselves (the profiler's overhead). Criterion (issue 15): the sum within 15% of the end-to-end p50,
in every round.

    flock /tmp/edgeconv-heavy.lock .venv/bin/python bench/profile_layers.py [--rounds 3] [--runs 100] [--sources pt,keras]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, bundle, median, mobilenet, timed_json, write_result

CRITERION = 0.15
WARMUP = 10


def measure(bundle_dir: Path, threads: int, runs: int, report: Path) -> dict:
    cmd = [*EDGECONV, "profile", str(bundle_dir), "--layers", "--runs", str(runs), "--warmup", str(WARMUP),
           "--threads", str(threads), "--report", str(report), "--json"]
    wall, doc = timed_json(cmd)
    lay = doc["layers"]
    top = lay["rows"][:3]
    return {"sum_of_layers_ms": lay["sum_ms"], "end_to_end_p50_ms": lay["end_to_end"]["p50_ms"],
            "ratio": lay["sum_vs_end_to_end"],
            "profiled_p50_ms": lay["profiled"]["p50_ms"], "profiler_overhead": lay["profiler_overhead"],
            "per_run_sum_p50_ms": lay["per_run_sum_p50_ms"], "layers": lay["count"], "not_executed": lay["not_executed"],
            "mapped_to_source": sum(1 for r in lay["rows"] if r.get("source")),
            "slowest": [{k: r.get(k) for k in ("name", "op", "source", "p50_ms", "share")} for r in top],
            "threads_reported": doc["measured_on"].get("threads"), "precision": doc["measured_on"].get("precision"),
            "runtime": f"{doc['measured_on'].get('runtime')} {doc['measured_on'].get('version')}", "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--sources", default="pt", help="pt (PyTorch, TorchScript) and/or keras")
    args = ap.parse_args()
    cases = []
    for src in args.sources.split(","):
        model = mobilenet(".pt" if src == "pt" else ".keras")
        for target in ("onnx", "openvino"):
            b = bundle(model, f"mobilenetv2-{src}-{target}-fp32", "--target", target)
            for threads in (int(t) for t in args.threads.split(",")):
                rounds = []
                with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
                    for i in range(args.rounds):
                        rounds.append(measure(b, threads, args.runs, Path(tmp) / f"layers-{i}.json"))
                        print(f"{src} {target} threads {threads} round {i + 1}: sum {rounds[-1]['sum_of_layers_ms']:.3f} ms vs "
                              f"p50 {rounds[-1]['end_to_end_p50_ms']:.3f} ms ({rounds[-1]['ratio']:.3f}), profiled "
                              f"{rounds[-1]['profiled_p50_ms']:.3f} ms", file=sys.stderr)
                ratios = [r["ratio"] for r in rounds]
                cases.append({"source": src, "target": target, "bundle": b.name, "threads": threads, "runs": args.runs,
                              "warmup": WARMUP, "rounds": rounds, "ratio_median": median(ratios), "ratio_min": min(ratios),
                              "ratio_max": max(ratios),
                              "profiler_overhead_median": median([r["profiler_overhead"] for r in rounds]),
                              "ok": all(abs(r - 1) <= CRITERION for r in ratios)})
    write_result("profile_layers", {
        "method": (f"edgeconv profile BUNDLE --layers --runs {args.runs} --warmup {WARMUP} --threads T --json, "
                   f"a process per round, {args.rounds} rounds per case; ratio = sum of the layers' p50s / end-to-end p50 "
                   "(profiler off, its timed "
                   "runs interleaved with the profiled ones in blocks); profiler overhead = profiled end-to-end p50 / "
                   "end-to-end p50 - 1"),
        "criterion": f"|ratio - 1| <= {CRITERION} in every round",
        "cases": cases, "ok": all(c["ok"] for c in cases)})


if __name__ == "__main__":
    main()
