"""Every shipped device profile's default precision, converted for real (issue 35): ``edgeconv convert MODEL --target P``
with no --precision (and --calib where the default is int8) from the digits .pt2, and from the TorchScript and Keras
sources for the profiles whose parser stops at an old opset (Jetson Nano/TX2: 13). Each must succeed, or exit 3 naming
a missing runtime. Writes bench/results/profile_defaults.json.

    flock /tmp/edgeconv-heavy.lock .venv/bin/python bench/profile_defaults.py [--only jetson-nano,intel-npu]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, ROOT, write_result  # noqa: E402

SAMPLES = ROOT / "samples"
SOURCES = {"pt2": [SAMPLES / "digits_cnn.pt2"],
           "torchscript": [SAMPLES / "digits_cnn.pt", "--sample", SAMPLES / "digits_calib.npz"],
           "keras": [SAMPLES / "digits_keras.keras"]}


def plan(only: list[str] | None) -> list[tuple[str, str, str]]:
    from edgeconv.profiles import all_profiles

    runs = []
    for name, prof in sorted(all_profiles().items()):
        if only and name not in only:
            continue
        kinds = ["pt2", "torchscript", "keras"] if prof.max_opset and prof.max_opset < 18 else ["pt2"]
        runs += [(name, prof.default_precision, kind) for kind in kinds]
    return runs


def convert(target: str, precision: str, kind: str, out: Path) -> dict:
    cmd = [*EDGECONV, "convert", *map(str, SOURCES[kind]), "--target", target, "-o", str(out), "--force"]
    if precision.startswith("int8"):
        cmd += ["--calib", str(SAMPLES / "digits_calib.npz")]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, cwd=ROOT)
    err = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    ok = proc.returncode == 0 or (proc.returncode == 3 and bool(err))
    return {"target": target, "precision": precision, "source": kind, "exit": proc.returncode, "ok": ok,
            "seconds": round(time.perf_counter() - t0, 1), "error": err[0] if err else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated profile names")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeconv-defaults-") as tmp:
        for i, (target, precision, kind) in enumerate(plan(args.only.split(",") if args.only else None)):
            row = convert(target, precision, kind, Path(tmp) / f"b{i}")
            rows.append(row)
            verdict = "ok " if row["ok"] else "BAD"
            print(f"{verdict} exit {row['exit']} {target:18} {precision:6} {kind:11} {row['seconds']:6.1f} s"
                  + (f"  {row['error']}" if row["error"] else ""), flush=True)
    write_result("profile_defaults", {"rows": rows, "all_ok": all(r["ok"] for r in rows)})
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
