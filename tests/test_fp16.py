"""The fp16 range check and ``--fallback auto`` for fp16 (edgeconv/convert/fp16_range.py, fp16_fallback.py), on real
runtimes.

The planted model: the digits CNN with its second conv (``features.3``) scaled by 1e6 and the next Linear's (``head.1``)
weights by 1e-6. The function is unchanged in fp32; in fp16 the conv's weights and activations pass 65504 and the
Linear's weights underflow to nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAMPLES

PLANTED = "features.3"
SCALE = 1e6


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import torch

    sys.path.insert(0, str(SAMPLES))
    from digits_model import DigitsCNN

    model = DigitsCNN().eval()
    model.load_state_dict(torch.load(SAMPLES / "digits_cnn_state.pt", weights_only=True))
    x = torch.from_numpy(np.load(SAMPLES / "digits_test.npz")["x"])
    with torch.no_grad():
        before = model(x)
        conv, fc = model.features[3], model.head[1]
        for param, factor in ((conv.weight, SCALE), (conv.bias, SCALE), (fc.weight, 1 / SCALE)):
            param *= factor
        assert torch.allclose(before, model(x), atol=1e-4)  # the same function in fp32
    path = tmp_path_factory.mktemp("fp16-planted") / "planted.pt2"
    torch.export.save(torch.export.export(model, (x[:1],)), str(path))
    return path


def _fp16(cli, model, out, target, *extra):
    return cli("convert", model, "-t", target, "-p", "fp16", "--data", SAMPLES / "digits_test.npz", "-o", out, *extra)


class _Once(dict):
    """Each target's conversion once per module, made when a test first asks for it."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, target):
        self[target] = self.make(target)
        return self[target]


@pytest.fixture(scope="module")
def plain(planted, tmp_path_factory, cli):
    """fp16 without the fallback, people's output."""
    base = tmp_path_factory.mktemp("fp16-plain")
    return _Once(lambda t: (base / t, _fp16(cli, planted, base / t, t)))


@pytest.fixture(scope="module")
def guarded(planted, tmp_path_factory, cli):
    base = tmp_path_factory.mktemp("fp16-auto")
    return _Once(lambda t: (base / t, _fp16(cli, planted, base / t, t, "--fallback", "auto", "--json")))


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite"])
def test_plain_fp16_fails_and_the_overflow_is_named_before_the_build(plain, target):
    bundle, r = plain[target]
    text = " ".join((r.stdout + r.stderr).split())
    named = text.find(f"fp16 range: {PLANTED} (Conv2d): values reach")
    assert named >= 0, r
    assert named < text.find("Converting for"), text  # before anything is built
    assert "head.1 (Linear): 100% of its non-zero values are below fp16's smallest normal" in text
    if target == "openvino":
        # OpenVINO keeps out-of-range weights in fp32 and this host's CPU plugin computes in f32 (no f16 math on
        # x86 without AVX512-FP16): parity passes here, the range check fails the bundle for an f16 device
        assert r.code == 1, r
        m = json.loads((bundle / "manifest.json").read_text())
        check = next(c for c in m["checks"] if c["kind"] == "fp16-range")
        assert not check["ok"] and check["flagged"][0]["source"] == PLANTED and m["status"] == "failed-check"
    else:
        assert r.code == 4 and "does not compute what the source computes" in text, r


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite"])
def test_fallback_auto_keeps_the_planted_layer_in_fp32(guarded, target):
    bundle, r = guarded[target]
    assert r.code == 0, r
    m = r.json()["manifest"]
    fb = m["fallback"]
    kept = [x["source"] for x in fb["float_layers"]]
    assert fb["ok"] and fb["precision"] == "fp16" and kept[0] == PLANTED and len(kept) <= 2, fb
    assert m["status"] == "ok" and all(c["ok"] for c in m["checks"])
    if target == "openvino":  # the IR carries OpenVINO's own fp32 marker on the conv and its weights
        xml = (bundle / "model.xml").read_text()
        layer = xml[xml.find('name="node_conv2d_1/WithoutBiases"'):]
        assert "DisablePrecisionConversion" in layer[: layer.find("</layer>")]
    if target == "tflite":  # the conv's and the Linear's ops read fp32 weights, the rest stays fp16 behind DEQUANTIZE
        note = next(n for n in m["export"]["notes"] if n.startswith("fp16: "))
        assert "2 op(s) read their weights in fp32" in note and "tf.nn.convolution_1" in note, note
        assert "DEQUANTIZE" in fb["mechanism"]


def test_litert_cpu_computes_fp16_weights_in_fp32(guarded):
    """Measured, not assumed: LiteRT's CPU path (XNNPACK) upcasts an fp16-weight model's weights and computes its
    activations in fp32, so the planted conv's activations (past 65504) pass; forcing XNNPACK's fp16 inference
    (TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16, emulated on x86 with AVX2) makes them overflow even with that conv's
    weights in fp32: no per-op fp32 exists in a runtime that computes in fp16."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.options import CpuOptions, Options

    bundle, r = guarded["tflite"]
    assert r.code == 0, r
    ref = np.load(bundle / "reference.npz")
    x, expected = ref["input:x"][:1].transpose(0, 2, 3, 1), ref["output:output"][:1]
    interp = Interpreter(model_path=str(bundle / "model.tflite"))
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    assert np.abs(interp.get_tensor(interp.get_output_details()[0]["index"]) - expected).max() < 0.05
    forced = CompiledModel.from_file(str(bundle / "model.tflite"),
                                     options=Options(cpu_options=CpuOptions(num_threads=1, xnnpack_flags=0x4)))
    ins, outs = forced.create_input_buffers(0), forced.create_output_buffers(0)
    ins[0].write(np.ascontiguousarray(x).reshape(-1))
    forced.run_by_index(0, ins, outs)
    got = np.asarray(outs[0].read(expected.size, np.float32))
    assert not np.isfinite(got).all() or np.abs(got - expected.reshape(-1)).max() > 1.0, got


def test_jetson_bundle_keeps_the_layer_in_fp32_for_tensorrt(guarded):
    import onnxruntime as ort

    from edgeconv.targets.jetson_device import precision_plan

    bundle, r = guarded["jetson"]
    assert r.code == 0, r
    m = r.json()["manifest"]
    build = next(a for a in m["artifacts"] if a["role"] == "model")["device_build"]
    assert build["tensorrt_line"] == "10" and "node_conv2d_1" in build["fp32_layers"]
    script = (bundle / "build.sh").read_text()
    assert "node_conv2d_1:fp32" in script and "--precisionConstraints=obey" in script and "--fp16" in script
    typed = (bundle / "build_strongly_typed.sh").read_text()
    assert "build_strongly_typed.sh" in script and "--stronglyTyped" in typed and "--onnx=model_trt_fp16.onnx" in typed
    assert "--fp16" not in typed
    for s in ("build.sh", "build_strongly_typed.sh"):
        subprocess.run(["sh", "-n", str(bundle / s)], check=True, timeout=10)
    weak, strong = precision_plan(build, 10), precision_plan(build, 11)
    assert weak["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and "node_conv2d_1" in weak["fp32_layers"]
    assert strong == {"onnx": "model_trt_fp16.onnx", "strongly_typed": True, "flags": [], "fp32_layers": []}
    # the strongly typed graph computes the source's function on this host (its fp32 layers cast in the graph)
    ref = np.load(bundle / "reference.npz")
    sess = ort.InferenceSession(str(bundle / "model_trt_fp16.onnx"))
    x, expected = ref["input:x"], ref["output:output"]
    got = np.concatenate([sess.run(None, {"x": x[i: i + 1]})[0] for i in range(len(x))])
    assert np.abs(got - expected).max() < 0.05


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite"])
def test_debug_opens_fp16_bundles(guarded, cli, target):
    bundle, _ = guarded[target]
    r = cli("debug", bundle, "--data", SAMPLES / "digits_test.npz", "--samples", "8", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["precision"] == "fp16" and rep["first_diverging"] is None
    rows = {row["source"]: row for row in rep["layers"]}
    assert rows[PLANTED]["snr_db"] is not None and rows[PLANTED]["snr_db"] > 40  # kept in fp32: no loss
