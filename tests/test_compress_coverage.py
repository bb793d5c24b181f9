"""`edgeconv compress` on the layer kinds third-party models are made of (issue 32): real torch, Torch-Pruning and ONNX
Runtime, models built here and saved as torch.export programs as their authors would hand them over.

Each model is pruned once per module (``--prune-channels 0.3``) through the CLI and its result converted to ONNX, whose
parity check runs the pruned program against the ONNX Runtime artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
nn = torch.nn


class FaceNet(nn.Module):
    """A face detector's proposal net (MTCNN-like): convolutions with per-channel PReLU, a class and a box head, and a
    flatten written as ``view(-1, 1568)``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.PReLU(16), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.PReLU(32),
                                  nn.Conv2d(32, 32, 3), nn.PReLU(32))
        self.fc, self.act = nn.Linear(32 * 7 * 7, 64), nn.PReLU(64)
        self.cls, self.box = nn.Linear(64, 2), nn.Linear(64, 4)

    def forward(self, x):
        h = self.act(self.fc(self.body(x).view(-1, 32 * 7 * 7)))
        return self.cls(h), self.box(h)


class TextNet(nn.Module):
    """A sentence classifier: token embedding, a two-layer transformer encoder (multi-head attention), LayerNorm."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm, self.cls = nn.LayerNorm(32), nn.Linear(32, 3)

    def forward(self, ids):
        return self.cls(self.norm(self.enc(self.emb(ids))).mean(1))


class SpeechNet(nn.Module):
    """A speaker-encoder-like recurrent net: Linear, LSTM, Linear, GRU, Linear on the last frame."""

    def __init__(self):
        super().__init__()
        self.inp, self.lstm = nn.Linear(20, 32), nn.LSTM(32, 48, batch_first=True)
        self.mid, self.gru, self.out = nn.Linear(48, 32), nn.GRU(32, 32, batch_first=True), nn.Linear(32, 5)

    def forward(self, x):
        h, _ = self.lstm(torch.relu(self.inp(x)))
        h, _ = self.gru(torch.relu(self.mid(h)))
        return self.out(h[:, -1])


class PitchNet(nn.Module):
    """A pitch tracker: 1-d convolutions with GroupNorm, then ``reshape(-1, 1920)`` (a width written in the code)."""

    def __init__(self):
        super().__init__()
        self.c1, self.norm = nn.Conv1d(1, 32, 8, stride=4), nn.GroupNorm(4, 32)
        self.c2, self.fc = nn.Conv1d(32, 64, 4, stride=2), nn.Linear(64 * 30, 40)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.norm(self.c1(x)))))
        return self.fc(h.reshape(-1, 64 * 30))


class TinyDense(nn.Module):
    """Small Linear layers of rank 1: the SVD split holds fewer weights but, at batch 1, costs a second kernel call."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        with torch.no_grad():
            for layer in (self.a, self.b):
                layer.weight.copy_(torch.randn(16, 1) @ torch.randn(1, 16) / 4)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


MODELS = {
    "face": (FaceNet, lambda: torch.randn(1, 3, 24, 24)),
    "text": (TextNet, lambda: torch.randint(0, 100, (1, 12))),
    "speech": (SpeechNet, lambda: torch.randn(1, 10, 20)),
    "pitch": (PitchNet, lambda: torch.randn(1, 1, 256)),
}


def _save(root: Path, name: str, cls, make_input) -> Path:
    torch.manual_seed(0)
    path = root / f"{name}.pt2"
    torch.export.save(torch.export.export(cls().eval(), (make_input(),)), str(path))
    return path


@pytest.fixture(scope="module")
def pruned(cli, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """Each model pruned by 0.3 and the result converted to ONNX: name -> (compress report, convert manifest)."""
    root = tmp_path_factory.mktemp("coverage")
    out = {}
    for name, (cls, make_input) in MODELS.items():
        source, small = _save(root, name, cls, make_input), root / f"{name}-pruned.pt2"
        r = cli("compress", source, "-o", small, "--prune-channels", "0.3", "--runs", 10, "--warmup", 2, "--json")
        assert r.code == 0, r
        c = cli("convert", small, "--target", "onnx", "-o", root / f"{name}-bundle", "--json")
        assert c.code == 0, c
        out[name] = (r.json(), c.json()["manifest"])
    return out


def _method(report: dict) -> tuple[dict[str, list[int]], dict[str, str]]:
    method = report["methods"][0]
    assert method["method"] == "prune-channels"
    return ({d["layer"]: d["channels"] for d in method["layers"]}, {d["layer"]: d["reason"] for d in method["kept_whole"]})


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_converts_to_onnx_with_parity(pruned, name):
    report, manifest = pruned[name]
    assert report["after"]["macs"] < 0.8 * report["before"]["macs"], report["ratios"]
    parity = [c for c in manifest["checks"] if c["kind"] == "parity"]
    assert parity and all(c["ok"] for c in parity), parity


def test_prelu_prunes_with_its_channels(pruned):
    report, _ = pruned["face"]
    widths, whole = _method(report)
    assert report["methods"][0]["functional"] == []  # every PReLU lifted into nn.PReLU
    assert widths["body.0"] == [16, 8] and widths["body.3"][1] < 32 and widths["fc"][1] < 64
    assert set(whole) == {"cls", "box"}  # the two heads' outputs are the model's outputs


def test_embedding_and_attention(pruned):
    report, _ = pruned["text"]
    widths, whole = _method(report)
    assert widths["emb"][1] < 32  # the embedding dim prunes with every layer that reads it
    assert widths["enc.layers.0.linear1"][1] < 64 and widths["enc.layers.0.self_attn.out_proj"][1] == widths["emb"][1]
    # the packed q/k/v projection stays whole: its output is split into q, k, v and heads by sizes written in the graph
    assert widths["enc.layers.0.self_attn.in_proj"] == [96, 96]
    assert "splits a dimension" in whole["enc.layers.0.self_attn.in_proj"]


def test_lstm_hidden_prunes_and_gru_stays_whole_with_reason(pruned):
    report, _ = pruned["speech"]
    widths, whole = _method(report)
    assert widths["lstm"][0] == 48 and widths["lstm"][1] < 48 and widths["inp"][1] < 32
    assert widths["gru"] == [32, 32] and "cannot trace nn.GRU" in whole["gru"]
    assert widths["mid"] == [32, 32] and "feeds gru" in whole["mid"]


def test_reshape_with_a_written_width_is_rewritten(pruned):
    report, _ = pruned["pitch"]
    widths, whole = _method(report)
    assert widths["c2"][1] < 64  # reshape(-1, 1920) now reads its width from the pruned c2
    assert set(whole) == {"fc"}


@pytest.mark.alone
def test_low_rank_undone_where_it_does_not_pay(cli, tmp_path):
    source = _save(tmp_path, "dense", TinyDense, lambda: torch.randn(1, 16))
    r = cli("compress", source, "-o", tmp_path / "lr.pt2", "--low-rank", "0.9", "--runs", 20, "--json")
    assert r.code == 0, r
    rep = r.json()
    method = rep["methods"][0]
    assert method["method"] == "low-rank" and {d["layer"] for d in method["layers"]} >= {"a", "b"}
    whole = method.get("whole_model")  # timed only when some split passed its one-layer timing
    for d in method["layers"]:
        original, factorised = d["p50_ms"]
        assert d["kept"] == (factorised <= original * (1 + d["noise"]) and (whole is None or whole["kept"])), d
    assert method["undone"], method["layers"]  # a second kernel call costs more than a 16x16 product saves
    assert any("undone, slower on ONNX Runtime" in n for n in rep["notes"])
    # the layers undone are back as they were: only a kept split (16x16 -> 16x1 + 1x16) saves weights
    assert rep["before"]["parameters"] - rep["after"]["parameters"] == (16 * 16 - 32) * len(method["kept"])


def test_state_dict_with_a_written_width_prunes_through_its_graph(cli, tmp_path):
    """A module given as code whose ``view(-1, 1568)`` breaks once pruned is exported and lifted, and pruned there."""
    import inspect

    (tmp_path / "face_model.py").write_text("import torch\nfrom torch import nn\n\n\n" + inspect.getsource(FaceNet))
    torch.manual_seed(0)
    torch.save(FaceNet().state_dict(), tmp_path / "face.pt")
    r = cli("compress", tmp_path / "face.pt", "--model-class", f"{tmp_path / 'face_model.py'}:FaceNet", "--input-shape",
            "x=1x3x24x24", "-o", tmp_path / "small.pt2", "--prune-channels", "0.3", "--runs", 10, "--warmup", 2, "--json")
    assert r.code == 0, r
    widths, whole = _method(r.json())
    assert widths["body.0"] == [16, 8] and widths["fc"][1] < 64 and set(whole) == {"cls", "box"}


def test_pruning_that_runs_past_its_limit_is_refused_not_left_running(cli, tmp_path, monkeypatch):
    """Torch-Pruning's grouping can run for hours on some architectures (ReXNet-100: over 15 min): past
    PRUNER_LIMIT_S compress exits 4 saying so, with the methods that still work, and writes nothing."""
    from edgeconv.compress import channels

    source = _save(tmp_path, "dense", TinyDense, lambda: torch.randn(1, 16))
    monkeypatch.setattr(channels, "PRUNER_LIMIT_S", 1e-6)
    r = cli("compress", source, "-o", tmp_path / "pruned.pt2", "--prune-channels", "0.3", "--json")
    assert r.code == 4, r
    err = r.json()["error"]
    assert "did not finish grouping and pruning" in err["message"] and "--low-rank" in err["hint"]
    assert not (tmp_path / "pruned.pt2").exists()
