"""`edgeconv profile --layers`: per-layer times from ONNX Runtime's and OpenVINO's own profilers, on real runtimes.

The digits CNN keeps these quick; the MobileNetV2-sized check (sum of layers within 15% of the end-to-end p50) is
bench/profile_layers.py, recorded in bench/results/profile_layers.json.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from test_core import report_keys
from test_remote import device_python, remote, sshd  # noqa: F401  (fixtures)

from edgeconv.bundle import DEVICE_RUNNER_NAME, Bundle
from edgeconv.core.layers import ort_trace_layers
from edgeconv.profile import device_profile_report


def check_layers(rep: dict, runs: int) -> dict:
    """What every --layers report holds, whatever the runtime."""
    lay = rep["layers"]
    rows = lay["rows"]
    assert rows and lay["count"] == len(rows) and lay["runs"] == runs and lay["batch"] == 1
    assert [r["p50_ms"] for r in rows] == sorted((r["p50_ms"] for r in rows), reverse=True)  # slowest first
    for r in rows:  # runs: how many of the timed runs the layer ran in (OpenVINO may skip a reorder in some)
        assert r["name"] and r["op"] and 1 <= r["runs"] <= runs and 0 <= r["min_ms"] <= r["p50_ms"] <= r["max_ms"]
    assert sum(r["runs"] == runs for r in rows) > len(rows) / 2
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert lay["sum_ms"] == pytest.approx(sum(r["p50_ms"] for r in rows))
    assert lay["end_to_end"]["runs"] == runs and lay["end_to_end"]["p50_ms"] > 0 and lay["profiled"]["runs"] == runs
    assert lay["sum_vs_end_to_end"] == pytest.approx(lay["sum_ms"] / lay["end_to_end"]["p50_ms"])
    # the profiled runs' own end-to-end time bounds the layers of the same runs, or the report says the runtime's
    # counters broke that bound (OpenVINO's can, on a busy machine) and which runs
    over = lay["counters_over_wall"]
    assert over["of"] == runs and 0 <= over["runs"] <= runs
    if over["runs"] == 0:
        assert lay["per_run_sum_p50_ms"] <= lay["profiled"]["max_ms"] + 1e-3 * len(rows)
    else:
        assert over["worst_ratio"] > 1 and over["worst_layer"] in {r["name"] for r in rows}
        assert any("more than the wall time of that same inference" in n for n in rep["notes"])
    if over["runs"] < runs / 2:
        assert lay["per_run_sum_p50_ms"] <= lay["profiled"]["max_ms"] + 1e-3 * len(rows)
    return {r["name"]: r for r in rows}


def test_layers_on_onnxruntime_map_to_the_torch_modules(cli, bundles, tmp_path):
    bundle = bundles("pt")  # TorchScript export: node names carry the module scope
    r = cli("profile", bundle, "--layers", "--runs", "20", "--warmup", "3", "--csv", tmp_path / "layers.csv", "--json")
    assert r.code == 0, r
    rep = r.json()
    rows = check_layers(rep, 20)
    assert rep["runner"] == "onnxruntime" and rep["measured_on"]["runtime"] == "onnxruntime"
    assert "enable_profiling" in rep["method"]
    # ONNX Runtime fuses Conv+Relu and names the fused node after the Relu's output: it is mapped back to the Conv
    convs = [row for row in rows.values() if row["op"] == "Conv"]
    assert {c["source"] for c in convs} == {"features.0", "features.3"}
    assert {c["onnx_node"] for c in convs} == {"/features/0/Conv", "/features/3/Conv"}
    assert any(row["source"] == "head.1" and row["op"] == "FusedGemm" for row in rows.values())
    assert rows["ReorderOutput"]["source"] is None  # ONNX Runtime's own layout node: no source
    saved = json.loads((bundle / "profile_layers.json").read_text())
    assert saved["layers"]["rows"] == rep["layers"]["rows"] and rep["report_file"] == str(bundle / "profile_layers.json")
    with open(tmp_path / "layers.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["name"] for t in table] == [row["name"] for row in rep["layers"]["rows"]] and float(table[0]["p50_ms"]) > 0


def test_layers_table_for_people(cli, bundles):
    r = cli("profile", bundles("pt"), "--layers", "--runs", "10", "--warmup", "2", "--top", "3")
    assert r.code == 0, r
    assert "sum of layers" in r.stdout and "vs end-to-end p50" in r.stdout
    assert "more layers:" in r.stdout and "--top 7 shows all" in r.stdout
    assert "profiler overhead" in r.stdout


def test_layers_source_names_from_dynamo_metadata(cli, samples, tmp_path):
    out = tmp_path / "pt2"
    assert cli("convert", samples / "digits_cnn.pt2", "-o", out, "--json").code == 0
    rep = cli("profile", out, "--layers", "--runs", "10", "--warmup", "2", "--json").json()
    rows = check_layers(rep, 10)
    linear = [row for row in rows.values() if row["onnx_node"] == "node_linear_1"]
    assert linear and linear[0]["source"] == "head.3" and linear[0]["source_class"] == "Linear"
    assert any(row["op"] == "Conv" and row["source"] == "features.3" and row["source_class"] == "Conv2d" for row in rows.values())


def test_layers_on_openvino_performance_counters(cli, samples, tmp_path):
    out = tmp_path / "ov"
    assert cli("convert", samples / "digits_cnn.pt", "--target", "intel-cpu", "-o", out, "--json").code == 0
    rep = cli("profile", out, "--layers", "--runs", "20", "--warmup", "3", "--threads", "1", "--json").json()
    rows = check_layers(rep, 20)
    assert rep["runner"] == "openvino" and rep["measured_on"]["precision"] == "f32" and "PERF_COUNT" in rep["method"]
    assert rep["measured_on"]["threads"] == "1"
    convs = [row for row in rows.values() if row["op"] == "Convolution"]
    assert len(convs) == 2 and {c["source"] for c in convs} == {"features.0", "features.3"}
    assert all(c["exec_type"] for c in convs)  # the kernel that ran, e.g. brgconv_avx2_f32
    assert rep["layers"]["not_executed"] > 0 and any("did not run on their own" in n for n in rep["notes"])


def test_layers_through_the_device_runner_match_the_host_report(cli, bundles, tmp_path):
    """Without edgeconv on a device, the bundle's own runner times the layers; edgeconv names them on return (one path):
    the report has the fields of the one made in-process here."""
    bundle = bundles("pt")
    (tmp_path / "request.json").write_text(json.dumps({"command": "profile", "layers": True, "runs": 10, "warmup": 2}))
    proc = subprocess.run([sys.executable, str(bundle / DEVICE_RUNNER_NAME), str(bundle), "--request",
                           str(tmp_path / "request.json"), "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(proc.stdout)
    assert raw["measured_on"]["kind"] == "host" and all("source" not in row for row in raw["layers"]["rows"])
    rep = device_profile_report(Bundle.open(bundle), raw)
    rows = check_layers(rep, 10)
    assert {row["source"] for row in rows.values() if row["op"] == "Conv"} == {"features.0", "features.3"}
    assert "measured by the bundle's device runner" in rep["method"]
    here = cli("profile", bundle, "--layers", "--runs", "10", "--warmup", "2", "--report", tmp_path / "here.json")
    assert here.code == 0, here
    assert report_keys(rep) == report_keys(json.loads((tmp_path / "here.json").read_text()))
    # its own command line too
    proc = subprocess.run([sys.executable, str(bundle / DEVICE_RUNNER_NAME), str(bundle), "--layers", "--runs", "5"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "sum of layers" in proc.stdout, proc.stderr


@pytest.mark.parametrize("where", ["edgeconv", "device runner"])
def test_layers_over_ssh(cli, bundles, sshd, device_python, where):  # noqa: F811
    """--remote --layers: the device's edgeconv, or without it the bundle's device runner, times the layers (ONNX Runtime);
    the report comes back with the layers named after the source, as here."""
    python = sys.executable if where == "edgeconv" else device_python
    bundle = bundles("pt")
    r = cli("profile", bundle, "--layers", "--remote", remote(sshd), *sshd["opts"], "--remote-python", python, "--runs", "5",
            "--warmup", "2", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert rep["device"]["ran"] == where
    rows = check_layers(rep, 5)
    assert {row["source"] for row in rows.values() if row["op"] == "Conv"} == {"features.0", "features.3"}
    assert json.loads((bundle / "reports" / "127.0.0.1" / "profile.json").read_text())["layers"]["count"] == len(rows)


def test_ort_trace_keeps_only_the_timed_runs(bundles, tmp_path):
    """The real trace of 3 runs: warm-up runs and session events are not counted; one time per node per kept run."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "ort")
    sess = ort.InferenceSession(str(bundles("pt") / "model.onnx"), so, providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 8, 8), np.float32)
    for _ in range(3):
        sess.run(None, {sess.get_inputs()[0].name: x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    runs, layers = ort_trace_layers(events, [False, True, True])
    assert len(runs) == 2 and all(set(r) == set(layers) for r in runs)
    assert all(v > 0 for r in runs for v in r.values())
    kernel = {e["name"][: -len("_kernel_time")] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}
    assert set(layers) == kernel and "session_initialization" not in layers
    assert len(ort_trace_layers(events, 1)[0]) == 2  # a count of warm-up runs works alike


def test_runtimes_without_a_layer_profiler_say_so(cli, samples, tmp_path):
    out = tmp_path / "tfl"
    assert cli("convert", samples / "digits_keras.keras", "--target", "tflite", "-o", out, "--json").code == 0
    r = cli("profile", out, "--layers", "--json")
    assert r.code == 2, r
    err = r.json()["error"]
    assert "LiteRT's Python interpreter exposes no per-op times" in err["message"] and "benchmark_model" in err["message"]
    assert "ONNX Runtime" in err["hint"] and "OpenVINO" in err["hint"]


@pytest.mark.parametrize("args, says", [
    (["--batch-sizes", "1,2"], "one batch size"),
    (["--budget-ms", "5"], "--budget-ms"),
    (["--min-time", "1"], "--min-time"),
])
def test_layers_refuses_sweep_options(cli, bundles, args, says):
    r = cli("profile", bundles("pt"), "--layers", *args)
    assert r.code == 2 and says in r.stderr, r


def test_layers_refuses_plot(cli, bundles, tmp_path):
    r = cli("profile", bundles("pt"), "--layers", "--plot", tmp_path / "p.png")
    assert r.code == 2 and "--plot" in r.stderr, r
