"""Shared by the benchmarks: machine description and result files in bench/results/."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODELS = ROOT / "bench" / "models"
EDGECONV = [sys.executable, "-m", "edgeconv"]


def machine() -> dict:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    from importlib import metadata

    versions = {}
    for dist in ("onnxruntime", "onnx", "torch", "tensorflow-cpu", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions, "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def write_result(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), **result}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "machine"}, indent=2))
    return path


def mobilenet(suffix: str = ".keras") -> Path:
    """The MobileNetV2-sized source model, Keras (``.keras``) or PyTorch (``.pt``), made once in bench/models/."""
    out = MODELS / f"mobilenetv2{suffix}"
    if not out.exists():
        subprocess.run([sys.executable, str(ROOT / "samples" / "make_mobilenet.py"), "--out", str(out)], check=True, timeout=600)
    return out


def bundle(source: Path, name: str, *convert_args: str) -> Path:
    """``edgeconv convert SOURCE -o bench/models/NAME ARGS…``, once; later runs reuse the bundle."""
    out = MODELS / name
    if not (out / "manifest.json").exists():
        subprocess.run([*EDGECONV, "convert", str(source), "-o", str(out), "--force", *convert_args], check=True, timeout=3600,
                       cwd=ROOT, capture_output=True)
    return out


def mobilenet_onnx() -> Path:
    """The Keras MobileNetV2-sized model as an edgeconv ONNX bundle."""
    return bundle(mobilenet(".keras"), "mobilenetv2-onnx", "--target", "onnx")
