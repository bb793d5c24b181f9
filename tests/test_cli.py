"""CLI surface: start-up without heavy libraries, --version, targets, inspect, budgets, --json purity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from conftest import ROOT

HEAVY = ["torch", "tensorflow", "openvino", "onnx2tf", "tensorrt", "keras", "tf2onnx", "onnxruntime", "onnx"]

BLOCK_HEAVY = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in {'torch', 'tensorflow', 'openvino', 'onnx2tf', 'tensorrt', 'keras', 'tf2onnx'}:
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
"""


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom edgeconv.cli import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "LOADED []" in r.stdout
    assert "convert" in r.stdout and "validate" in r.stdout


def test_every_module_imports_and_help_works_without_heavy_extras():
    """As in an install without the torch/keras extras: every module imports, --help and targets run."""
    code = BLOCK_HEAVY + (
        "import pkgutil, importlib, edgeconv\n"
        "mods = [m.name for m in pkgutil.walk_packages(edgeconv.__path__, 'edgeconv.')]\n"
        "for m in mods: importlib.import_module(m)\n"
        "print('IMPORTED', len(mods))\n"
        "from edgeconv.cli import app\n"
        "for args in (['--help'], ['targets', '--json'], ['--version']):\n"
        "    try:\n        app(args)\n    except SystemExit as e:\n        assert e.code in (0, None), (args, e.code)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split("IMPORTED ")[1].split()[0]) >= 15


def test_missing_extra_is_exit_3_with_install_hint(samples, tmp_path):
    code = BLOCK_HEAVY + (
        "from edgeconv.cli import app\n"
        f"app(['convert', {str(samples / 'digits_cnn.pt')!r}, '-o', {str(tmp_path / 'o')!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "torch is not installed" in r.stderr and "pip install 'edgeconv[torch]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_version(cli):
    from edgeconv import __version__

    r = cli("--version")
    assert r.code == 0 and r.stdout.strip() == f"edgeconv {__version__}"


def test_targets_lists_profiles(cli):
    r = cli("targets", "--json")
    assert r.code == 0
    rows = {t["name"]: t for t in r.json()["targets"]}
    assert rows["onnxruntime-cpu"]["available"] is True
    assert rows["onnxruntime-cpu"]["default_for_family"] and rows["onnxruntime-cpu"]["family"] == "onnx"
    assert rows["onnxruntime-cpu"]["device_part"] == "here"
    # what needs the device is said, not hidden behind a green tick
    assert "host emulation" in rows["jetson-orin-nano"]["device_part"]
    assert "edgetpu_compiler" in rows["coral-usb"]["device_part"]
    assert rows["jetson-orin-nano"]["default_for_family"]


def test_user_profile_toml(cli, samples, tmp_path):
    """A user's own .toml narrows a backend: here an fp32-only board with opset ≤ 13, which the export exceeds."""
    prof = tmp_path / "my-board.toml"
    prof.write_text(
        'name = "my-board"\nfamily = "onnx"\nbackend = "onnx"\nrunner = "onnxruntime"\nprecisions = ["fp32"]\n'
        "max_opset = 13\n[tolerances]\nfp32 = { atol = 1e-4, min_cosine = 0.9999 }\n"
    )
    r = cli("convert", samples / "digits_cnn.pt", "--target", prof, "--opset", "18", "-o", tmp_path / "o")
    assert r.code == 2 and "opset 18 is newer than my-board accepts (13)" in " ".join(r.stderr.split())
    assert not (tmp_path / "o").exists()
    r = cli("convert", samples / "digits_cnn.pt", "--target", prof, "--precision", "fp16", "-o", tmp_path / "o")
    assert r.code == 2 and "precision 'fp16' is not offered for my-board" in " ".join(r.stderr.split())
    # exported at the board's opset
    r = cli("convert", samples / "digits_cnn.pt", "--target", prof, "-o", tmp_path / "o", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["target"]["profile"] == "my-board" and m["export"]["opset"] == 13
    assert any("opset 13, the highest my-board accepts" in n for n in m["export"]["notes"])


def test_inspect_counts_macs_and_ops(cli, bundles):
    r = cli("inspect", bundles("pt") / "model.onnx", "--json")
    assert r.code == 0, r
    info = r.json()
    # conv1 16x8x8 outputs x (1x3x3) + conv2 32x8x8 x (16x3x3) + fc 512x64 + fc 64x10
    assert info["macs"] == 16 * 64 * 9 + 32 * 64 * 144 + 512 * 64 + 64 * 10
    assert info["ops"]["Conv"] == 2 and info["ops"]["Gemm"] == 2
    assert info["inputs"][0]["shape"] == [1, 1, 8, 8] and info["inputs"][0]["dynamic_dims"] == []
    # parameters: conv weights+biases (BN folded into conv1) and the two linear layers
    assert info["parameters"] == (16 * 9 + 16) + (32 * 16 * 9 + 32) + (512 * 64 + 64) + (64 * 10 + 10)


def test_inspect_source_formats_and_dynamic_dims(cli, samples, bundles):
    r = cli("inspect", samples / "digits_keras.keras", "--json")
    assert r.code == 0, r
    info = r.json()
    assert info["format"] == "keras" and info["inputs"][0]["layout"] == "NCHW" and info["macs"] > 300_000
    r = cli("inspect", samples / "digits_cnn.pt")  # human table
    assert r.code == 0 and "MACs" in r.stdout
    dyn = cli("convert", samples / "digits_cnn.pt", "--dynamic-batch", "-o", bundles("pt").parent / "dyn-inspect", "--json")
    assert dyn.code == 0
    info = cli("inspect", bundles("pt").parent / "dyn-inspect" / "model.onnx", "--json").json()
    assert info["inputs"][0]["dynamic_dims"] == [0] and info["inputs"][0]["shape"][0] == "batch"


def test_latency_budget_fails_with_exit_1(cli, bundles):
    r = cli("validate", bundles("pt"), "--runs", "5", "--max-latency-ms", "0.000001", "--json")
    assert r.code == 1
    rep = r.json()
    assert rep["ok"] is False and rep["budgets"][0]["name"] == "max_latency_ms_p50" and not rep["budgets"][0]["ok"]


def test_accuracy_budget(cli, bundles, samples, tmp_path):
    """A budget of 0 points passes for fp32 ONNX; labels shuffled make the source and artifact agree but both
    drop; an impossible (negative) budget fails."""
    data = ["--data", samples / "digits_test.npz"]
    assert cli("validate", bundles("pt"), *data, "--max-accuracy-drop", "0", "--runs", "3").code == 0
    r = cli("validate", bundles("pt"), *data, "--max-accuracy-drop", "-1", "--runs", "3", "--json")
    assert r.code == 1 and r.json()["budgets"][0]["ok"] is False


def test_accuracy_budget_without_known_source_accuracy(cli, bundles, samples, tmp_path):
    with np.load(samples / "digits_test.npz") as z:
        np.savez(tmp_path / "other.npz", x=z["x"][:100], y=z["y"][:100])
    r = cli("validate", bundles("pt"), "--data", tmp_path / "other.npz", "--max-accuracy-drop", "1")
    assert r.code == 2 and "--source" in r.stderr
    r = cli("validate", bundles("pt"), "--data", tmp_path / "other.npz", "--max-accuracy-drop", "1",
            "--source", samples / "digits_cnn.pt", "--runs", "3", "--json")
    assert r.code == 0, r


def test_parity_failure_is_exit_4_with_table(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--precision", "fp16", "--atol", "output=1e-9", "-o", tmp_path / "o")
    assert r.code == 4
    err = " ".join(r.stderr.split())
    assert "does not compute what the" in err and "max abs" in err and "needs" in err
    assert not (tmp_path / "o").exists()


def test_json_output_is_one_document(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_keras.keras", "-o", tmp_path / "o", "--json")
    assert r.code == 0
    doc = json.loads(r.stdout)  # nothing else on stdout
    assert doc["ok"] and doc["bundle"].endswith("o")
    r = cli("validate", tmp_path / "nope", "--json")
    assert r.code == 2 and json.loads(r.stdout)["error"]["exit_code"] == 2


def test_target_options_belong_to_their_targets(cli, samples, tmp_path):
    """An option is declared once, by the targets that take it; given to another target it is refused (exit 2)
    naming those that do, before any work."""
    r = cli("convert", samples / "digits_cnn.pt", "--target", "onnx", "--dla-core", "0", "-o", tmp_path / "b")
    assert r.code == 2 and "--dla-core is an option of jetson" in r.stderr and "onnxruntime-cpu" in r.stderr, r
    assert not (tmp_path / "b").exists()
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--quant-preset", "fastest", "-o", tmp_path / "b")
    assert r.code == 2 and "performance, mixed" in r.stderr, r
    r = cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "--io-dtype", "int8", "-o", tmp_path / "b")
    assert r.code == 2 and "tflite, coral, ethos-u" in r.stderr, r


def test_convert_help_groups_options_in_panels():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgeconv", "convert", "--help"], capture_output=True, text=True, timeout=60,
                         env={**__import__("os").environ, "COLUMNS": "120"}, check=True).stdout
    for panel in ("Calibration (int8)", "Target: Jetson", "Target: OpenVINO", "Target: TFLite, Coral, Ethos-U",
                  "Target: ExecuTorch"):
        assert panel in out, panel
    jetson = out[out.index("Target: Jetson"):]
    assert "--dla-core" in jetson.split("╰")[0]


SSH_FLAGS = ("--remote", "--hosts", "--identity", "--ssh-option", "--remote-python", "--timeout")


def test_ssh_options_are_one_group_on_every_remote_command():
    """validate, profile, build and selftest take the same SSH options, in one panel, from one declaration."""
    import os

    for command in ("validate", "profile", "build", "selftest"):
        out = subprocess.run([sys.executable, "-m", "edgeconv", command, "--help"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "COLUMNS": "160"}, check=True).stdout
        panel = out[out.index("SSH (--remote)"):].split("╰")[0]
        assert [f for f in SSH_FLAGS if f in panel] == list(SSH_FLAGS), (command, panel)
        assert "[default: python3]" in panel and "[default: 30.0]" in panel


def test_build_takes_its_options_from_the_target_table():
    from edgeconv.target_options import as_arguments, options_of

    assert [o.flag for o in options_of("build")] == ["--compiler", "--dla-core", "--workspace"]
    # what `build --remote` passes on to edgeconv on the device: the options given, a 0 included, defaults left out
    assert as_arguments({"dla_core": 0, "workspace_mb": 512, "compiler": None}) == ["--dla-core", "0", "--workspace", "512"]


def test_a_reader_that_goes_away_ends_the_command_as_a_closed_pipe_not_a_bug():
    """`edgeconv targets --json | head`: the closed pipe is exit 141 (SIGPIPE's status), no "internal error"."""
    proc = subprocess.Popen([sys.executable, "-m", "edgeconv", "targets", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "internal error" not in err and "Traceback" not in err, err
