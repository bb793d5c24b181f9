"""`edgeconv validate --stable` against the runtimes' own references, on the MobileNetV2-sized model.

Two cases, each a pair of whole commands run as separate processes, interleaved in one run (order alternating every
round: A, B, then B, A, so drift on a shared machine lands on both sides):

- openvino: `edgeconv validate BUNDLE --stable --threads 2 --json` on the fp32 IR bundle (PERFORMANCE_HINT=LATENCY,
  INFERENCE_NUM_THREADS=2, f32: one stream, synchronous requests) against OpenVINO's own `benchmark_app` on the same
  model.xml with the same settings (`-hint latency -api sync -infer_precision f32`: 1 stream of 2 threads here, as
  its own report of the compiled model says), its "Median" latency.
- tflite: `edgeconv validate BUNDLE --stable --threads 2 --json` on the fp32 LiteRT bundle against a bare LiteRT loop
  (its own process: Interpreter(num_threads=2), the same input in the artifact's layout, warm-up, each run timed
  around invoke()).

Checked for every case: edgeconv's p50 within 5% of the reference's (median of the per-round ratios), and edgeconv's
stated 95% p50 interval (with --stable: across its rounds, each after the first in a fresh session; core/stats.py) contains
the reference's p50 (counted per round; the case
passes when it does in most rounds). The CPU, load and every round's figures go to bench/results/stable_vs_references.json.

    flock /tmp/edgeconv-heavy.lock .venv/bin/python bench/stable_vs_references.py [ROUNDS]
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, alternating, bundle, median, timed_json, write_result  # noqa: E402
from openvino_bench import ir_bundle  # noqa: E402
from tflite_bench import onnx_model  # noqa: E402

THREADS = 2
TOLERANCE = 0.05
REFERENCE_SECONDS = 3  # each reference run: at least this long (validate --stable times >= 2 rounds of >= 1 s)
WARMUP = 10
QUIET = 0.25  # a quiet round: the other processes kept at most a quarter of a CPU busy during both commands

# A bare LiteRT loop, as a user would write it: its own process, the interpreter with the same threads, the input in
# the artifact's own layout set and the output read around every run (as validate does: like with like), 10 warm-up
# runs and 0.2 s, then runs for at least SECONDS, each timed around invoke() alone.
BARE_LITERT = """
import json, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
model, feed, threads, seconds, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
it = Interpreter(model_path=model, num_threads=threads)
it.allocate_tensors()
with np.load(feed) as z:
    x = z["x"]
index, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
t_end = time.perf_counter() + 0.2
n = 0
while n < warmup or time.perf_counter() < t_end:
    it.set_tensor(index, x)
    it.invoke()
    it.get_tensor(out).copy()
    n += 1
times = []
t_end = time.perf_counter() + seconds
while time.perf_counter() < t_end:
    it.set_tensor(index, x)
    t0 = time.perf_counter()
    it.invoke()
    times.append(time.perf_counter() - t0)
    it.get_tensor(out).copy()
print(json.dumps({"p50_ms": float(np.median(times)) * 1e3, "runs": len(times)}))
"""


def _busy_s() -> float:
    """CPU seconds the whole machine has been busy (every state of /proc/stat's cpu line but idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_s() -> float:
    kids, me = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    return kids.ru_utime + kids.ru_stime + me.ru_utime + me.ru_stime


def with_others_cpu(fn):
    """Run ``fn()`` and add to its dict ``others_cpus``: how many CPUs the machine's other processes kept busy on average
    meanwhile (the machine's busy CPU time less this process's and its finished children's, over the wall time)."""
    t0, busy0, own0 = time.perf_counter(), _busy_s(), _own_s()
    out = fn()
    wall = time.perf_counter() - t0
    out["others_cpus"] = max(0.0, (_busy_s() - busy0) - (_own_s() - own0)) / wall
    return out


def tflite_fp32() -> Path:
    """The fp32 LiteRT bundle of the PyTorch MobileNetV2-sized model (the one bench/tflite_bench.py measures)."""
    return bundle(onnx_model(), "mobilenetv2-tflite-fp32", "--target", "tflite", "--precision", "fp32")


def validate_cmd(copy: Path, report: Path) -> list[str]:
    return [*EDGECONV, "validate", str(copy), "--stable", "--threads", str(THREADS), "--report", str(report), "--json"]


def from_validate(doc: dict) -> dict:
    lat = doc["latency"]
    st = lat["stability"]
    p50 = st["rounds"]["p50_interval_ms"] or st["intervals_ms"]["p50"]  # --stable: the interval across its rounds
    return {"p50_ms": lat["p50_ms"], "p50_low_ms": p50["low"], "p50_high_ms": p50["high"], "runs": lat["runs"],
            "verdict": st["verdict"], "reasons": st["reasons"], "cv": st["cv"], "rounds_p50_ms": st["rounds"]["p50_ms"],
            "threads": doc["measured_on"].get("threads"), "load_avg": (doc.get("conditions") or {}).get("load_average"),
            "busiest_other": ((doc.get("conditions") or {}).get("busiest_other_processes") or [None])[0]}


def benchmark_app(xml: Path) -> dict:
    """OpenVINO's benchmark_app on the IR with validate's settings: its Median latency, iteration count, and the compiled
    model's streams/threads/pinning as it printed them. benchmark_app refuses -nthreads/-nstreams with a hint (a UI rule
    of its own), so it gets the LATENCY hint alone, which on this 2-core machine compiles 1 stream of 2 threads: the same
    as validate's LATENCY hint with --threads 2 (checked against what both report)."""
    exe = shutil.which("benchmark_app", path=str(Path(sys.executable).parent))
    cmd = [exe, "-m", str(xml), "-d", "CPU", "-hint", "latency", "-api", "sync", "-infer_precision", "f32",
           "-t", str(REFERENCE_SECONDS)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
    latency = out[out.index("Latency:"):]
    count = re.search(r"Count:\s+(\d+) iterations", out)
    config = dict(re.findall(r"^\[ INFO \]\s+(NUM_STREAMS|INFERENCE_NUM_THREADS|ENABLE_CPU_PINNING|PERFORMANCE_HINT): (\S+)",
                             out, re.M))
    return {"p50_ms": float(re.search(r"Median:\s+([0-9.]+) ms", latency).group(1)),
            "runs": int(count.group(1)) if count else None, "config": config}


def litert_feed(copy: Path, dest: Path) -> None:
    """The first reference input in the artifact's own layout (the bundle's recorded permutation applied)."""
    from edgeconv.bundle import Bundle

    b = Bundle.open(copy)
    name, x = next(iter(b.reference()[0].items()))
    perm = ((b.model_artifact.get("runner_options") or {}).get("permutations") or {}).get(name)
    x = np.ascontiguousarray(x[:1])
    np.savez(dest, x=x.transpose(perm) if perm else x)


def case(name: str, bundle_dir: Path, rounds: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        copy = Path(tmp) / bundle_dir.name  # reports land in the copy, not in the cached bundle
        shutil.copytree(bundle_dir, copy)
        validate = validate_cmd(copy, Path(tmp) / "validation.json")
        if name == "openvino":
            reference_label = "benchmark_app"

            def reference() -> dict:
                return benchmark_app(copy / "model.xml")
        else:
            reference_label = "bare_litert"
            feed = Path(tmp) / "feed.npz"
            litert_feed(copy, feed)
            bare = [sys.executable, "-c", BARE_LITERT, str(copy / "model.tflite"), str(feed), str(THREADS),
                    str(REFERENCE_SECONDS), str(WARMUP)]

            def reference() -> dict:
                return timed_json(bare)[1]

        def measure(who: str) -> dict:
            return with_others_cpu(lambda: from_validate(timed_json(validate)[1]) if who == "validate" else reference())

        rows = alternating(measure, ("validate", reference_label), rounds)
    return summarize(name, bundle_dir, reference_label, rows)


def summarize(name: str, bundle_dir: Path, reference_label: str, rows: list[dict]) -> dict:
    ratios = [r["validate"]["p50_ms"] / r[reference_label]["p50_ms"] for r in rows]
    contained = [r["validate"]["p50_low_ms"] <= r[reference_label]["p50_ms"] <= r["validate"]["p50_high_ms"] for r in rows]
    ratio = median(ratios)
    quiet = [i for i, r in enumerate(rows) if max(r["validate"]["others_cpus"], r[reference_label]["others_cpus"]) <= QUIET]
    return {"case": name, "bundle": bundle_dir.name, "reference": reference_label, "threads": THREADS, "rounds": rows,
            "validate_p50_ms": median([r["validate"]["p50_ms"] for r in rows]),
            "reference_p50_ms": median([r[reference_label]["p50_ms"] for r in rows]),
            "p50_ratio_per_round": ratios, "p50_ratio": ratio, "interval_contains_reference": contained,
            "verdicts": [r["validate"]["verdict"] for r in rows], "quiet_rounds": quiet,
            "p50_ratio_quiet_rounds": median([ratios[i] for i in quiet]) if quiet else None,
            "interval_contains_reference_quiet_rounds": [contained[i] for i in quiet],
            "ok_within_5pct": abs(ratio - 1) <= TOLERANCE, "ok_interval": sum(contained) * 2 > len(contained),
            "ok": abs(ratio - 1) <= TOLERANCE and sum(contained) * 2 > len(contained),
            "ok_quiet_rounds": bool(quiet) and abs(median([ratios[i] for i in quiet]) - 1) <= TOLERANCE
            and sum(contained[i] for i in quiet) * 2 > len(quiet)}


def main() -> dict:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6  # smoke runs: python bench/stable_vs_references.py 2
    cases = [case("openvino", ir_bundle("fp32"), rounds), case("tflite", tflite_fp32(), rounds)]
    result = {"method": f"{rounds} rounds per case, order alternating (A, B then B, A), every command its own process: "
                        f"`edgeconv validate BUNDLE --stable --threads {THREADS} --json` vs (openvino) `benchmark_app -hint "
                        f"latency -api sync -infer_precision f32 -t {REFERENCE_SECONDS}` (1 stream, {THREADS} threads) "
                        f"(its Median) and (tflite) a bare LiteRT loop (num_threads={THREADS}, {WARMUP} warm-up runs and "
                        f"0.2 s, >= {REFERENCE_SECONDS} s of runs timed around invoke()); p50 ratio = median of per-round "
                        "ratios; interval = validate's 95% p50 interval across its --stable rounds (each after the first in "
                        "a fresh session), containing the reference's "
                        "p50 in most rounds",
              "tolerance": TOLERANCE, "cases": cases, "ok": all(c["ok"] for c in cases)}
    write_result("stable_vs_references", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
