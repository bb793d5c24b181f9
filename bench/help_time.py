"""`edgeconv --help` wall time (a fresh process each run): the start-up budget is 0.3 s."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_result  # noqa: E402

BUDGET_S = 0.3


def main(runs: int = 20) -> dict:
    exe = shutil.which("edgeconv", path=str(Path(sys.executable).parent)) or "edgeconv"
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, capture_output=True, timeout=60)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    result = {"method": f"{runs} runs of `{Path(exe).name} --help` as a subprocess, wall time",
              "median_s": med, "min_s": min(times), "max_s": max(times), "budget_s": BUDGET_S, "ok": med <= BUDGET_S}
    write_result("help_time", result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
