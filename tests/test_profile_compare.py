"""`edgeconv profile` (real runtimes; the knee/budget arithmetic on known numbers) and `edgeconv compare`."""

from __future__ import annotations

import csv
import json

import pytest

from edgeconv.profile import best_under_budget, knee


def rows(pairs):
    """(batch, p50 ms) with p99 = 1.2 x p50 and throughput from p50, as profile computes it."""
    return [{"batch": b, "p50_ms": p, "p99_ms": 1.2 * p, "throughput_items_s": b * 1e3 / p} for b, p in pairs]


def test_knee_on_known_numbers():
    # per-item time halves until batch 8, then stays: throughput saturates at 8
    k = knee(rows([(1, 1.0), (2, 1.0), (4, 1.0), (8, 1.0), (16, 2.0), (32, 4.0)]))
    assert k["batch"] == 8 and "no larger batch gains 10% throughput per doubling" in k["why"]
    # one noisy dip at batch 2 does not end the sweep early
    assert knee(rows([(1, 1.0), (2, 2.5), (4, 1.0), (8, 1.0), (16, 2.0)]))["batch"] == 8
    # still scaling at the largest batch
    k = knee(rows([(1, 1.0), (2, 1.0), (4, 1.0)]))
    assert k["batch"] == 4 and "largest measured" in k["why"]
    # 5% gain per doubling is below the 10% threshold: batch 1 is the knee
    assert knee(rows([(1, 1.0), (2, 2 / 1.05), (4, 4 / 1.1025)]))["batch"] == 1
    assert knee([]) is None


def test_best_under_budget_on_known_numbers():
    r = rows([(1, 1.0), (2, 1.2), (4, 1.5), (8, 3.0), (16, 5.0)])  # p99: 1.2, 1.44, 1.8, 3.6, 6.0
    best = best_under_budget(r, 2.0)
    assert best["batch"] == 4 and "p99 1.80 ms ≤ 2.0 ms" in best["why"]
    assert best_under_budget(r, 10)["batch"] == 16
    none = best_under_budget(r, 1.0)
    assert none["batch"] is None and "batch 1 is closest at 1.20 ms" in none["why"]
    assert best_under_budget(r, None) is None


@pytest.fixture(scope="module")
def dyn(tmp_path_factory, cli, samples):
    out = tmp_path_factory.mktemp("dyn") / "b"
    assert cli("convert", samples / "digits_cnn.pt", "--dynamic-batch", "-o", out, "--json").code == 0
    return out


def test_profile_sweep_on_onnxruntime(cli, dyn, tmp_path):
    r = cli("profile", dyn, "--batch-sizes", "1,2,4,8", "--runs", "20", "--budget-ms", "1000", "--json",
            "--csv", tmp_path / "p.csv", "--plot", tmp_path / "p.png")
    assert r.code == 0, r
    rep = r.json()
    assert [row["batch"] for row in rep["rows"]] == [1, 2, 4, 8]
    for row in rep["rows"]:
        assert row["runs"] >= 20 and 0 < row["p50_ms"] <= row["p99_ms"] and row["rss_delta_mb"] >= 0
        assert row["throughput_items_s"] == pytest.approx(row["batch"] * 1e3 / row["p50_ms"])
        assert row["max_abs_vs_batch1"] < 1e-4 and row["top1_agreement_vs_batch1"] == 1.0 and not row["diverges"]
    assert rep["knee"]["batch"] in (1, 2, 4, 8)
    assert rep["best_under_budget"]["batch"] == max(rep["rows"], key=lambda x: x["throughput_items_s"])["batch"]
    with open(tmp_path / "p.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(t["batch"]) for t in table] == [1, 2, 4, 8] and float(table[0]["p50_ms"]) > 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "p.png").stat().st_size > 20_000
    assert (dyn / "profile.json").exists()
    r = cli("profile", dyn, "--batch-sizes", "1", "--runs", "5", "--report", tmp_path / "elsewhere.json", "--json")
    assert r.code == 0 and r.json()["report_file"] == str(tmp_path / "elsewhere.json"), r
    assert json.loads((tmp_path / "elsewhere.json").read_text())["rows"][0]["batch"] == 1


def test_profile_static_bundle_profiles_its_batch_only(cli, bundles):
    r = cli("profile", bundles("pt"), "--runs", "5", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert [row["batch"] for row in rep["rows"]] == [1]
    r = cli("profile", bundles("pt"), "--batch-sizes", "1,4", "--runs", "5", "--json")
    assert any("fixed batch of 1" in n for n in r.json()["notes"])


def test_profile_litert_resizes(cli, samples, tmp_path):
    out = tmp_path / "tfl"
    assert cli("convert", samples / "digits_keras.keras", "--target", "tflite", "-o", out, "--json").code == 0
    rep = cli("profile", out, "--batch-sizes", "1,4", "--runs", "5", "--json").json()
    assert [row["batch"] for row in rep["rows"]] == [1, 4]
    assert all("p50_ms" in row and not row["diverges"] for row in rep["rows"])


def test_profile_openvino_reshapes_a_static_ir(cli, samples, tmp_path):
    out = tmp_path / "ov"
    assert cli("convert", samples / "digits_cnn.pt", "--target", "intel-cpu", "-o", out, "--json").code == 0
    rep = cli("profile", out, "--batch-sizes", "1,4,8", "--runs", "5", "--json").json()
    assert [row["batch"] for row in rep["rows"]] == [1, 4, 8] and not rep["notes"]
    for row in rep["rows"]:
        assert "error" not in row and row["p50_ms"] > 0
        assert row["max_abs_vs_batch1"] < 1e-4 and row["top1_agreement_vs_batch1"] == 1.0 and not row["diverges"]


def test_profile_bad_batch_sizes(cli, dyn):
    r = cli("profile", dyn, "--batch-sizes", "1,x")
    assert r.code == 2 and "--batch-sizes" in r.stderr


def test_compare_one_table(cli, samples, tmp_path):
    r = cli("compare", samples / "digits_cnn.pt", "--targets", "onnx,openvino,jetson-orin-nano", "--precisions", "fp32,fp16,int8",
            "--calib", samples / "digits_calib.npz", "--data", samples / "digits_test.npz", "--runs", "5", "--json",
            "--csv", tmp_path / "c.csv")
    assert r.code == 0, r
    res = r.json()
    got = {(row["target"], row["precision"]): row for row in res["rows"]}
    assert set(got) == {("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"), ("onnxruntime-cpu", "int8"),
                        ("intel-cpu", "fp32"), ("intel-cpu", "fp16"), ("intel-cpu", "int8"),
                        ("jetson-orin-nano", "fp32"), ("jetson-orin-nano", "fp16"), ("jetson-orin-nano", "int8")}
    assert all(row["status"] == "ok" for row in got.values()), got
    assert res["source_baseline"]["framework"] == "torch" and res["source_baseline"]["p50_ms"] > 0
    for row in got.values():
        assert row["speedup_vs_source"] > 0 and row["top1"] > 0.9 and abs(row["drop_points"]) <= 1.0
    assert got[("jetson-orin-nano", "int8")]["measured"] == "host emulation, not device"
    assert got[("intel-cpu", "int8")]["bytes"] < got[("intel-cpu", "fp32")]["bytes"]
    with open(tmp_path / "c.csv") as f:
        assert len(list(csv.DictReader(f))) == 9
    r = cli("compare", samples / "digits_cnn.pt", "--targets", "onnx,toaster", "--precisions", "fp32,int8", "--runs", "3",
            "--json")
    rows = r.json()["rows"]
    assert any(row["target"] == "toaster" and row["status"] == "failed" for row in rows)
    assert json.dumps(rows)  # serialisable


@pytest.mark.parametrize("columns", [80, 60])
def test_compare_table_fits_the_terminal_without_cut_headers(samples, columns):
    import os
    import subprocess
    import sys

    from rich.cells import cell_len

    proc = subprocess.run([sys.executable, "-m", "edgeconv", "compare", str(samples / "digits_cnn.pt2"), "--targets",
                           "onnx,tflite", "--precisions", "fp32", "--runs", "5", "--data", str(samples / "digits_test.npz")],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": str(columns)}, check=True)
    lines = proc.stdout.splitlines()
    assert all(cell_len(line) <= columns for line in lines), proc.stdout
    table = [line for line in lines if line.startswith(("┃", "│"))]
    assert table and all(line.endswith(("┃", "│")) for line in table), proc.stdout  # nothing cropped at the right
    assert "…" not in proc.stdout
    assert "target" in proc.stdout and "p50 ms".split()[0] in proc.stdout
    assert "left out to fit" in proc.stdout and "--wide" in proc.stdout
