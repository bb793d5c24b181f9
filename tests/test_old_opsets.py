"""ONNX files from old exporters (opsets 6-8) and a quiet terminal (issue 27).

ONNX Runtime has no kernel for AveragePool-1 or BatchNormalization-6 any more, so it refuses opset-6 graphs that use
them: their reference outputs come from onnx's reference evaluator, and the canonical graph (upgraded to opset 17)
is checked against them on every target. At opsets 7 and 8 those ops resolve to AveragePool-7 and
BatchNormalization-7, which ONNX Runtime still implements (checked below): those graphs keep ONNX Runtime as their
reference. The libraries' own output (TensorFlow's C++ logging, TFLiteConverter, ONNX Runtime's warnings) stays
off the terminal and goes to the bundle's convert.log.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import onnx
import pytest
from conftest import SAMPLES, run_subprocess
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

SHAPE = [1, 3, 8, 8]


def vi(name: str, shape):
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def model_of(nodes, outputs, opset: int, inits=(), extra_opsets=()):
    """A graph as an old exporter wrote it: IR 3, every initializer also listed as a graph input."""
    ins = [vi("x", SHAPE)] + [h.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = h.make_graph(nodes, f"opset{opset}", ins, outputs, initializer=list(inits))
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 3
    return m


def average_pool(opset: int):
    return model_of([h.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])],
                    [vi("y", [1, 3, 4, 4])], opset)


def batch_norm(opset: int):
    rng = np.random.default_rng(1)
    inits = [nh.from_array(rng.uniform(0.5, 2, 3).astype(np.float32), n) for n in ("scale", "bias", "mean", "var")]
    kw = {"is_test": 1} if opset < 7 else {}  # BatchNormalization-6's inference mode
    return model_of([h.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], name="bn", **kw)],
                    [vi("y", SHAPE)], opset, inits)


def network(opset: int):
    """conv → batchnorm → relu → average pool → flatten → gemm, at ``opset``."""
    rng = np.random.default_rng(0)

    def w(name, *shape, low=None):
        a = rng.uniform(low, 2, shape) if low else rng.normal(0, 0.3, shape)
        return nh.from_array(a.astype(np.float32), name)

    inits = [w("cw", 4, 3, 3, 3), w("cb", 4), w("s", 4, low=0.5), w("b", 4), w("m", 4), w("v", 4, low=0.5),
             w("gw", 10, 64), w("gb", 10)]
    old = {"is_test": 1} if opset < 7 else {}
    nodes = [h.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             h.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn", **old),
             h.make_node("Relu", ["n"], ["r"], name="relu"),
             h.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Flatten", ["p"], ["f"], name="flatten"),
             h.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="fc", transB=1, **({"broadcast": 1} if opset < 7 else {}))]
    return model_of(nodes, [vi("y", [1, 10])], opset, inits)


GRAPHS = {"avgpool": average_pool, "batchnorm": batch_norm, "network": network}


def ort_refusal(model) -> str | None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - the refusal is what is looked at
        return str(exc)
    return None


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("old_opsets")
    paths = {}
    for name, make in GRAPHS.items():
        for opset in (6, 7, 8):
            m = make(opset)
            onnx.checker.check_model(m)
            paths[name, opset] = d / f"{name}{opset}.onnx"
            onnx.save(m, str(paths[name, opset]))
    return paths


def test_onnx_runtime_refuses_opset6_avgpool_and_batchnorm_not_7_or_8():
    assert "AveragePool(1)" in ort_refusal(average_pool(6))
    assert "BatchNormalization(6)" in ort_refusal(batch_norm(6))
    assert "NOT_IMPLEMENTED" in ort_refusal(network(6))
    for opset in (7, 8):  # AveragePool-7, BatchNormalization-7: implemented
        assert [ort_refusal(make(opset)) for make in GRAPHS.values()] == [None, None, None]


def _convert(cli, src, out, target: str) -> dict:
    r = cli("convert", src, "--target", target, "-o", out, "--json")
    assert r.code == 0, r
    return r.json()["manifest"]


@pytest.mark.parametrize("opset", [6, 7, 8])
@pytest.mark.parametrize("name", ["avgpool", "batchnorm"])
def test_single_op_graphs_convert(cli, files, tmp_path, name, opset):
    m = _convert(cli, files[name, opset], tmp_path / "b", "onnx")
    assert m["reference"]["runtime"] == ("onnx.reference" if opset == 6 else "onnxruntime")
    canon = m["export"]["canonical"]
    assert (canon["opset_before"], canon["opset_after"]) == (opset, 17)
    assert f"opset {opset} → 17 (onnx.version_converter)" in canon["changes"]
    parity = next(c for c in m["checks"] if c["kind"] == "parity")
    assert parity["ok"] and parity["samples"] == 4
    if opset == 6:
        op = {"avgpool": "AveragePool(1)", "batchnorm": "BatchNormalization(6)"}[name]
        assert any("onnx.reference" in n and op in n for n in m["export"]["notes"]), m["export"]["notes"]
    # the reference is the original graph's numbers, from the runtime the manifest names
    with np.load(tmp_path / "b" / "reference.npz") as ref:
        x, y = ref["input:x"], ref["output:y"]
    np.testing.assert_allclose(y, original_outputs(files[name, opset], x, opset), rtol=1e-5, atol=1e-6)


def original_outputs(path, x: np.ndarray, opset: int) -> np.ndarray:
    """The original file run one sample at a time (its batch is 1): onnx's reference evaluator at opset 6, else ONNX
    Runtime (onnx 1.23's evaluator picks BatchNormalization-6, which returns a tuple, at opsets 7 and 8)."""
    if opset == 6:
        from onnx.reference import ReferenceEvaluator

        run = ReferenceEvaluator(str(path)).run
    else:
        import onnxruntime as ort

        run = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run
    return np.concatenate([run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


@pytest.mark.parametrize("target", ["onnx", "openvino", "tflite"])
def test_opset6_network_converts_and_validates(cli, files, tmp_path, target):
    m = _convert(cli, files["network", 6], tmp_path / "b", target)
    assert m["reference"]["runtime"] == "onnx.reference"
    assert m["export"]["canonical"]["opset_after"] == 17
    assert m["status"] == "ok" and all(c["ok"] for c in m["checks"])
    assert len([c for c in m["checks"] if c["kind"] == "parity"]) == (1 if target == "onnx" else 2)
    if target == "tflite":  # the child process's output is in the bundle's log too
        assert "── onnx2tf and TFLiteConverter (edgeconv/targets/tflite_job.py) ──" in (tmp_path / "b/convert.log").read_text()
    r = cli("validate", tmp_path / "b", "--runs", "5", "--json")
    assert r.code == 0, r
    assert r.json()["ok"]


@pytest.mark.parametrize("opset", [7, 8])
def test_opset7_and_8_networks_convert_with_onnx_runtime_as_reference(cli, files, tmp_path, opset):
    for target in ("onnx", "openvino", "tflite"):
        m = _convert(cli, files["network", opset], tmp_path / target, target)
        assert m["reference"]["runtime"] == "onnxruntime"
        assert m["export"]["canonical"]["opset_after"] == 17 and all(c["ok"] for c in m["checks"])
        r = cli("validate", tmp_path / target, "--runs", "5", "--json")
        assert r.code == 0 and r.json()["ok"], r


def test_graph_neither_runtime_runs_is_bad_input_with_both_reasons(files, tmp_path):
    """AveragePool-1 (no ONNX Runtime kernel) and an op of an unknown domain (no reference implementation); run as a
    user would, in a subprocess: exit 2, both reasons, and the library lines of the failed step shown."""
    nodes = [h.make_node("AveragePool", ["x"], ["a"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Mystery", ["a"], ["y"], name="mystery", domain="com.example")]
    src = tmp_path / "neither.onnx"
    onnx.save(model_of(nodes, [vi("y", [1, 3, 4, 4])], 6, extra_opsets=[h.make_opsetid("com.example", 1)]), str(src))
    p = run_subprocess("convert", src, "--target", "onnx", "-o", tmp_path / "b", timeout=120)
    assert p.returncode == 2, p
    err = " ".join(p.stderr.split())
    assert "neither ONNX Runtime nor onnx's reference evaluator can run" in err
    assert "com.example:Mystery" in err and "Node type 'Mystery' from domain 'com.example' is unknown" in err
    assert "what the libraries printed during 'Loading neither.onnx'" in err and "opset 6 model" in err
    assert not (tmp_path / "b").exists()


def test_verbose_shows_library_lines(files, tmp_path):
    quiet = run_subprocess("convert", files["avgpool", 6], "--target", "onnx", "-o", tmp_path / "q", timeout=120)
    loud = run_subprocess("--verbose", "convert", files["avgpool", 6], "--target", "onnx", "-o", tmp_path / "v",
                          timeout=120)
    assert quiet.returncode == loud.returncode == 0, (quiet, loud)
    assert "Transpose optimizer failed" not in quiet.stderr + quiet.stdout
    assert "Transpose optimizer failed" in loud.stderr
    after = run_subprocess("convert", files["avgpool", 6], "--target", "onnx", "-o", tmp_path / "a", "--verbose",
                           timeout=120)  # the root's switch after the command, where users type it
    assert after.returncode == 0 and "Transpose optimizer failed" in after.stderr, after
    log = (tmp_path / "q" / "convert.log").read_text()
    assert "── Loading avgpool6.onnx ──" in log and "Transpose optimizer failed: Unsupported ONNX opset: 6" in log
    assert "\x1b[" not in log  # ONNX Runtime's colours are not kept
    assert json.loads((tmp_path / "q" / "manifest.json").read_text())["log"] == "convert.log"


# -- a quiet terminal: Keras → TFLite int8 ----------------------------------------------------------------------------
NOISE = re.compile(r"^[IWEF]\d{4} |oneDNN|fully_quantize|tensorflow|absl|XNNPACK|^WARNING|\[[WE]:onnxruntime|^INFO:", re.I)


def test_keras_to_tflite_int8_prints_only_edgeconv_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the libraries as loud as for a user
    env["COLUMNS"] = "200"
    out = tmp_path / "b"
    p = run_subprocess("convert", SAMPLES / "digits_keras.keras", "--target", "tflite", "--precision", "int8",
                       "--calib", SAMPLES / "digits_calib.npz", "-o", out, timeout=300, env=env)
    assert p.returncode == 0, p
    err = p.stderr.splitlines()
    assert err and all(re.match(r"^(✓ |  \S)", line) for line in err), p.stderr  # step lines and their notes only
    assert any(line.startswith("✓ Converting for litert-cpu (int8)") for line in err)
    lines = p.stdout.splitlines()
    assert lines[0].startswith("bundle ") and lines[1].startswith("exported with tf2onnx")  # the summary
    noisy = [line for line in lines + err if NOISE.search(line) and not line.startswith("exported with")]
    assert noisy == [], noisy
    log = (out / "convert.log").read_text()
    assert "fully_quantize: 0" in log  # TFLiteConverter
    assert re.search(r"^I\d{4} .*oneDNN", log, re.M)  # TensorFlow's C++ logging
    assert "── Loading digits_keras.keras ──" in log and "── Converting for litert-cpu (int8) ──" in log
