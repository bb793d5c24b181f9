"""Models as users hand them over: TorchScript without edgeconv's spec, ONNX with dynamic axes, token-id and
multi-input models, sample inputs as .npy. Shapes and dtypes come from the user's data; refusals say what to give."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")


class _Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class _Text(torch.nn.Module):
    """Token ids and an attention mask (int64), two outputs: pooled scores and per-token features."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 16)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, ids, mask):
        h = self.emb(ids) * mask.unsqueeze(-1).to(torch.float32)
        return self.head(h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)), h


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    cnn = _Cnn().eval()
    torch.jit.trace(cnn, torch.randn(1, 3, 24, 24)).save(str(d / "cnn.pt"))  # plain TorchScript: no shapes kept
    rng = np.random.default_rng(0)
    np.save(d / "cnn_x.npy", rng.standard_normal((6, 3, 24, 24)).astype(np.float32))
    text = _Text().eval()
    ids = torch.randint(0, 100, (1, 12))
    torch.jit.trace(text, (ids, torch.ones_like(ids))).save(str(d / "text.pt"))
    np.savez(d / "text_x.npz", ids=rng.integers(0, 100, (4, 12)), mask=np.ones((4, 12), np.int64))
    torch.onnx.export(cnn, torch.randn(1, 3, 24, 24), str(d / "dyn.onnx"), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    return d


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def _refused(r, code: int, *needles: str):
    assert r.code == code, r
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r
    for n in needles:
        assert n in r.stderr, (n, r.stderr)


def test_torchscript_without_spec_takes_shape_and_dtype_from_npy_sample(cli, files, tmp_path):
    r = cli("convert", files / "cnn.pt", "--sample", files / "cnn_x.npy", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"][0]["shape"] == [1, 3, 24, 24] and m["inputs"][0]["dtype"] == "float32"
    origins = m["input_origins"]["x"]
    assert origins["shape"][1:] == ["--sample cnn_x.npy"] * 3 and origins["dtype"] == "--sample cnn_x.npy"
    assert m["reference"]["samples"] == 6 and m["reference"]["inputs"].endswith("cnn_x.npy")
    r = cli("validate", tmp_path / "b", "--runs", "5", "--json")
    assert r.code == 0 and r.json()["parity"]["ok"], r


def test_torchscript_without_data_asks_for_a_shape_that_fits_the_input(cli, files, tmp_path):
    _refused(cli("convert", files / "cnn.pt", "-o", tmp_path / "b"), 2, "keeps no shapes", "--sample",
             "--input-shape x=1x3xHxW (the first layer is a Conv2d)")
    _refused(cli("convert", files / "text.pt", "-o", tmp_path / "b"), 2, "--input-shape ids=1xN:int64 (token ids",
             "one array per input: ids, mask")


@pytest.mark.parametrize("target", ["onnx", "openvino", "jetson"])
def test_token_ids_two_inputs_two_outputs(cli, files, tmp_path, target):
    out = tmp_path / target
    r = cli("convert", files / "text.pt", "--sample", files / "text_x.npz", "-t", target, "-o", out, "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert [(s["name"], s["shape"], s["dtype"]) for s in m["inputs"]] == [("ids", [1, 12], "int64"), ("mask", [1, 12], "int64")]
    assert len(m["outputs"]) == 2
    r = cli("validate", out, "--runs", "5", "--json")
    assert r.code == 0 and r.json()["parity"]["ok"], r


def test_input_shape_with_dtype_for_a_source_without_data(cli, files, tmp_path):
    r = cli("convert", files / "text.pt", "--input-shape", "ids=1x8:int64", "--input-shape", "mask=1x8:int64",
            "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    assert [s["dtype"] for s in r.json()["manifest"]["inputs"]] == ["int64", "int64"]


def test_onnx_dynamic_height_width_from_sample(cli, files, tmp_path):
    _refused(cli("convert", files / "dyn.onnx", "-o", tmp_path / "b"), 2, "dynamic dimensions [2, 3]",
             "--input-shape x=1x3xHxW")
    r = cli("convert", files / "dyn.onnx", "--sample", files / "cnn_x.npy", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"][0]["shape"] == [1, 3, 24, 24]
    assert m["input_origins"]["x"]["shape"] == ["batch 1 (static)", "model", "--sample cnn_x.npy", "--sample cnn_x.npy"]


def test_int8_calibration_from_npy_fills_the_shape(cli, files, tmp_path):
    r = cli("convert", files / "dyn.onnx", "-t", "openvino", "-p", "int8", "--calib", files / "cnn_x.npy", "-o", tmp_path / "b",
            "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["calibration"]["count"] == 6 and m["input_origins"]["x"]["shape"][2] == "--calib cnn_x.npy"


def test_inspect_counts_macs_at_the_sample_shape_or_says_why_not(cli, files):
    r = cli("inspect", files / "dyn.onnx", "--json")
    assert r.code == 0, r
    info = r.json()
    assert info["macs"] is None and "dynamic dimensions" in info["macs_note"]
    r = cli("inspect", files / "dyn.onnx", "--sample", files / "cnn_x.npy", "--json")
    info = r.json()
    # conv: 24*24 outputs x 8 channels x (3*3*3) MACs each, plus the 8x5 head
    assert info["macs"] == 24 * 24 * 8 * 27 + 8 * 5, info
    r = cli("inspect", files / "text.pt", "--sample", files / "text_x.npz", "--json")
    assert r.code == 0 and r.json()["inputs"][0]["dtype"] == "int64", r


def test_unlabelled_data_measures_agreement_with_the_source(cli, files, tmp_path):
    """--data without labels (an .npy of real inputs): every item through source and artifact, the artifact's
    tolerance applied, top-1 agreement for class scores; its shapes also resolve the model's."""
    r = cli("convert", files / "dyn.onnx", "-t", "openvino", "-p", "int8", "--calib", files / "cnn_x.npy", "--data",
            files / "cnn_x.npy", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    agree = next(c for c in m["checks"] if c["kind"] == "agreement")
    assert agree["samples"] == 6 and agree["data"]["count"] == 6 and 0.0 <= agree["top1_agreement"] <= 1.0
    assert agree["outputs"][0]["cosine"] > 0.9 and m["input_origins"]["x"]["shape"][2].startswith("--data")


def test_data_files_checked_against_the_model(cli, files, tmp_path):
    _refused(cli("convert", files / "cnn.pt", "--data", files / "cnn_x.npy", "--max-accuracy-drop", "1", "-o", tmp_path / "b"),
             2, "labels need an .npz")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 20, 20), np.float32))
    _refused(cli("convert", files / "dyn.onnx", "--input-shape", "x=1x3x24x24", "--sample", wrong, "-o", tmp_path / "b"),
             2, "shape 2x3x20x20 (float32)", "expects Nx3x24x24")
    ints = tmp_path / "ints.npy"
    np.save(ints, np.zeros((2, 3, 24, 24), np.uint8))
    _refused(cli("convert", files / "dyn.onnx", "--sample", ints, "-o", tmp_path / "b"), 2, "dtype uint8", "float32")
    objs = tmp_path / "objs.npy"
    np.save(objs, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _refused(cli("convert", files / "dyn.onnx", "--sample", objs, "-o", tmp_path / "b"), 2, "Python objects")
    _refused(cli("convert", files / "text.pt", "--sample", files / "cnn_x.npy", "-o", tmp_path / "b"), 2,
             "one array, but the model has 2 inputs")


def test_a_tensor_too_large_for_this_machine_is_refused_before_allocation(cli, files, tmp_path):
    _refused(cli("convert", files / "dyn.onnx", "--input-shape", "x=1x3x40000x40000", "-o", tmp_path / "b"), 2, "GiB",
             "input 'x' of shape 1x3x40000x40000")
    # the input fits, the convolution's 8-channel output does not
    _refused(cli("convert", files / "dyn.onnx", "--input-shape", "x=1x3x16000x16000", "-o", tmp_path / "b"), 2,
             "intermediate tensor", "GiB")


def test_internal_error_has_its_own_exit_code_and_a_traceback_file(cli, files, tmp_path, monkeypatch):
    """A bug in edgeconv (here: a shape resolver that breaks) is neither 'a check failed' (1) nor a converter's failure."""
    import edgeconv.convert.steps

    def broken(*a, **k):
        return {}["missing"]

    monkeypatch.setattr(edgeconv.convert.steps, "resolve_inputs", broken)
    r = cli("convert", files / "cnn.pt", "-o", tmp_path / "b", "--json")
    assert r.code == 5, r
    err = r.json()["error"]
    assert err["type"] == "InternalError" and "KeyError" in err["message"]
    path = err["hint"].split("traceback is in ")[1].split(";")[0]
    assert "def broken" not in path and "KeyError" in open(path).read()


def test_converter_exceptions_are_conversion_failures_and_edgeconv_bugs_are_not(files, tmp_path):
    """The library edgeconv called raised (here ONNX Runtime, on a feed of the wrong rank): a conversion failure
    naming it, the traceback kept. edgeconv's own code raised: it stays an exception (an internal error at the CLI)."""
    from edgeconv.convert import converter_step
    from edgeconv.errors import ConversionFailed
    from edgeconv.frontends import LoadOptions
    from edgeconv.frontends.onnx import OnnxSource
    from edgeconv.specs import parse_shape

    source = OnnxSource(files / "dyn.onnx", LoadOptions())
    with pytest.raises(ConversionFailed, match="inside onnxruntime") as info:
        with converter_step("the check", tmp_path / "failed"):
            source.run({"x": np.zeros((1, 3, 5), np.float32)})
    assert "rank" in str(info.value).lower() and (tmp_path / "failed" / "converter-traceback.txt").is_file()
    with pytest.raises(AttributeError):
        with converter_step("our own code", tmp_path / "failed2"):
            parse_shape(123)


def test_a_runtime_refusing_the_file_a_conversion_wrote_is_that_conversions_failure(cli, tmp_path):
    """The same refusal is the user's bad input (exit 2) when validate is handed the file, and a conversion failure
    (exit 4) when convert has just written it (LiteRT refusing a graph onnx2tf wrote, in the zoo)."""
    pytest.importorskip("ai_edge_litert", reason="the tflite extra is not installed")
    from edgeconv.convert import converter_step
    from edgeconv.errors import ArtifactRefused, ConversionFailed
    from edgeconv.runners import open_runner

    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"TFL3" + bytes(200))
    with pytest.raises(ArtifactRefused, match="LiteRT cannot load") as info:
        open_runner("litert", bad)
    assert info.value.exit_code == 2
    with pytest.raises(ConversionFailed, match="running model.tflite: LiteRT cannot load") as info:
        with converter_step("running model.tflite", tmp_path / "failed"):
            open_runner("litert", bad)
    assert info.value.exit_code == 4


def test_relative_output_path_for_a_subprocess_converter(files, tmp_path):
    """onnx2tf runs in a child process with its own working directory: a relative -o must still work."""
    pytest.importorskip("onnx2tf", reason="the tflite extra is not installed")
    proc = subprocess.run([sys.executable, "-m", "edgeconv", "convert", str(files / "cnn.pt"), "--sample",
                           str(files / "cnn_x.npy"), "-t", "tflite", "-o", "rel-bundle", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "rel-bundle" / "model.tflite").is_file()


class _BnCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(2).mean(2))


@pytest.fixture(scope="module")
def opset9(files):
    """An old exporter's file: opset 9, weights listed as graph inputs, BatchNorm unfused."""
    torch.manual_seed(1)
    m = _BnCnn().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    path = files / "old9.onnx"
    torch.onnx.export(m, torch.randn(1, 3, 24, 24), str(path), dynamo=False, opset_version=9, input_names=["x"],
                      output_names=["y"], do_constant_folding=False, keep_initializers_as_inputs=True)
    return path


@pytest.mark.parametrize("target, precision", [("jetson", "int8"), ("tflite", "fp32"), ("openvino", "fp32")])
def test_opset9_graph_is_upgraded_once_for_every_target(cli, opset9, files, tmp_path, target, precision):
    calib = ["--calib", files / "cnn_x.npy"] if precision == "int8" else []
    r = cli("convert", opset9, "-t", target, "-p", precision, *calib, "--sample", files / "cnn_x.npy", "-o", tmp_path / "b",
            "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    canon = m["export"]["canonical"]
    assert canon["opset_before"] == 9 and canon["opset_after"] == m["export"]["opset"] >= 13
    assert any("input" in c for c in canon["changes"]), canon  # the weights listed as inputs are weights again
    assert [s["name"] for s in m["inputs"]] == ["x"]
    assert all(c["ok"] for c in m["checks"])


def test_keras_preprocessing_constants_are_folded_back(cli, tmp_path):
    """tf2onnx lifts a Normalization layer's mean and variance into graph inputs; the model's only input stays 'x'."""
    keras = pytest.importorskip("keras", reason="the keras extra is not installed")
    rng = np.random.default_rng(0)
    data = (rng.standard_normal((64, 10)) * 3 + 5).astype(np.float32)
    norm = keras.layers.Normalization()
    norm.adapt(data)
    inp = keras.Input((10,), name="x")
    out = keras.layers.Dense(4)(keras.layers.Rescaling(0.5)(norm(inp)))
    path = tmp_path / "pre.keras"
    keras.Model(inp, out).save(path)
    np.save(tmp_path / "x.npy", data[:8])
    r = cli("convert", path, "--sample", tmp_path / "x.npy", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert [s["name"] for s in m["inputs"]] == ["x"]
    assert any("constant" in c for c in m["export"]["canonical"]["changes"]), m["export"]["canonical"]
    assert m["checks"][0]["ok"] and m["checks"][0]["outputs"][0]["max_abs"] < 1e-4


def _tiny_bert():
    transformers = pytest.importorskip("transformers", reason="the zoo extra (transformers) is not installed")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).eval()


def test_hugging_face_torchscript_returning_a_dict(cli, tmp_path):
    """A traced Hugging Face model returns a dict (prim::DictConstruct), which the TorchScript exporter cannot
    write; its values become the outputs."""
    model = _tiny_bert()
    ids = torch.randint(0, 100, (1, 10))
    mask = torch.ones_like(ids)
    torch.jit.trace(model, (ids, mask), strict=False).save(str(tmp_path / "bert.pt"))
    np.savez(tmp_path / "s.npz", input_ids=np.random.default_rng(0).integers(0, 100, (2, 10)),
             attention_mask=np.ones((2, 10), np.int64))
    r = cli("convert", tmp_path / "bert.pt", "--sample", tmp_path / "s.npz", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert [s["dtype"] for s in m["inputs"]] == ["int64", "int64"] and m["outputs"][0]["shape"] == [1, 2]


def test_pt2_with_library_output_types(cli, tmp_path):
    """torch.export of a Hugging Face model returns a ModelOutput, a pytree type transformers registers on import."""
    model = _tiny_bert()
    ids = torch.randint(0, 100, (1, 10))
    torch.export.save(torch.export.export(model, (ids,)), str(tmp_path / "bert.pt2"))
    # a fresh process, as a user's: here the test has imported transformers already, which registers the type
    proc = subprocess.run([sys.executable, "-m", "edgeconv", "convert", str(tmp_path / "bert.pt2"), "-o", str(tmp_path / "b"),
                           "--json"], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any("transformers.modeling_outputs" in n for n in json.loads(proc.stdout)["manifest"]["export"]["notes"])


class _PoolNet(torch.nn.Module):
    """A ResNet stem: conv, ReLU, then a padded 3x3/2 MaxPool that TF's SAME padding cannot express."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(3, 2, padding=1)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.conv(x))).mean((2, 3)))


def test_int8_tflite_padded_maxpool_after_relu(cli, files, tmp_path):
    """onnx2tf pads such a MaxPool with float32's minimum; int8 calibration then gets a ~1e36 scale for that tensor
    (XNNPACK refuses it, and nothing survives). The pool's input is non-negative, so a zero Pad is the same."""
    pytest.importorskip("onnx2tf", reason="the tflite extra is not installed")
    torch.manual_seed(0)
    torch.export.save(torch.export.export(_PoolNet().eval(), (torch.randn(1, 3, 24, 24),)), str(tmp_path / "pool.pt2"))
    r = cli("convert", tmp_path / "pool.pt2", "-t", "tflite", "-p", "int8", "--calib", files / "cnn_x.npy", "-o", tmp_path / "b",
            "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert any("MaxPool" in n and "zero Pad" in n for n in m["export"]["notes"]), m["export"]["notes"]
    parity = [c for c in m["checks"] if c["kind"] == "parity"][-1]
    assert parity["ok"] and parity["outputs"][0]["cosine"] > 0.99
