"""The light install a device with pip would use: `pip install edgeconv[litert]` into a fresh venv (a real wheel
build: profiles and the selftest sample ship inside it), then validate a TFLite bundle with no torch or TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_light_install_validates_without_torch_or_tensorflow(cli, samples, tmp_path):
    bundle = tmp_path / "tfl"
    assert cli("convert", samples / "digits_cnn.pt", "--target", "tflite", "-o", bundle, "--data", samples / "digits_test.npz",
               "--json").code == 0
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{ROOT}[litert]"], check=True, timeout=1200)
    py, exe = str(venv / "bin" / "python"), str(venv / "bin" / "edgeconv")
    heavy = subprocess.run([py, "-c", "import importlib.util as u; "
                                      "print([m for m in ('torch', 'tensorflow', 'openvino', 'onnx2tf') if u.find_spec(m)])"],
                           capture_output=True, text=True, timeout=60)
    assert heavy.stdout.strip() == "[]"
    targets = json.loads(subprocess.run([exe, "targets", "--json"], capture_output=True, text=True, timeout=120,
                                        check=True).stdout)
    names = {t["name"] for t in targets["targets"]}
    assert {"litert-cpu", "jetson-orin-nano", "coral-usb"} <= names  # the profiles ship inside the wheel
    # edgeconv/core ships whole: the installed edgeconv writes the same device runner, byte for byte
    from edgeconv.bundle import device_runner_bytes

    write = "import sys; from edgeconv.bundle import device_runner_bytes as b; sys.stdout.buffer.write(b())"
    built = subprocess.run([py, "-c", write], capture_output=True, timeout=60, check=True).stdout
    assert built == device_runner_bytes()
    r = subprocess.run([exe, "validate", str(bundle), "--data", str(samples / "digits_test.npz"), "--runs", "10", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["measured_on"]["runtime"] == "litert" and rep["accuracy"]["drop_points"] == 0.0
    r = subprocess.run([exe, "convert", str(samples / "digits_cnn.pt"), "-o", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "pip install 'edgeconv[torch]'" in r.stderr
