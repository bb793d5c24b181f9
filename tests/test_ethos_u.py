"""Arm Ethos-U: full-int8 TFLite through the real converters, compiled by the real Vela; Vela's report parsers on
output Vela actually wrote (tests/fixtures/vela/README.md says how)."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from conftest import convert_digits

pytest.importorskip("ethosu.vela", reason="ethos-u-vela is not installed (pip install 'edgeconv[ethos-u]')")

FIXTURES = Path(__file__).parent / "fixtures" / "vela"
PROFILES = Path(__file__).resolve().parents[1] / "targets"
ETHOS_PROFILES = ("ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256")


@pytest.fixture(scope="module")
def ethos(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("ethos") / "b"
    return out, convert_digits(cli, out, "--target", "ethos-u55-128", "--precision", "int8")


def test_ethos_bundle_has_the_vela_model_and_its_estimate(ethos):
    out, m = ethos
    assert m["precision"] == "int8" and m["status"] == "ok"
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    assert model["file"] == "model.tflite" and model["runner"] == "litert"
    assert set(model["tensor_dtypes"].values()) == {"int8"}  # int8 I/O from the profile, like Coral
    assert model["host_emulation"] is True
    assert model["host_emulation_note"] == ("host emulation of the int8 graph on LiteRT; "
                                            "the Vela NPU binary itself was not executed")

    npu = next(a for a in m["artifacts"] if a["role"] == "npu-model")
    assert npu["file"] == "vela/model_vela.tflite" and npu["runner"] is None
    from edgeconv.targets.tflite import tflite_graph

    # the whole graph became one Ethos-U custom op (the interpreter lists it; it could not run it)
    assert [op["op"] for op in tflite_graph(out / npu["file"])[0]] == ["ethos-u"]
    assert [op["op"] for op in tflite_graph(out / "model.tflite")[0]].count("CONV_2D") == 2
    cmd = npu["vela"]["command"]
    for flag, value in (("--accelerator-config", "ethos-u55-128"), ("--system-config", "Ethos_U55_High_End_Embedded"),
                        ("--memory-mode", "Shared_Sram"), ("--config", "BUNDLE/vela/vela.ini"), ("--output-dir", "BUNDLE/vela")):
        assert cmd[cmd.index(flag) + 1] == value
    assert cmd[-1] == "BUNDLE/model.tflite"

    mapping = next(c for c in m["checks"] if c["kind"] == "ethos-u-npu-mapping")
    assert mapping["ok"] and mapping["reason"] is None
    assert mapping["npu_share_ops"] == 1.0 and mapping["npu_ops"] > 0
    assert mapping["cpu_ops"] == 0 and mapping["cpu_operators"] == []
    assert mapping["npu_custom_ops"] == 1 and mapping["vela_version"]
    est = mapping["estimate"]
    assert est["label"].startswith("Vela estimate") and "not a measured latency" in est["label"]
    assert est["accelerator_config"] == "Ethos_U55_128" and est["system_config"] == "Ethos_U55_High_End_Embedded"
    assert est["core_clock_mhz"] == 500.0  # the profile's clock, from vela.ini
    assert est["cycles_total"] >= est["cycles_npu"] > 0
    assert est["inference_time_ms"] == pytest.approx(est["cycles_total"] / est["core_clock_hz"] * 1e3)
    assert 0 < est["sram_used_kib"] < 64 and est["off_chip_flash_used_kib"] > 0  # Shared_Sram: weights in flash
    assert est["nn_macs"] > 0

    # the summary CSV is in the bundle and is what the estimate was read from
    from edgeconv.targets.ethos_u import parse_summary_csv

    csv_art = next(a for a in m["artifacts"] if a["role"] == "report")
    assert csv_art["file"] == "vela/model_summary_Ethos_U55_High_End_Embedded.csv"
    assert parse_summary_csv(out / csv_art["file"]) == est
    assert {a["file"] for a in m["artifacts"]} >= {"vela/vela.log", "vela/vela.ini"}
    assert "NPU operators" in (out / "vela" / "vela.log").read_text()


def test_ethos_bundle_validates_as_host_emulation(ethos, cli, samples):
    out, _ = ethos
    r = cli("validate", out, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "0.5", "--runs", "10", "--json")
    assert r.code == 0, r
    rep = r.json()
    assert rep["measured_on"]["kind"] == "host emulation, not device"
    assert "Vela NPU binary itself was not executed" in rep["measured_on"]["note"]


def test_ethos_refuses_float(cli, samples, tmp_path):
    r = cli("convert", samples / "digits_cnn.pt", "--target", "ethos-u55-128", "--precision", "fp32", "-o", tmp_path / "o")
    err = " ".join(r.stderr.split())
    assert r.code == 2, r
    assert "precision 'fp32' is not offered for ethos-u55-128 (offered: int8)" in err
    assert "runs quantized operators only" in err and "--precision int8" in err
    assert not (tmp_path / "o").exists()
    r = cli("convert", samples / "digits_cnn.pt", "--target", "ethos-u", "-o", tmp_path / "o")
    assert r.code == 2 and "--calib" in r.stderr


# -- Vela's report, on output Vela wrote ---------------------------------------------------------------------
def test_summary_csv_parser_on_real_vela_output():
    from edgeconv.targets.ethos_u import parse_summary_csv

    u55 = parse_summary_csv(FIXTURES / "int8_u55_128_summary.csv")
    assert u55["accelerator_config"] == "Ethos_U55_128" and u55["memory_mode"] == "Shared_Sram"
    assert u55["core_clock_mhz"] == 500.0 and u55["cycles_total"] == 42848 and u55["cycles_npu"] == 13088
    assert u55["inference_time_ms"] == pytest.approx(0.085696)  # 42848 cycles at 500 MHz
    assert u55["sram_used_kib"] == 3.0 and u55["dram_used_kib"] == 0.0
    assert u55["off_chip_flash_used_kib"] == pytest.approx(38.984375)
    assert u55["off_chip_used_kib"] == pytest.approx(38.984375) and u55["nn_macs"] == 339584
    assert u55["weights_storage_area"] == "Off-chip Flash" and u55["feature_map_storage_area"] == "SRAM"
    u65 = parse_summary_csv(FIXTURES / "int8_u65_256_summary.csv")
    assert u65["core_clock_mhz"] == 1000.0 and u65["memory_mode"] == "Dedicated_Sram"
    assert u65["dram_used_kib"] > 0 and u65["off_chip_used_kib"] == u65["dram_used_kib"]  # Dedicated_Sram: weights in DRAM
    fp32 = parse_summary_csv(FIXTURES / "fp32_u55_128_summary.csv")
    assert fp32["inferences_per_second"] is None  # Vela writes nan when nothing runs on the NPU
    assert fp32["cycles_total"] == 0 and fp32["nn_macs"] == 0 and fp32["sram_used_kib"] == 0.0


def test_stdout_parser_and_mapping_check_on_a_float_model():
    """Vela exits 0 on a float model with every operator on the CPU; the check fails and says why."""
    from edgeconv.targets.ethos_u import mapping_check, parse_summary_csv, parse_vela_stdout

    rep = parse_vela_stdout((FIXTURES / "fp32_u55_128_stdout.txt").read_text())
    assert rep["npu_ops"] == 0 and rep["cpu_ops"] == 7 == len(rep["cpu_list"])
    assert all(row["reasons"] for row in rep["cpu_list"])
    check = mapping_check(rep, parse_summary_csv(FIXTURES / "fp32_u55_128_summary.csv"), ["CONV_2D"] * 2, None)
    assert check["kind"] == "ethos-u-npu-mapping" and not check["ok"] and check["npu_share_ops"] == 0.0
    assert "Vela placed no operator on the Ethos-U NPU" in check["reason"] and "7 operator(s) left on the CPU" in check["reason"]
    assert "unsupported DataType Float32" in check["reason"] and "FULLY_CONNECTED" in check["reason"]
    fc = next(c for c in check["cpu_operators"] if c["name"] == "PartitionedCall:0")
    assert fc["ops"] == ["FULLY_CONNECTED"] and "Float32" in fc["reason"]


def test_stdout_parser_and_min_share_on_an_int8_model():
    from edgeconv.targets.ethos_u import mapping_check, parse_summary_csv, parse_vela_stdout

    rep = parse_vela_stdout((FIXTURES / "int8_u55_128_stdout.txt").read_text())
    assert rep["npu_ops"] == 10 == len(rep["npu_list"]) and rep["cpu_ops"] == 0 and rep["clock_mhz_reported"] == 500.0
    est = parse_summary_csv(FIXTURES / "int8_u55_128_summary.csv")
    assert mapping_check(rep, est, ["ethos-u"], 1.0)["ok"]
    # a share below the minimum fails with the share named
    partial = {**rep, "cpu_ops": 10,
               "cpu_list": [{"op": "Passthrough", "name": "t", "reasons": [{"op": "TANH", "reason": "why"}]}]}
    check = mapping_check(partial, est, ["ethos-u", "TANH"], 0.9)
    assert not check["ok"] and "NPU share 50% of operators is below the minimum 0.9" in check["reason"]
    assert "(TANH)" in check["reason"]
    assert mapping_check(partial, est, ["ethos-u", "TANH"], None)["ok"]  # by default only zero NPU operators fails


# -- the profiles --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ETHOS_PROFILES)
def test_profiles_name_settings_vela_defines(name):
    from edgeconv.profiles import resolve_profile
    from edgeconv.targets.ethos_u import device_settings, settings_problems, vela_config_file

    prof = resolve_profile(name)
    assert prof.backend == "ethos-u" and prof.precisions == ["int8"] and prof.raw["runtime"]["io_dtype"] == "int8"
    settings = device_settings(prof)
    ini = vela_config_file(settings["vela_config"])
    assert settings_problems(settings, ini) == []
    parser = configparser.ConfigParser()
    parser.read(ini)
    assert float(parser[f"System_Config.{settings['system_config']}"]["core_clock"]) == prof.raw["device"]["core_clock_mhz"] * 1e6
    assert settings["accelerator_config"] == name


def test_family_default_and_mismatched_system_config():
    from edgeconv.profiles import resolve_profile
    from edgeconv.targets.ethos_u import settings_problems, vela_config_file

    assert resolve_profile("ethos-u").name == "ethos-u55-128"
    ini = vela_config_file()
    problems = settings_problems({"accelerator_config": "ethos-u55-128", "system_config": "Ethos_U65_High_End",
                                  "memory_mode": "No_Such_Mode"}, ini)
    assert any("No_Such_Mode" in p and "Shared_Sram" in p for p in problems)
    assert any("describes an Ethos-U65 system, not the ethos-u55-128 accelerator" in p for p in problems)
