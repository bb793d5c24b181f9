"""Run every benchmark, one at a time (2 cores: never two heavy ones at once). Results: bench/results/*.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["help_time.py", "validate_vs_bare.py", "openvino_bench.py", "tflite_bench.py", "tflite_layers.py", "profile_bench.py",
           "compress_bench.py", "stable_vs_references.py", "memory_vs_bare.py"]


def main() -> int:
    failed = []
    for s in SCRIPTS:
        print(f"== {s}", flush=True)
        if subprocess.run([sys.executable, str(HERE / s)], check=False, timeout=3600).returncode != 0:
            failed.append(s)
    print("missed budgets: " + (", ".join(failed) if failed else "none"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
