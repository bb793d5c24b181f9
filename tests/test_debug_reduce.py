"""``edgeconv debug --reduce`` (edgeconv/debug/reduce.py) on real failing bundles:

- the planted digits CNN of the int8 tests (``features.3`` with two channels scaled by 1e4) on ONNX Runtime int8 and on
  LiteRT int8 (each piece built again by onnx2tf and TFLiteConverter);
- a planted fp32 conversion bug on TFLite: EfficientViT LiteMLA's value path at 16 heads (``attn``: every tensor after
  the split is 1x16x16x16, which onnx2tf takes for channel-last and moves the axes of). The float bundle that misses
  parity is kept, marked failed, for ``debug``, which names ``attn`` as the first diverging layer.

The reduced piece still fails on its own on the same backend, and the command printed reproduces it with that backend's
runtime alone."""

from __future__ import annotations

import json
import shlex
import subprocess

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, planted_digits

PLANTED = "features.3"


def _reproduces(found) -> None:
    argv = shlex.split(found["command"])
    run = subprocess.run([subprocess.sys.executable, *argv[1:]], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "SNR" in run.stdout, run  # the failure, reproduced with the backend's runtime alone


@pytest.mark.parametrize("target, runtime", [("onnx", "onnxruntime"), ("tflite", "litert")])
def test_reduce_writes_a_small_piece_that_still_fails(cli, tmp_path, target, runtime):
    model = planted_digits(tmp_path)
    bundle = tmp_path / "int8"
    r = cli("convert", model, "-t", target, "-p", "int8", "--calib", SAMPLES / "digits_calib.npz",
            "--data", SAMPLES / "digits_test.npz", "-o", bundle, "--json")
    assert r.code in (1, 4), r  # the plain int8 bundle fails and is kept
    out = tmp_path / "reduced"
    r = cli("debug", bundle, "--data", SAMPLES / "digits_test.npz", "--reduce", out, "--json")
    assert r.code == 0, r
    found = r.json()
    assert found["first_diverging"] == PLANTED and found["runtime"] == runtime
    piece = onnx.load(str(out / "reduced.onnx"))
    assert 1 <= len(piece.graph.node) <= 5 and piece.graph.node[0].op_type == "Conv", piece.graph.node
    assert (out / "inputs.npz").is_file() and (out / found["artifact"]).is_file()
    assert found["tried"][-1]["fails"] and found["tried"][-1]["snr_db"] < found["threshold_db"]
    _reproduces(found)


def planted_translation(folder):
    """``folder/values.pt2`` and ``folder/values.npz``: a 1x1 conv (``proj``), EfficientViT LiteMLA's value path at 16
    heads (``attn``: (1, 16, 48, 16) → transpose → split in three → relu(k)ᵀ @ pad(v, ones)) and a 1x1 conv (``head``).
    The tensors after the split are 1x16x16x16: onnx2tf 1.28 takes them for channel-last and moves their axes."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Values(nn.Module):
        def forward(self, x):
            _, k, v = x.transpose(2, 3).split(16, dim=3)
            return torch.relu(k).transpose(2, 3) @ F.pad(v, (0, 1), value=1.0)

    class Planted(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.attn, self.head = nn.Conv2d(16, 16, 1), Values(), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.head(self.attn(self.proj(x)))

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((4, 16, 48, 16)).astype(np.float32)
    np.savez(folder / "values.npz", x=x)
    torch.export.save(torch.export.export(Planted().eval(), (torch.from_numpy(x[:1]),)), str(folder / "values.pt2"))
    return folder / "values.pt2", folder / "values.npz"


@pytest.fixture(scope="module")
def wrong_fp32(cli, tmp_path_factory):
    """The planted model converted to fp32 TFLite once: onnx2tf translates it wrongly."""
    base = tmp_path_factory.mktemp("fp32-translation")
    model, data = planted_translation(base)
    r = cli("convert", model, "-t", "tflite", "--sample", data, "-o", base / "b", "--json")
    return base / "b", data, r


def test_a_wrong_float_translation_is_kept_marked_failed(cli, wrong_fp32):
    """The convert still fails (exit 4, onnx2tf's op named), but the bundle is there, marked failed, and validate fails."""
    bundle, _, r = wrong_fp32
    assert r.code == 4, r
    err = r.json()["error"]
    assert "translates Transpose" in err["message"] and "1x16x16x16" in err["message"], err
    assert "is kept and marked failed" in err["message"] and "edgeconv debug" in err["hint"], err
    m = json.loads((bundle / "manifest.json").read_text())
    check = next(c for c in m["checks"] if c["kind"] == "onnx2tf-translation")
    assert m["status"] == "failed-check" and not check["ok"] and check["op"] == "Transpose", m["checks"]
    assert (bundle / "model.tflite").is_file()
    assert cli("validate", bundle, "--json").code == 1


def test_debug_names_the_layer_onnx2tf_got_wrong_and_reduces_it(cli, wrong_fp32, tmp_path):
    """debug compares the fp32 TFLite model with onnxruntime per layer: the first layer beyond fp32's tolerance is the
    planted module; --reduce writes a piece of at most 5 nodes that still fails on LiteRT, and its command says so."""
    bundle, data, _ = wrong_fp32
    r = cli("debug", bundle, "--data", data, "--json")
    assert r.code == 0, r
    rep = r.json()
    first = rep["first_diverging"]
    assert first["source"] == "attn" and first["snr_db"] < rep["threshold_db"] == 60, first
    assert all(row["snr_db"] > 100 for row in rep["layers"][: first["index"]]), rep["layers"]  # exact until there
    out = tmp_path / "reduced"
    r = cli("debug", bundle, "--data", data, "--reduce", out, "--json")
    assert r.code == 0, r
    found = r.json()
    assert found["first_diverging"] == "attn" and found["runtime"] == "litert" and found["precision"] == "fp32", found
    assert 1 <= len(onnx.load(str(out / "reduced.onnx")).graph.node) <= 5 and found["tried"][-1]["fails"], found
    _reproduces(found)
