"""Does `edgeconv debug` run on every int8 target, on the MobileNetV2-sized model? (issue 15)

The MobileNetV2-sized model (samples/make_mobilenet.py; PyTorch `.pt` and Keras `.keras`) is converted, as a user would,
with `edgeconv convert MODEL --target T --precision int8 --calib CALIB --data DATA` for T in onnx, jetson, openvino,
tflite, coral and ethos-u (a bundle that misses parity is kept: `debug` is for that one too), then
`edgeconv debug BUNDLE --data DATA --samples N --json` runs on it. Per cell it records the exit codes, how many of the
canonical graph's layers were matched in the artifact (and how: by name or by values, where the capture says), the
first diverging layer with its source name, the three worst layers, and the seconds each command took. Calibration
and data are seeded random images (the model has random weights: what is measured is whether the debugger works on the
target's real int8 graph, not an accuracy).

    flock /tmp/edgeconv-heavy.lock .venv/bin/python bench/debug_targets.py [--sources pt,keras] [--targets …] [--samples 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, MODELS, ROOT, mobilenet, write_result

TARGETS = ["onnx", "jetson", "openvino", "tflite", "coral", "ethos-u"]


def images(name: str, n: int, seed: int, layout: str) -> Path:
    """``n`` seeded images in [-1, 1] at 224x224, NCHW for the PyTorch model, NHWC for the Keras one."""
    path = MODELS / f"debug_targets_{name}_{layout}.npz"
    if not path.exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        x = np.random.default_rng(seed).uniform(-1, 1, (n, 3, 224, 224)).astype(np.float32)
        np.savez(path, x=x if layout == "NCHW" else x.transpose(0, 2, 3, 1))
    return path


def run(cmd: list[str], timeout: float = 1800) -> tuple[int, str, str, float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    return p.returncode, p.stdout, p.stderr, round(time.perf_counter() - t0, 1)


def error_of(stdout: str, stderr: str) -> str:
    try:
        doc = json.loads(stdout)
        return (doc.get("error") or {}).get("message", "")[:300]
    except ValueError:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""


def cell(source: Path, target: str, calib: Path, data: Path, samples: int, work: Path) -> dict:
    bundle = work / f"{source.suffix[1:]}-{target}"
    code, out, err, secs = run([*EDGECONV, "convert", str(source), "--target", target, "--precision", "int8",
                                "--calib", str(calib), "--data", str(data), "-o", str(bundle), "--force", "--json"])
    row = {"target": target, "convert_exit": code, "convert_s": secs}
    if code != 0:
        row["convert_error"] = error_of(out, err)
    if not (bundle / "manifest.json").is_file():
        return row
    code, out, err, secs = run([*EDGECONV, "debug", str(bundle), "--data", str(data), "--samples", str(samples), "--json"])
    row |= {"debug_exit": code, "debug_s": secs}
    if code != 0:
        row["debug_error"] = error_of(out, err)
        return row
    doc = json.loads(out)
    rows = doc["layers"]
    first = doc.get("first_diverging")
    worst = sorted((r for r in rows if r.get("added_snr_db") is not None), key=lambda r: r["added_snr_db"])[:3]
    row |= {"runtime": doc.get("runtime"), "artifact": doc.get("artifact"), "bundle_status": doc.get("status"),
            "layers": len(rows), "matched": doc["matched_layers"], "unmatched": doc["unmatched_layers"],
            "matched_by": _count(r.get("matched_by") for r in rows if r.get("snr_db") is not None),
            "with_source_name": sum(1 for r in rows if r.get("source")),
            "first_diverging": (None if not first
                                else {k: first.get(k) for k in ("layer", "source", "op", "snr_db", "added_snr_db")}),
            "worst": [{k: r.get(k) for k in ("layer", "source", "op", "snr_db", "added_snr_db")} for r in worst]}
    return row


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v or "unspecified"] = out.get(v or "unspecified", 0) + 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", default="pt,keras")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--samples", type=int, default=8)
    a = ap.parse_args()
    results = []
    work = Path(tempfile.mkdtemp(prefix="debug-targets-"))
    try:
        for kind in a.sources.split(","):
            source = mobilenet(f".{kind}")
            layout = "NCHW" if kind == "pt" else "NHWC"
            calib, data = images("calib", 32, 0, layout), images("data", 16, 1, layout)
            for target in a.targets.split(","):
                row = {"source": source.name, **cell(source, target, calib, data, a.samples, work)}
                print(json.dumps(row), flush=True)
                results.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ran = sum(r.get("debug_exit") == 0 for r in results)
    write_result("debug_targets", {"criterion": "debug runs (exit 0) on every int8 target's bundle", "debug_ran": ran,
                                   "cells": len(results), "results": results})
    return 0 if ran == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
