"""ExecuTorch target: real torch.export lowering (XNNPACK / portable), real PT2E int8, the ExecuTorch runtime."""

from __future__ import annotations

import pytest

from conftest import convert_digits


@pytest.mark.parametrize("precision, backend", [("fp32", "xnnpack"), ("int8", "xnnpack"), ("fp32", "portable")])
def test_executorch_roundtrip(cli, samples, tmp_path, precision, backend):
    out = tmp_path / f"{precision}-{backend}"
    m = convert_digits(cli, out, "--target", "executorch", "--precision", precision, "--et-backend", backend,
                       source="digits_cnn.pt2")
    art = next(a for a in m["artifacts"] if a["role"] == "model")
    assert art["file"] == "model.pte" and art["delegation"]["backend"] == backend
    if backend == "xnnpack":
        assert art["delegation"]["delegated_nodes"] > art["delegation"]["non_delegated_nodes"] >= 0
        assert art["delegation"]["delegated_subgraphs"] >= 1
    else:
        assert art["delegation"]["delegated_nodes"] == 0
    rep = cli("validate", out, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "0.5", "--runs", "10", "--json")
    assert rep.code == 0, rep
    rep = rep.json()
    assert rep["measured_on"]["runtime"] == "executorch"
    if precision == "fp32":
        assert rep["parity"]["outputs"][0]["max_abs"] <= 1e-4


def test_executorch_refuses_torchscript(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "executorch", "-o", tmp_path / "o")
    assert r.code == 2 and "torch.export" in r.stderr and not (tmp_path / "o").exists()


def test_executorch_refuses_an_onnx_source_in_its_own_terms(cli, samples, tmp_path):
    """An ONNX file is not told that TorchScript cannot be re-exported: it is told ExecuTorch needs the PyTorch
    model, and which targets take ONNX; before any export work (nothing written)."""
    onnx_file = tmp_path / "m.onnx"
    r = cli("convert", samples / "digits_cnn.pt", "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    (tmp_path / "b" / "model.onnx").rename(onnx_file)
    r = cli("convert", onnx_file, "--target", "executorch", "-o", tmp_path / "o")
    assert r.code == 2, r
    assert "is an ONNX model (onnx)" in r.stderr and "takes ONNX: onnx, tflite, openvino, ncnn" in r.stderr, r
    assert "TorchScript" not in r.stderr and "Exporting" not in r.stderr and not (tmp_path / "o").exists()


def _token_classifier(tmp_path, dynamic: bool = False):
    """A tiny text model exported the way Hugging Face models usually are: torch.export with its inputs by keyword
    (and, with ``dynamic``, a dynamic batch and sequence length)."""
    import numpy as np
    import torch
    from torch import nn

    class TokenClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Embedding(50, 16), nn.Linear(16, 3)

        def forward(self, input_ids, attention_mask):
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            return self.head((self.embed(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1))

    torch.manual_seed(0)
    n = 2 if dynamic else 1  # torch.export specializes a dimension of size 1
    ids, mask = torch.randint(0, 50, (n, 12)), torch.ones(n, 12, dtype=torch.long)
    path = tmp_path / "tokens.pt2"
    dims = None
    if dynamic:
        batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=512)
        dims = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    program = torch.export.export(TokenClassifier().eval(), (), {"input_ids": ids, "attention_mask": mask}, dynamic_shapes=dims)
    torch.export.save(program, path)
    rng = np.random.default_rng(0)
    mask_np = (rng.uniform(size=(8, 12)) > 0.2).astype(np.int64)
    np.savez(tmp_path / "tokens.npz", input_ids=rng.integers(0, 50, (8, 12)).astype(np.int64), attention_mask=mask_np)
    return path, tmp_path / "tokens.npz"


@pytest.mark.parametrize("target", ["onnx", "executorch"])
def test_a_program_exported_with_keyword_inputs_and_int64_tokens(cli, tmp_path, target):
    """A .pt2 whose inputs were given by keyword refuses positional calls ("kwarg keyword mismatch"): edgeconv calls,
    exports and lowers it by keyword; ExecuTorch gets the token ids as int64, not float32."""
    source, data = _token_classifier(tmp_path)
    r = cli("convert", source, "--target", target, "--data", data, "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask"]
    assert {i["dtype"] for i in m["inputs"]} == {"int64"}
    if target == "executorch":
        art = next(a for a in m["artifacts"] if a["role"] == "model")
        assert art["runner_options"]["input_dtypes"] == ["int64", "int64"]
    rep = cli("validate", tmp_path / "b", "--data", data, "--source", source, "--runs", "3", "--json")
    assert rep.code == 0, rep
    assert rep.json()["parity"]["outputs"][0]["max_abs"] <= 1e-4


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_a_program_with_dynamic_batch_and_sequence_gets_the_data_shapes(cli, tmp_path, target):
    """torch.export with dynamic batch and sequence: the ONNX graph takes the shapes the data resolved (the program's
    symbolic ones left onnx2tf with unknown ranks: "Cannot take the length of shape with unknown rank")."""
    import onnx

    source, data = _token_classifier(tmp_path, dynamic=True)
    r = cli("convert", source, "--target", target, "--data", data, "-o", tmp_path / "b", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert [i["shape"] for i in m["inputs"]] == [[1, 12], [1, 12]]
    graph = onnx.load(str(tmp_path / "b" / "model.onnx")).graph
    assert [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input] == [[1, 12], [1, 12]]
    assert any("dynamic dimensions fixed to input_ids 1x12" in n for n in m["export"]["notes"])
