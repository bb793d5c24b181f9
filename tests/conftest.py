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


def planted_digits(folder: Path) -> Path:
    """The planted model of the int8 tests, as ``folder/planted.pt2``: the digits CNN with two of its second conv's
    (``features.3``) 32 output channels scaled by 1e4 and the matching inputs of the next Linear (``head.1``) by 1e-4.
    The function is unchanged in float; per-tensor int8 of that activation keeps the two huge channels and rounds the
    other 30 to nothing."""
    import numpy as np
    import torch

    sys.path.insert(0, str(SAMPLES))
    from digits_model import DigitsCNN

    model = DigitsCNN()
    model.load_state_dict(torch.load(SAMPLES / "digits_cnn_state.pt", weights_only=True))
    model.eval()
    x = torch.from_numpy(np.load(SAMPLES / "digits_test.npz")["x"])
    with torch.no_grad():
        before = model(x)
        conv, fc = model.features[3], model.head[1]
        for c in (0, 1):
            conv.weight[c] *= 1e4
            conv.bias[c] *= 1e4
            fc.weight[:, c * 16 : (c + 1) * 16] *= 1e-4
        after = model(x)
    assert torch.equal(before.argmax(1), after.argmax(1))  # the same function in float
    path = folder / "planted.pt2"
    torch.export.save(torch.export.export(model, (x[:1],)), str(path))
    return path
