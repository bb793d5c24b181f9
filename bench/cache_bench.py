"""`convert --cache` across the TFLite family, on the MobileNetV2-sized PyTorch model (int8, 32 calibration images).

Each round starts from an empty cache: `--target tflite -p int8 --cache C` fills it (not timed), then
`--target coral -p int8` and `--target ethos-u -p int8` are timed with `--cache C` (the source, its outputs, the
canonical graph and onnx2tf's SavedModel are hits: only TFLiteConverter and the target's own step run) and without a
cache (everything again), order alternating between rounds. Both write the same model bytes, which is checked.

    flock /tmp/edgeconv-heavy.lock .venv/bin/python bench/cache_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, MODELS, ROOT, alternating, median, mobilenet, write_result

TARGETS = ("coral", "ethos-u")


def calibration() -> Path:
    path = MODELS / "cache_bench_calib_NCHW.npz"
    if not path.exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=np.random.default_rng(0).uniform(-1, 1, (32, 3, 224, 224)).astype(np.float32))
    return path


def convert(source: Path, target: str, calib: Path, out: Path, cache: Path | None) -> tuple[float, dict]:
    cmd = [*EDGECONV, "convert", str(source), "--target", target, "-p", "int8", "--calib", str(calib), "-o", str(out),
           "--force", "--json", *(["--cache", str(cache)] if cache else [])]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False, timeout=1800)
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-2000:]}")
    return secs, json.loads(p.stdout)["manifest"]


def model_sha(bundle: Path, manifest: dict) -> str:
    art = next(a for a in manifest["artifacts"] if a["role"] == "model")
    return hashlib.sha256((bundle / art["file"]).read_bytes()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    source, calib = mobilenet(".pt"), calibration()
    work = Path(tempfile.mkdtemp(prefix="cache-bench-"))
    rounds, same = [], []
    try:
        for i in range(a.rounds):
            cache = work / f"cache-{i}"
            convert(source, "tflite", calib, work / "fill", cache)  # fills the cache, not timed
            row, shas = {}, {}

            def measure(label: str, cache: Path = cache, shas: dict = shas) -> float:
                target, mode = label.split(":")
                out = work / f"{target}-{mode}"
                secs, m = convert(source, target, calib, out, cache if mode == "cached" else None)
                if mode == "cached":
                    events = m["export"]["cache"]
                    assert events.get("onnx2tf") == "hit" and events.get("export") == "hit", events
                shas[label] = model_sha(out, m)
                return secs

            labels = tuple(f"{t}:{mode}" for t in TARGETS for mode in ("cached", "uncached"))
            row = alternating(measure, labels if i % 2 == 0 else labels[::-1], 1)[0]
            rounds.append(row)
            same.append(all(shas[f"{t}:cached"] == shas[f"{t}:uncached"] for t in TARGETS))
            print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"method": __doc__.split("\n\n")[1].replace("\n", " "), "rounds": rounds, "same_bytes_every_round": all(same)}
    for t in TARGETS:
        cached = [r[f"{t}:cached"] for r in rounds]
        uncached = [r[f"{t}:uncached"] for r in rounds]
        result[t] = {"cached_s_median": median(cached), "uncached_s_median": median(uncached),
                     "ratio_median_of_rounds": median([c / u for c, u in zip(cached, uncached)])}
    write_result("cache_bench", result)
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
