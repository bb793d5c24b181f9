"""Every source format → ONNX target → validate on ONNX Runtime: parity and accuracy against the source."""

from __future__ import annotations

import json

import numpy as np
import pytest

SOURCES = ["pt", "pt2", "state", "keras"]


@pytest.mark.parametrize("name", SOURCES)
def test_convert_then_validate_matches_source(name, bundles, cli, samples):
    bundle = bundles(name)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    parity = next(c for c in manifest["checks"] if c["kind"] == "parity")
    assert parity["ok"] and parity["samples"] == 4
    assert parity["outputs"][0]["max_abs"] <= 1e-4

    r = cli("validate", bundle, "--data", samples / "digits_test.npz", "--runs", "20", "--json")
    assert r.code == 0, r
    report = r.json()
    assert report["parity"]["ok"]
    acc = report["accuracy"]
    # The source's accuracy was measured by the source framework at convert time on the same file.
    assert acc["source"]["sha256"] == acc["data"]["sha256"]
    assert acc["artifact"]["top1"] == pytest.approx(acc["source"]["top1"])
    assert acc["artifact"]["top1"] > 0.9
    assert acc["drop_points"] == pytest.approx(0.0, abs=1e-9)
    lat = report["latency"]
    assert lat["runs"] >= 20 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert report["measured_on"]["runtime"] == "onnxruntime"
    assert (bundle / "validation.json").is_file()


def test_manifest_records_provenance(bundles, samples):
    m = json.loads((bundles("pt") / "manifest.json").read_text())
    assert m["schema_version"] == 1
    assert m["source"]["format"] == "torchscript" and len(m["source"]["sha256"]) == 64
    assert "TorchScript" in m["export"]["exporter"] and "TorchScript module" in m["export"]["fallback_reason"]
    assert m["inputs"] == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}]
    assert m["outputs"][0]["name"] == "output" and m["outputs"][0]["shape"] == [1, 10]
    assert m["target"]["profile"] == "onnxruntime-cpu" and m["precision"] == "fp32"
    assert m["tools"]["torch"].startswith("2.") and m["tools"]["onnxruntime"]
    assert m["command_line"][:2] == ["edgeconv", "convert"]
    art = m["artifacts"][0]
    assert art["file"] == "model.onnx" and art["role"] == "model" and len(art["sha256"]) == 64
    m2 = json.loads((bundles("pt2") / "manifest.json").read_text())
    assert m2["source"]["format"] == "torch.export" and "dynamo" in m2["export"]["exporter"]
    assert m2["export"]["fallback_reason"] is None
    mk = json.loads((bundles("keras") / "manifest.json").read_text())
    assert mk["source"]["format"] == "keras" and "tf2onnx" in mk["export"]["exporter"]
    assert mk["inputs"][0]["layout"] == "NCHW"  # the sample's Permute layer takes NCHW


def test_reference_outputs_are_the_source_frameworks(bundles, samples):
    """reference.npz holds torch's own outputs on the recorded inputs (recomputed here with torch)."""
    import torch

    bundle = bundles("pt")
    with np.load(bundle / "reference.npz") as z:
        x, y = z["input:x"], z["output:output"]
    model = torch.jit.load(str(samples / "digits_cnn.pt"))
    outs = [model(torch.from_numpy(x[i : i + 1])).detach().numpy() for i in range(len(x))]
    np.testing.assert_allclose(np.concatenate(outs), y, atol=1e-6)


def test_fp16_onnx(cli, samples, tmp_path):
    out = tmp_path / "fp16"
    r = cli("convert", samples / "digits_cnn.pt2", "--precision", "fp16", "-o", out, "--json",
            "--data", samples / "digits_test.npz", "--max-accuracy-drop", "1.0")
    assert r.code == 0, r
    m = r.json()["manifest"]
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    canon = next(a for a in m["artifacts"] if a["role"] == "canonical-onnx")
    assert model["file"] == "model_fp16.onnx" and model["precision"] == "fp16"
    assert model["bytes"] < 0.6 * canon["bytes"]
    import onnx

    proto = onnx.load(str(out / "model_fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer)
    checks = [c for c in m["checks"] if c["kind"] == "parity"]
    assert len(checks) == 2 and all(c["ok"] for c in checks)
    assert checks[1]["outputs"][0]["max_abs"] > 0  # really computed in fp16
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["ok"] and acc["drop_points"] <= 1.0
    r = cli("validate", out, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "1", "--runs", "5", "--json")
    assert r.code == 0, r


def test_dynamic_batch_export(cli, samples, tmp_path):
    out = tmp_path / "dyn"
    r = cli("convert", samples / "digits_cnn.pt", "--dynamic-batch", "-o", out, "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["inputs"][0]["shape"][0] == "batch" and m["dynamic_batch"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"))
    y = sess.run(None, {"x": np.zeros((7, 1, 8, 8), np.float32)})[0]
    assert y.shape == (7, 10)
    r = cli("validate", out, "--data", samples / "digits_test.npz", "--source", samples / "digits_cnn.pt", "--json",
            "--runs", "5")
    assert r.code == 0, r
    assert r.json()["accuracy"]["drop_points"] == pytest.approx(0.0, abs=1e-9)
    assert "validate time" in r.json()["accuracy"]["source"]["measured_with"]


def test_baked_batch_cannot_become_dynamic(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt2", "--dynamic-batch", "-o", tmp_path / "x")
    assert r.code == 2 and "fixed batch of 1" in r.stderr
    r = cli("convert", samples / "digits_cnn.pt2", "--input-shape", "4x1x8x8", "-o", tmp_path / "x")
    assert r.code == 2 and "contradicts the model's fixed shape" in r.stderr
    assert not (tmp_path / "x").exists()


def test_onnx_source_with_external_data(cli, bundles, tmp_path, samples):
    import onnx

    proto = onnx.load(str(bundles("pt2") / "model.onnx"))
    src = tmp_path / "ext" / "digits.onnx"
    src.parent.mkdir()
    onnx.save(proto, str(src), save_as_external_data=True, all_tensors_to_one_file=True, location="digits.onnx.data",
              size_threshold=1024)
    assert (src.parent / "digits.onnx.data").stat().st_size > 100_000
    out = tmp_path / "from-onnx"
    r = cli("convert", src, "-o", out, "--data", samples / "digits_test.npz", "--json")
    assert r.code == 0, r
    m = r.json()["manifest"]
    assert m["source"]["framework"] == "onnx"
    acc = next(c for c in m["checks"] if c["kind"] == "accuracy")
    assert acc["artifact"]["top1"] > 0.9
    # the bundle's model carries its weights inline: it loads without the source folder
    assert not any(p.suffix == ".data" for p in out.iterdir())
