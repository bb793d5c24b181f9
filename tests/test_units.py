"""Pure logic: shape parsing, tolerances and parity arithmetic, latency statistics, atomic bundle writes."""

from __future__ import annotations

import numpy as np
import pytest

from edgeconv.bundle import BundleWriter
from edgeconv.errors import BadInput
from edgeconv.parity import Tolerance, compare, parse_atol_overrides
from edgeconv.specs import TensorSpec, apply_input_shapes, guess_layout, parse_input_shapes
from edgeconv.stats import summarize_latency


def test_parse_input_shapes():
    assert parse_input_shapes(["x=1x3x8x8"]) == {"x": [1, 3, 8, 8]}
    assert parse_input_shapes(["1,3,8,8"]) == {None: [1, 3, 8, 8]}
    assert parse_input_shapes(["a=batchx3"]) == {"a": ["batch", 3]}
    for bad in (["x=1x0"], ["x=1x-3y"], ["x="]):
        with pytest.raises(BadInput):
            parse_input_shapes(bad)
    with pytest.raises(BadInput, match="mix of named and unnamed"):
        parse_input_shapes(["1x3", "x=1x3"])


def test_apply_input_shapes():
    specs = [TensorSpec("x", [None, 3, None, None], "float32")]
    out = apply_input_shapes(specs, {None: [2, 3, 32, 32]})
    assert out[0].shape == [2, 3, 32, 32] and out[0].layout == "NCHW"
    with pytest.raises(BadInput, match="unknown input"):
        apply_input_shapes(specs, {"y": [1, 3, 8, 8]})
    with pytest.raises(BadInput, match="rank"):
        apply_input_shapes(specs, {"x": [1, 3, 8]})
    with pytest.raises(BadInput, match="contradicts"):
        apply_input_shapes(specs, {"x": [1, 4, 8, 8]})
    # a batch of 1 is a placeholder unless the shapes are baked in
    assert apply_input_shapes([TensorSpec("x", [1, 3], "float32")], {"x": [4, 3]})[0].shape == [4, 3]
    with pytest.raises(BadInput):
        apply_input_shapes([TensorSpec("x", [1, 3], "float32")], {"x": [4, 3]}, baked=True)


def test_guess_layout():
    assert guess_layout([1, 3, 224, 224], None) == "NCHW"
    assert guess_layout([1, 224, 224, 3], None) == "NHWC"
    assert guess_layout([1, 64, 56, 56], "NCHW") == "NCHW"
    assert guess_layout([1, 10], "NCHW") is None


def test_compare_collects_every_failure():
    ref = [np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32), np.ones(4, np.float32)]
    got = [ref[0] + 1e-6, ref[1] + 0.5, np.ones(5, np.float32)]
    rep = compare("t", ["a", "b", "c"], ref, got, Tolerance(1e-4, 0.99))
    assert not rep.ok
    assert [o.name for o in rep.failures] == ["b", "c"]
    b = rep.failures[0]
    assert b.max_abs == pytest.approx(0.5) and "max abs" in b.reason
    assert rep.failures[1].reason == "shape differs"
    text = rep.failure_text()
    assert "5.00e-01" in text and "shape differs" in text  # what each output would have needed


def test_per_output_override_and_cosine():
    ref = [np.array([[1.0, 2.0, 3.0]]), np.array([[1.0, 0.0]])]
    got = [ref[0] + 0.01, np.array([[0.0, 1.0]])]
    over = parse_atol_overrides(["a=0.1"])
    rep = compare("t", ["a", "b"], ref, got, Tolerance(1e-3, 0.9), over)
    assert rep.outputs[0].ok and rep.outputs[0].atol == 0.1
    assert not rep.outputs[1].ok and "cosine" in rep.outputs[1].reason
    assert parse_atol_overrides(["1e-3"]) == {None: 1e-3}
    with pytest.raises(BadInput):
        parse_atol_overrides(["a=x"])


def test_nan_output_fails():
    rep = compare("t", ["a"], [np.ones(3)], [np.array([1.0, np.nan, 1.0])], Tolerance(1.0, 0.0))
    assert not rep.ok and "NaN" in rep.outputs[0].reason


def test_summarize_latency():
    s = summarize_latency([0.001] * 98 + [0.002, 0.010], batch=4)
    assert s["runs"] == 100 and s["p50_ms"] == pytest.approx(1.0) and s["max_ms"] == pytest.approx(10.0)
    assert s["min_ms"] == pytest.approx(1.0) and s["p99_ms"] > s["p90_ms"]
    assert s["throughput_items_s"] == pytest.approx(4 / (s["p50_ms"] / 1e3))  # from the median, as profile's rows


def test_bundle_writer_is_atomic(tmp_path):
    out = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with BundleWriter(out) as work:
            (work / "manifest.json").write_text("{}")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with BundleWriter(out) as work:
        (work / "manifest.json").write_text("{}")
    assert (out / "manifest.json").exists() and [p.name for p in tmp_path.iterdir()] == ["b"]
    with pytest.raises(BadInput, match="already exists"):
        with BundleWriter(out):
            pass
    with BundleWriter(out, force=True) as work:
        (work / "manifest.json").write_text('{"v": 2}')
    assert (out / "manifest.json").read_text() == '{"v": 2}' and [p.name for p in tmp_path.iterdir()] == ["b"]


def test_write_json_never_replaces_a_device(tmp_path):
    import os

    from edgeconv.bundle import write_json

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        write_json(fifo, {"a": 1})
        assert not fifo.is_file() and os.read(fd, 100).startswith(b'{\n  "a": 1')
    finally:
        os.close(fd)
    write_json(tmp_path / "r.json", {"b": 2})
    assert (tmp_path / "r.json").read_text().startswith("{") and not (tmp_path / "r.json.tmp").exists()


def test_profile_atol_scales_with_the_output_magnitude_but_an_override_does_not():
    """float error grows with magnitude: an output reaching 1e6 may differ by 1e-4 x 1e6 under the profile's atol;
    --atol NAME=VALUE is what the user asked, absolute."""
    ref = [np.array([[1e6, -3e5, 2.0]], np.float32)]
    got = [ref[0] + np.array([[50.0, 0.0, 0.0]], np.float32)]
    rep = compare("t", ["y"], ref, got, Tolerance(1e-4, 0.99))
    assert rep.ok and rep.outputs[0].allowed_abs == pytest.approx(100.0)
    rep = compare("t", ["y"], ref, got, Tolerance(1e-4, 0.99), {"y": 1.0})
    assert not rep.ok and rep.outputs[0].allowed_abs == 1.0 and "max abs" in rep.outputs[0].reason
    small = [np.array([[0.5, -0.25]], np.float32)]
    assert not compare("t", ["y"], small, [small[0] + 1e-3], Tolerance(1e-4, 0.99)).ok  # unit scale: unchanged


def test_debug_moves_a_channel_last_tensor_back_even_when_c_equals_h_equals_w():
    """A stride-2 stem at 64 px gives 1x32x32x32: channel-last and channel-first have the same shape, and only the
    values tell them apart. The zoo's fp16 tflite debug reported such stems at 0 dB before (they passed parity)."""
    import numpy as np

    from edgeconv.debug.capture import _in_layout

    ref = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)  # NCHW
    nhwc = np.ascontiguousarray(ref.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(_in_layout(nhwc, ref), ref)
    np.testing.assert_array_equal(_in_layout(ref.copy(), ref), ref)  # a tensor onnx2tf left channel-first stays
