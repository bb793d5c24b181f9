"""Shared fixtures: the committed samples, a CLI runner, and bundles converted once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


class Result:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.code, self.stdout, self.stderr = code, stdout, stderr

    def json(self):
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"Result(code={self.code}, stdout={self.stdout[-2000:]!r}, stderr={self.stderr[-2000:]!r})"


@pytest.fixture(scope="session")
def cli():
    """Run edgeconv in-process (fast: torch/TF stay imported between calls)."""
    from edgeconv.cli import app

    runner = CliRunner()

    def run(*args: str) -> Result:
        r = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return Result(r.exit_code, r.stdout, r.stderr)

    return run


def run_subprocess(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeconv", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, **kw)


def convert_digits(cli, out: Path, *args, source: str = "digits_cnn.pt") -> dict:
    """``edgeconv convert samples/SOURCE -o OUT --data digits_test.npz ARGS`` (+ the calibration set for int8);
    asserts it worked and returns the manifest."""
    calib = ["--calib", SAMPLES / "digits_calib.npz"] if "int8" in args else []
    r = cli("convert", SAMPLES / source, "-o", out, "--data", SAMPLES / "digits_test.npz", "--json", *args, *calib)
    assert r.code == 0, r
    return r.json()["manifest"]


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def bundles(tmp_path_factory, cli):
    """Convert each digits sample once (fp32, ONNX target, source accuracy recorded)."""
    base = tmp_path_factory.mktemp("bundles")
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            args = {
                "pt": [SAMPLES / "digits_cnn.pt"],
                "pt2": [SAMPLES / "digits_cnn.pt2"],
                "state": [SAMPLES / "digits_cnn_state.pt", "--model-class", f"{SAMPLES / 'digits_model.py'}:DigitsCNN",
                          "--input-shape", "x=1x1x8x8"],
                "keras": [SAMPLES / "digits_keras.keras"],
            }[name]
            out = base / name
            r = cli("convert", *args, "--target", "onnx", "-o", out, "--data", SAMPLES / "digits_test.npz", "--json")
            assert r.code == 0, r
            made[name] = out
        return made[name]

    return get
