"""`edgeconv debug` on TFLite: each layer compared with the TFLite tensor that really holds it.

onnx2tf's Keras layers drop ONNX names (``tf.nn.convolution_3``), so the conversion records which ONNX node each layer
came from (``model.onnx-names.json``, edgeconv/debug/capture.py ``record_onnx2tf_names``) and debug matches by that
name; values decide only what no name resolves. The model: a small CNN on the 8x8 digits with what MobileNetV3 has
and TFLite splits or fuses (HardSwish; a squeeze-excite block whose HardSigmoid becomes TFLite's mul/add/clamp with its
Conv folded in), converted to int8 by the real tools and run on LiteRT. The planted variant scales two output channels
of ``body`` by 1e4 (undone by ``head``): per-tensor int8 keeps those two and rounds the other 14 away.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SAMPLES

PLANTED = "body"
SPLIT_OR_WEIGHTED = ("Conv", "Gemm", "HardSigmoid", "HardSwish")

def _model(planted: bool):
    import torch
    from torch import nn

    class SqueezeExcite(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.reduce, self.relu, self.expand, self.gate = (nn.Conv2d(c, c // 2, 1), nn.ReLU(), nn.Conv2d(c // 2, c, 1),
                                                              nn.Hardsigmoid())

        def forward(self, x):
            return x * self.gate(self.expand(self.relu(self.reduce(x.mean((2, 3), keepdim=True)))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.act, self.se = nn.Conv2d(1, 16, 3, padding=1), nn.Hardswish(), SqueezeExcite(16)
            self.body, self.relu, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Linear(16 * 64, 10)

        def forward(self, x):
            return self.head(self.relu(self.body(self.se(self.act(self.stem(x))))).flatten(1))

    torch.manual_seed(0)
    model = Net().eval()
    if planted:
        with torch.no_grad():
            for c in (0, 1):  # relu is positively homogeneous: the float function is unchanged
                model.body.weight[c] *= 1e4
                model.body.bias[c] *= 1e4
                model.head.weight[:, c * 64 : (c + 1) * 64] *= 1e-4
    return model


def _bundle(cli, tmp_path_factory, planted: bool):
    import torch

    base = tmp_path_factory.mktemp("planted" if planted else "healthy")
    x = torch.from_numpy(np.load(SAMPLES / "digits_test.npz")["x"][:1])
    source = base / "net.pt2"
    torch.export.save(torch.export.export(_model(planted), (x,)), str(source))
    out = base / "bundle"
    r = cli("convert", source, "-t", "tflite", "-p", "int8", "--calib", SAMPLES / "digits_calib.npz", "-o", out, "--json")
    # the planted one fails its output check (1 or 4) and is kept, marked failed: debug is for that bundle
    assert r.code in (0, 1, 4) and (out / "model.tflite").exists(), r
    from edgeconv.debug.capture import onnx_names_path

    # the conversion wrote the map of onnx2tf's layers to ONNX nodes beside the model, and lists it in the manifest
    assert onnx_names_path(out / "model.tflite").is_file()
    roles = {a["file"]: a["role"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    assert roles.get(onnx_names_path(out / "model.tflite").name) == "debug-names", roles
    return out


@pytest.fixture(scope="module")
def healthy(cli, tmp_path_factory):
    return _bundle(cli, tmp_path_factory, planted=False)


@pytest.fixture(scope="module")
def planted(cli, tmp_path_factory):
    return _bundle(cli, tmp_path_factory, planted=True)


def _capture(bundle):
    import onnx

    from edgeconv.debug import capture
    from edgeconv.debug.graph import layers_of

    art = next(a for a in json.loads((bundle / "manifest.json").read_text())["artifacts"] if a["role"] == "model")
    x = np.load(SAMPLES / "digits_test.npz")["x"]
    feeds = [{"x": x[i : i + 1]} for i in range(16)]
    reference = capture.onnx_reference(bundle / "model.onnx", feeds)
    model = onnx.load(str(bundle / "model.onnx"))
    layers = layers_of(model, "torch", set(reference))
    order = [t for layer in layers for t in layer.tensors]
    got = capture.litert(bundle / art["file"], art["runner_options"], feeds, reference, order)
    return model, layers, reference, got


def _cos(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_every_conv_gemm_and_split_op_is_matched_by_name_to_its_own_tensor(healthy):
    model, layers, reference, got = _capture(healthy)
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    checked = set()
    for node in model.graph.node:
        if node.op_type not in SPLIT_OR_WEIGHTED:
            continue
        layer = next(layer for layer in layers if node.name in layer.nodes)
        readers = consumers.get(node.output[0], [])
        if node.op_type == "Conv" and readers and all(r.op_type == "HardSigmoid" for r in readers):
            # TFLite folds HardSigmoid's x/6 + 0.5 into this Conv: its own output exists nowhere, and nothing stands in
            assert not any(t in got.tensors for t in layer.tensors), (node.name, got.names)
            assert node.name in " ".join(got.notes)
            continue
        # its output, or what TFLite fused it into within its layer (Conv + Relu is one TFLite op)
        held = [t for t in layer.tensors[layer.tensors.index(node.output[0]):] if t in got.tensors]
        assert held, (node.name, layer.tensors, got.notes)
        out = held[-1]
        assert got.matched_by[out] == "name", (node.name, out, got.matched_by, got.notes)
        assert _cos(got.tensors[out], reference[out]) > 0.99, (node.name, got.names[out])
        checked.add(node.op_type)
    assert checked == set(SPLIT_OR_WEIGHTED)
    # HardSigmoid is matched to the clamp TFLite ends it with (what the Mul reads), not its x/6 + 0.5 before the clamp
    hs = next(n for n in model.graph.node if n.op_type == "HardSigmoid").output[0]
    assert got.tensors[hs].min() >= 0 and got.tensors[hs].max() <= 1 + 1e-6
    from edgeconv.core.backends.litert import tflite_interpreter_module

    interp = tflite_interpreter_module().Interpreter(model_path=str(healthy / "model.tflite"))
    index = next(d["index"] for d in interp.get_tensor_details() if d["name"] == got.names[hs])
    assert [op["op_name"] for op in interp._get_ops_details() if index in op["inputs"]] == ["MUL"], got.names[hs]
    assert any("by name" in note for note in got.notes)


def test_debug_names_the_planted_layer_and_says_how_it_was_matched(planted, cli):
    from edgeconv.debug.capture import _keras_layers, onnx_names_path

    r = cli("debug", planted, "--data", SAMPLES / "digits_test.npz", "--json")
    assert r.code == 0, r
    rep = r.json()
    first = rep["first_diverging"]
    assert first is not None and first["source"] == PLANTED and first["op"] == "Conv", rep["layers"]
    assert first["snr_db"] < 3 and first["inherited_snr_db"] > 20  # its own error, not what it read
    # the TFLite tensor compared is the one onnx2tf built for that very ONNX node
    record = json.loads(onnx_names_path(planted / "model.tflite").read_text())
    assert first["layer"] in {record["layers"].get(k) for k in _keras_layers(first["artifact_tensor"])}
    rows = {row["source"]: row for row in rep["layers"]}
    assert rows["stem"]["snr_db"] > 20 and rows["head"]["snr_db"] < 3  # healthy before it; the error reaches the output
    assert any("by name" in note for note in rep["notes"])


def test_without_the_names_map_values_still_find_the_planted_layer_and_say_so(planted, cli, tmp_path):
    from edgeconv.debug.capture import ONNX_NAMES_SUFFIX

    bundle = tmp_path / "old"  # as a bundle converted before the map was written: neither the file nor its entry
    shutil.copytree(planted, bundle, ignore=shutil.ignore_patterns("*" + ONNX_NAMES_SUFFIX))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if not a["file"].endswith(ONNX_NAMES_SUFFIX)]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    model, _, _, got = _capture(bundle)
    outputs = {o.name for o in model.graph.output}  # still by name: the signature names the graph's outputs
    assert {t for t, how in got.matched_by.items() if how == "name"} <= outputs, got.matched_by
    assert sum(how == "values" for how in got.matched_by.values()) >= 5, got.matched_by
    assert any("every match is by values" in n for n in got.notes)
    rep = cli("debug", bundle, "--data", SAMPLES / "digits_test.npz", "--json").json()
    first = rep["first_diverging"]
    assert first is not None and first["source"] == PLANTED, rep["layers"]
