"""`convert --cache DIR`: a second conversion of the same model (another target) takes the source's facts and outputs
and the canonical ONNX graph from the cache; a change of the model or its class's code misses."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import SAMPLES


def _convert(cli, out, *args):
    r = cli("convert", *args, "-o", out, "--data", SAMPLES / "digits_test.npz", "--json")
    assert r.code == 0, r
    return r.json()["manifest"]


def _canonical_sha(manifest):
    return next(a["sha256"] for a in manifest["artifacts"] if a["file"] == "model.onnx")


def test_second_target_takes_the_export_from_the_cache(cli, tmp_path, monkeypatch):
    cls_file = tmp_path / "digits_model.py"
    shutil.copyfile(SAMPLES / "digits_model.py", cls_file)
    src = [SAMPLES / "digits_cnn_state.pt", "--model-class", f"{cls_file}:DigitsCNN", "--input-shape", "x=1x1x8x8",
           "--cache", tmp_path / "cache"]
    first = _convert(cli, tmp_path / "onnx", *src, "--target", "onnx")
    assert first["export"]["cache"] | {"dir": None, "key": None} == {
        "dir": None, "key": None, "source": "stored", "reference_outputs": "stored", "data_outputs": "stored",
        "export": "stored"}

    import edgeconv.convert.steps

    def no_load(*a, **k):  # a hit needs neither the model nor torch to run it
        raise AssertionError("the source was loaded although the cache holds everything this conversion needs")

    monkeypatch.setattr(edgeconv.convert.steps, "load_source", no_load)
    second = _convert(cli, tmp_path / "ov", *src, "--target", "openvino")
    assert {k: v for k, v in second["export"]["cache"].items() if k not in ("dir", "key")} == {
        "source": "hit", "reference_outputs": "hit", "data_outputs": "hit", "export": "hit"}
    assert second["export"]["cache"]["key"] == first["export"]["cache"]["key"]
    assert _canonical_sha(second) == _canonical_sha(first)
    assert second["source_accuracy"] == first["source_accuracy"] and second["status"] == "ok"
    assert second["export"]["canonical"] == first["export"]["canonical"]
    assert second["export"]["exporter"] == first["export"]["exporter"]
    r = cli("validate", tmp_path / "ov", "--data", SAMPLES / "digits_test.npz", "--runs", "3", "--json")
    assert r.code == 0, r
    monkeypatch.undo()

    # the class's code is part of the key: an edit to it is a new entry, never the old graph
    cls_file.write_text(cls_file.read_text() + "\n# edited\n")
    third = _convert(cli, tmp_path / "onnx2", *src, "--target", "onnx", "--force")
    assert third["export"]["cache"]["source"] == "stored" and third["export"]["cache"]["export"] == "stored"
    assert third["export"]["cache"]["key"] != first["export"]["cache"]["key"]


def test_a_cached_keras_source_is_loaded_when_the_target_builds_from_it(cli, tmp_path):
    """The TFLite target converts a Keras model from the model itself: a cache hit loads it then, not before."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (the tflite extra)")
    src = [SAMPLES / "digits_keras.keras", "--cache", tmp_path / "cache"]
    _convert(cli, tmp_path / "onnx", *src, "--target", "onnx")
    m = _convert(cli, tmp_path / "tfl", *src, "--target", "tflite")
    assert m["export"]["cache"]["source"] == "hit" and m["export"]["cache"]["reference_outputs"] == "hit"
    assert m["source"]["layer_names"] and m["status"] == "ok"
    assert any(a["file"].endswith(".tflite") for a in m["artifacts"])
    r = cli("validate", tmp_path / "tfl", "--data", SAMPLES / "digits_test.npz", "--runs", "3", "--json")
    assert r.code == 0, r
    assert json.loads(r.stdout)["ok"] is True


def test_an_unusable_cache_directory_is_refused(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = cli("convert", SAMPLES / "digits_cnn.pt", "--target", "onnx", "-o", tmp_path / "b", "--cache", blocker / "sub",
            "--json")
    assert r.code == 2, r
    assert "cache directory" in r.json()["error"]["message"]


def test_onnx2tf_runs_once_for_tflite_coral_and_a_second_tflite(cli, tmp_path):
    """onnx2tf's SavedModel is the slow half of every TFLite-family target: with --cache, the first conversion keeps it
    (with its layer → ONNX node map) and the next ones of the same graph only run TFLiteConverter."""
    src = [SAMPLES / "digits_cnn.pt", "--cache", tmp_path / "cache", "--precision", "int8", "--calib",
           SAMPLES / "digits_calib.npz"]
    first = _convert(cli, tmp_path / "t1", *src, "--target", "tflite")
    assert first["export"]["cache"]["onnx2tf"] == "stored"
    again = _convert(cli, tmp_path / "t2", *src, "--target", "tflite")
    assert again["export"]["cache"]["onnx2tf"] == "hit"
    assert any("SavedModel from the cache" in n for n in again["export"]["notes"])
    # the same SavedModel, the same TFLiteConverter run: the same bytes
    assert (tmp_path / "t2" / "model.tflite").read_bytes() == (tmp_path / "t1" / "model.tflite").read_bytes()
    coral = _convert(cli, tmp_path / "coral", *src, "--target", "coral")
    assert coral["export"]["cache"]["onnx2tf"] == "hit" and coral["status"] == "ok"
    # the cached names map came along: debug still matches the TFLite tensors by name
    rep = cli("debug", tmp_path / "coral", "--data", SAMPLES / "digits_test.npz", "--json").json()
    convs = [row for row in rep["layers"] if row["op"] in ("Conv", "Gemm")]
    assert convs and all(row["matched_by"] == "name" for row in convs), convs
