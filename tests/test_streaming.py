"""Stateful and streaming models (issue 34): a Silero-VAD-like interface (a 1x512 chunk ``input``, a GRU state
``state`` [layers, batch, hidden] whose graph dims are ``[2, batch, 16]``, a 0-d int64 ``sr``; a score and the next
state out), exported to ONNX at opsets 15 and 18 (with an ``If`` on ``sr`` and without; and with ``sr`` first), as
TorchScript and as .pt2; the same with an LSTM (two states) at opset 15 with the ``If``; and a keyword-spotting model
with a [1, 1, T, F] input and a ring-buffer state. Each takes its one-feed .npz sample, converts on real converters,
validates on real runtimes, and ``validate --stream 50`` carries the state over 50 chunks (and fails, exit 1, when
the state is not carried)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
onnx = pytest.importorskip("onnx")

LAYERS, HIDDEN, CHUNK = 2, 16, 512
KWS_T, KWS_F, KWS_K = 4, 20, 6


class Vad(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Linear(CHUNK, 32)
        self.rnn = torch.nn.GRU(32, HIDDEN, num_layers=LAYERS)
        self.head = torch.nn.Linear(HIDDEN, 1)

    def forward(self, input, state, sr):  # noqa: A002 - Silero's own input name
        x = torch.relu(self.enc(input)).unsqueeze(0)  # [1, batch, 32]
        y, state_next = self.rnn(x, state)
        return torch.sigmoid(self.head(y[0]) * (sr.to(torch.float32) / 16000.0)), state_next


class Lstm(Vad):
    """The same interface with an LSTM: two states, ``h0``→``hn`` and ``c0``→``cn``."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(32, HIDDEN, num_layers=LAYERS)

    def forward(self, input, h0, c0, sr):  # noqa: A002
        y, (hn, cn) = self.rnn(torch.relu(self.enc(input)).unsqueeze(0), (h0, c0))
        return torch.sigmoid(self.head(y[0]) * (sr.to(torch.float32) / 16000.0)), hn, cn


class SrFirst(torch.nn.Module):
    """The VAD model with its 0-d ``sr`` as the first input: nothing to count samples on there."""

    def __init__(self, vad):
        super().__init__()
        self.vad = vad

    def forward(self, sr, input, state):  # noqa: A002
        return self.vad(input, state, sr)


class Kws(torch.nn.Module):
    """A [1, 1, T, F] feature chunk and a ring buffer of the last K frames' features: class scores and the buffer."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * KWS_K, 4)

    def forward(self, x, buffer_in):
        f = torch.relu(self.conv(x)).mean(3)  # [1, 8, T]
        buffer_out = torch.cat([buffer_in, f], 2)[:, :, -KWS_K:]
        return self.head(buffer_out.flatten(1)), buffer_out


def _with_if_on_sr(path, dest):
    """The graph with its score scaled by an ``If`` on the scalar ``sr`` (1 at 16 kHz, 0.5 otherwise), as Silero's
    own graphs branch on the sample rate."""
    from onnx import TensorProto, helper

    m = onnx.load(str(path))
    g = m.graph
    branch = [helper.make_graph([helper.make_node("Constant", [], [f"k{i}"], value=helper.make_tensor(
        f"v{i}", TensorProto.FLOAT, [], [v]))], f"b{i}", [], [helper.make_tensor_value_info(f"k{i}", TensorProto.FLOAT, [])])
        for i, v in enumerate((1.0, 0.5))]
    old = g.output[0].name
    for n in g.node:
        n.output[:] = [f"{old}_raw" if o == old else o for o in n.output]
    g.node.extend([
        helper.make_node("Constant", [], ["sr16k"], value=helper.make_tensor("c", TensorProto.INT64, [], [16000])),
        helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["scale"], then_branch=branch[0], else_branch=branch[1]),
        helper.make_node("Mul", [f"{old}_raw", "scale"], [old])])
    onnx.checker.check_model(m)
    onnx.save(m, str(dest))
    return dest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The VAD-like model as ONNX (opsets 15 and 18, 18 with an If on sr), TorchScript and .pt2, the KWS model as
    ONNX; one-feed samples for both."""
    d = tmp_path_factory.mktemp("streaming")
    torch.manual_seed(0)
    vad, kws = Vad().eval(), Kws().eval()
    x, h, sr = torch.randn(1, CHUNK), torch.zeros(LAYERS, 1, HIDDEN), torch.tensor(16000, dtype=torch.int64)
    out = {}
    for opset in (15, 18):
        out[f"onnx{opset}"] = d / f"vad{opset}.onnx"
        torch.onnx.export(vad, (x, h, sr), str(out[f"onnx{opset}"]), input_names=["input", "state", "sr"],
                          output_names=["output", "stateN"], opset_version=opset, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "state": {1: "batch"}, "output": {0: "batch"},
                                        "stateN": {1: "batch"}})
    out["onnx18_if"] = _with_if_on_sr(out["onnx18"], d / "vad18_if.onnx")
    torch.onnx.export(Lstm().eval(), (x, h, h, sr), str(d / "lstm15.onnx"), input_names=["input", "h0", "c0", "sr"],
                      output_names=["output", "hn", "cn"], opset_version=15, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "h0": {1: "batch"}, "c0": {1: "batch"}, "output": {0: "batch"},
                                    "hn": {1: "batch"}, "cn": {1: "batch"}})
    out["lstm15_if"] = _with_if_on_sr(d / "lstm15.onnx", d / "lstm15_if.onnx")
    out["sr_first"] = d / "sr_first.onnx"
    torch.onnx.export(SrFirst(vad), (sr, x, h), str(out["sr_first"]), input_names=["sr", "input", "state"],
                      output_names=["output", "stateN"], opset_version=15, dynamo=False)
    out["torchscript"] = d / "vad.ts.pt"
    torch.jit.trace(vad, (x, h, sr)).save(str(out["torchscript"]))
    out["pt2"] = d / "vad.pt2"
    torch.export.save(torch.export.export(vad, (x, h, sr)), str(out["pt2"]))
    out["kws"] = d / "kws.onnx"
    torch.onnx.export(kws, (torch.randn(1, 1, KWS_T, KWS_F), torch.zeros(1, 8, KWS_K)), str(out["kws"]), opset_version=15,
                      input_names=["x", "buffer_in"], output_names=["logits", "buffer_out"], dynamo=False)
    rng = np.random.default_rng(0)
    out["vad_sample"] = d / "vad_sample.npz"
    np.savez(out["vad_sample"], input=rng.standard_normal((1, CHUNK)).astype(np.float32),
             state=np.zeros((LAYERS, 1, HIDDEN), np.float32), sr=np.array(16000, np.int64))
    out["lstm_sample"] = d / "lstm_sample.npz"
    np.savez(out["lstm_sample"], input=rng.standard_normal((1, CHUNK)).astype(np.float32), sr=np.array(16000, np.int64),
             **{k: np.zeros((LAYERS, 1, HIDDEN), np.float32) for k in ("h0", "c0")})
    out["kws_sample"] = d / "kws_sample.npz"
    np.savez(out["kws_sample"], x=rng.standard_normal((1, 1, KWS_T, KWS_F)).astype(np.float32),
             buffer_in=np.zeros((1, 8, KWS_K), np.float32))
    return out


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory, cli):
    """One conversion per (model, target), made when a test first asks for it."""
    base = tmp_path_factory.mktemp("stream_bundles")
    made = {}

    def get(model: str, target: str):
        if (model, target) not in made:
            sample = models[{"kws": "kws_sample", "lstm15_if": "lstm_sample"}.get(model, "vad_sample")]
            dest = base / f"{model}-{target}"
            r = cli("convert", models[model], "--target", target, "--sample", sample, "-o", dest, "--json")
            assert r.code == 0, r
            made[model, target] = dest
        return made[model, target]

    return get


def _bundle(bundles, model, target):
    """The bundle, or a skip when the target's extra is not installed."""
    extra = {"tflite": "onnx2tf", "openvino": "openvino"}.get(target)
    if extra:
        pytest.importorskip(extra, reason=f"the {target} extra is not installed")
    return bundles(model, target)


def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def _stream(cli, bundle, *args):
    r = cli("validate", bundle, "--stream", 50, "--chunk-ms", 32, "--runs", 5, "--warmup", 1, "--min-seconds", 0,
            "--warmup-seconds", 0, "--json", *args)
    return r, (json.loads(r.stdout) if r.stdout.strip().startswith("{") else None)


@pytest.mark.parametrize(("model", "target"), [("onnx15", t) for t in ("onnx", "openvino", "jetson", "tflite")]
                         + [("onnx18", t) for t in ("onnx", "openvino", "jetson")])  # opset 18 on tflite: onnx18_if's
def test_vad_one_feed_sample_converts_validates_and_streams(cli, bundles, model, target):
    bundle = _bundle(bundles, model, target)
    m = _manifest(bundle)
    shapes = {s["name"]: (s["shape"], s["dtype"]) for s in m["inputs"]}
    assert shapes == {"input": ([1, 512], "float32"), "state": ([2, 1, 16], "float32"), "sr": ([], "int64")}
    assert m["input_origins"]["input"]["reading"].startswith("--sample vad_sample.npz: one feed as the model takes it")
    r, rep = _stream(cli, bundle)
    assert r.code == 0, r
    assert rep["parity"]["ok"]
    s = rep["stream"]
    assert s["ok"] and s["steps_ok"] == 50 and s["pairs"] == [["state", "stateN"]] and s["paired_by"] == "by name"
    assert max(d["max"] for d in s["drift"].values()) < 1e-4
    assert s["latency"]["chunks"] == 50 and s["latency"]["real_time_factor"] > 1
    if target == "tflite":  # the 0-d int64 sr stays an int64 tensor in the artifact (onnx2tf writes it [1])
        art = next(a for a in m["artifacts"] if a["file"] == "model.tflite")
        assert art["tensor_dtypes"]["sr"] == "int64", art


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_a_0d_first_input_converts_and_streams(cli, bundles, target):
    """The first input 0-d (``sr``): the batch and the sample count come from the first input that has them."""
    m = _manifest(_bundle(bundles, "sr_first", target))
    assert [s["shape"] for s in m["inputs"]] == [[], [1, 512], [2, 1, 16]] and m["reference"]["samples"] == 1
    r, rep = _stream(cli, _bundle(bundles, "sr_first", target))
    assert r.code == 0, r
    assert rep["parity"]["ok"] and rep["stream"]["ok"] and rep["stream"]["pairs"] == [["state", "stateN"]]


def test_compare_times_the_source_on_one_feed_with_a_0d_first_input(cli, models, tmp_path):
    r = cli("compare", models["sr_first"], "--targets", "onnx", "--precisions", "fp32", "--runs", 3, "--out-dir",
            tmp_path / "c", "--json")
    assert r.code == 0, r
    base = r.json()["source_baseline"]
    assert base["batch"] == 1 and base["p50_ms"] > 0, base


def test_state_not_carried_fails_the_stream_with_exit_1(cli, bundles, tmp_path):
    """The same stream with the state pairing broken on the artifact's side (each step fed the first state again)
    misses the source's outputs from step 1 on: exit 1, and the report says where."""
    from edgeconv.validate import ValidateRequest, build_request

    bundle = bundles("onnx15", "onnx")
    request = build_request(ValidateRequest(bundle, stream=50, runs=5, warmup=1, min_seconds=0, warmup_seconds=0))
    request["stream"]["pairs"] = []
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    r = cli("validate", bundle, "--request", path, "--json")
    assert r.code == 1, r
    s = json.loads(r.stdout)["stream"]
    assert not s["ok"] and s["first_failure"]["step"] == 1
    assert s["per_step"][0]["ok"] and s["drift"]["stateN"]["max"] > 1e-3


@pytest.mark.parametrize("target", ["onnx", "openvino", "jetson", "tflite"])
@pytest.mark.parametrize("model", ["onnx18_if", "torchscript", "pt2"])
def test_other_exports_of_the_vad_model_convert_and_stream(cli, bundles, model, target):
    bundle = _bundle(bundles, model, target)
    m = _manifest(bundle)
    sr = next(s for s in m["inputs"] if s["name"] == "sr")
    assert sr["dtype"] == "int64" and sr["shape"] == [], sr
    r, rep = _stream(cli, bundle)
    assert r.code == 0, r
    assert rep["stream"]["ok"] and rep["stream"]["steps_ok"] == 50
    if model == "onnx18_if":
        assert any(n.op_type == "If" for n in onnx.load(str(bundle / "model.onnx")).graph.node)
        if target == "tflite":  # onnx2tf's switch refuses a [1] condition (sr is [1] there) beside 0-d branch outputs
            assert any("0-d branch outputs made [1]" in n for n in m["export"]["notes"]), m["export"]["notes"]
    else:  # torch names its outputs output_0, output_1: the state pairs by shape and dtype
        assert rep["stream"]["pairs"] == [["state", "output_1"]]


@pytest.mark.parametrize("target", ["onnx", "openvino", "jetson", "tflite"])
def test_an_lstm_with_two_states_and_an_if_at_opset_15_streams(cli, bundles, target):
    bundle = _bundle(bundles, "lstm15_if", target)
    m = _manifest(bundle)
    assert {s["name"]: s["shape"] for s in m["inputs"]} == {"input": [1, 512], "h0": [2, 1, 16], "c0": [2, 1, 16], "sr": []}
    assert any(n.op_type == "If" for n in onnx.load(str(bundle / "model.onnx")).graph.node)
    r, rep = _stream(cli, bundle)
    assert r.code == 0, r
    s = rep["stream"]
    assert s["ok"] and s["steps_ok"] == 50 and s["pairs"] == [["h0", "hn"], ["c0", "cn"]]


@pytest.mark.parametrize("target", ["onnx", "openvino", "jetson", "tflite"])
def test_keyword_spotting_ring_buffer_streams(cli, bundles, target):
    bundle = _bundle(bundles, "kws", target)
    m = _manifest(bundle)
    assert "fits both readings" in m["input_origins"]["x"]["reading"]  # [1,1,T,F] + [1,8,K]: one sample or one feed
    r, rep = _stream(cli, bundle)
    assert r.code == 0, r
    assert rep["stream"]["ok"] and rep["stream"]["pairs"] == [["buffer_in", "buffer_out"]]


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_stream_chunks_from_a_sequence_file(cli, models, bundles, target, tmp_path):
    """``--data`` with ``--stream``: the user's own chunks ([steps, 1, 512]) and a one-feed sample rate (8 kHz: the
    If's other branch, which the tflite artifact keeps beside the 16 kHz one), compared step by step with the source.
    The same file given to convert is refused (exit 2) with the command that streams it."""
    seq = tmp_path / "seq.npz"
    np.savez(seq, input=np.random.default_rng(1).standard_normal((60, 1, CHUNK)).astype(np.float32), sr=np.array(8000))
    r, rep = _stream(cli, _bundle(bundles, "onnx18_if", target), "--data", seq)
    assert r.code == 0, r
    s = rep["stream"]
    assert s["ok"] and s["steps_ok"] == 50 and s["chunks_from"] == "seq.npz: input"
    assert rep["request"]["stream"]["first"]["sr"]["shape"] == [] and "accuracy" not in rep
    if target == "onnx":
        r = cli("convert", models["onnx18_if"], "--target", "onnx", "--sample", models["vad_sample"], "--data", seq,
                "-o", tmp_path / "b")
        assert r.code == 2 and "--data seq.npz is a stream of chunks ('input': 60 chunks of 1x512)" in r.stderr, r
        assert f"validate BUNDLE --stream 60 --data {seq}" in r.stderr, r


def test_an_if_with_0d_branch_outputs_is_rewritten_for_onnx2tf_keeping_both_branches(models):
    """What the tflite target hands onnx2tf: the If's 0-d branch outputs made [1], reshaped back to 0-d after it; the
    same outputs as the original graph on ONNX Runtime on either branch (16 kHz and 8 kHz)."""
    import onnxruntime as ort

    from edgeconv.canonical import scalar_if_outputs_as_rank1

    m = onnx.load(str(models["onnx18_if"]))
    assert scalar_if_outputs_as_rank1(m) == ["scale"]
    onnx.checker.check_model(m, full_check=True)
    node = next(n for n in m.graph.node if n.op_type == "If")
    assert [[d.dim_value for d in a.g.output[0].type.tensor_type.shape.dim] for a in node.attribute] == [[1], [1]]
    before, after = ort.InferenceSession(str(models["onnx18_if"])), ort.InferenceSession(m.SerializeToString())
    with np.load(models["vad_sample"]) as z:
        feed = dict(z)
    for sr in (16000, 8000):
        feed["sr"] = np.array(sr, np.int64)
        for a, b in zip(before.run(None, feed), after.run(None, feed)):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_a_file_neither_a_data_set_nor_one_feed_is_refused_with_both_reasons(cli, models, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((3, CHUNK), np.float32), state=np.zeros((LAYERS, 1, HIDDEN), np.float32),
             sr=np.array(16000))
    r = cli("convert", models["onnx15"], "--target", "onnx", "--sample", bad, "-o", tmp_path / "b")
    assert r.code == 2, r
    assert "'sr' is a scalar" in r.stderr and "nor one feed as the model takes it ('input' has size 3 on axis 0" in r.stderr


def test_reading_is_chosen_by_what_fits():
    from edgeconv.core.data import choose_reading, feed_count, head

    specs = [{"name": "input", "shape": ["batch", 512]}, {"name": "state", "shape": [2, "batch", 16]},
             {"name": "sr", "shape": []}]
    one = {"input": np.zeros((1, 512)), "state": np.zeros((2, 1, 16)), "sr": np.array(16000)}
    assert choose_reading("f.npz", one, specs) == ("one feed", None)
    assert feed_count(one) == 1 and head(one, 1) is one
    data_set = {"x": np.zeros((5, 3))}
    assert choose_reading("f.npz", data_set, [{"name": "x", "shape": ["batch", 3]}]) == ("samples", None)
    both = {"x": np.zeros((1, 3))}
    reading, note = choose_reading("f.npz", both, [{"name": "x", "shape": [1, 3]}])
    assert reading == "samples" and "fits both readings" in note
    mismatched = dict(one, state=np.zeros((2, 3, 16)))  # batch 1 in input, 3 in state
    reading, why = choose_reading("f.npz", mismatched, specs)
    assert reading is None and "dimension 'batch' is 1 in one input and 3 in 'state'" in why


def test_the_bundles_device_runner_runs_the_same_stream(bundles, tmp_path):
    """The stream travels inside the request (what --remote sends): the bundle's own runner, the core as a device runs
    it, gives the same verdict; with the state pairing broken on its side it exits 1."""
    import subprocess
    import sys

    from edgeconv.bundle import DEVICE_RUNNER_NAME
    from edgeconv.validate import ValidateRequest, build_request

    bundle = bundles("onnx15", "jetson")
    request = build_request(ValidateRequest(bundle, stream=50, chunk_ms=32, runs=5, warmup=1, min_seconds=0,
                                            warmup_seconds=0))
    for pairs, code in ((request["stream"]["pairs"], 0), ([], 1)):
        path = tmp_path / f"request{code}.json"
        path.write_text(json.dumps(dict(request, where="device", stream=dict(request["stream"], pairs=pairs))))
        r = subprocess.run([sys.executable, str(bundle / DEVICE_RUNNER_NAME), str(bundle), "--request", str(path), "--json"],
                           capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == code, r.stderr
        s = json.loads(r.stdout)["stream"]
        assert s["steps_ok"] == (50 if code == 0 else 1) and s["latency"]["real_time_factor"] > 1


def test_a_0d_input_given_by_input_shape_for_a_source_without_shapes(cli, models, tmp_path):
    r = cli("convert", models["torchscript"], "--target", "onnx", "-o", tmp_path / "b", "--json", "--input-shape",
            "input=1x512", "--input-shape", f"state={LAYERS}x1x{HIDDEN}", "--input-shape", "sr=scalar:int64")
    assert r.code == 0, r
    sr = next(s for s in _manifest(tmp_path / "b")["inputs"] if s["name"] == "sr")
    assert sr["shape"] == [] and sr["dtype"] == "int64"
