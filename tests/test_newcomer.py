"""Numbers a newcomer can believe (issue 35): every profile's default precision converts, Jetson Nano/TX2 take a .pt2,
TorchScript and Keras source (the canonical step lowers the dynamo exporter's opset 18 to their TensorRT 8.2's 13),
every figure measured away from the profile's device says so with the same words, and compare's baseline is the
source framework's eager run in a clean process, with one export for the run.

The all-profiles parts are units over the shipped profile data (fast); the real conversions are one per source kind
for the opset-13 path, the NPU's default and one small compare. ``bench/profile_defaults.py`` converts every shipped
profile's default for real; ``bench/compare_bench.py`` times compare's baseline against a bare eager loop.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from edgeconv.canonical import canonicalize
from edgeconv.core.machine import HOST_EMULATION, where_label
from edgeconv.errors import BadInput, ConversionFailed
from edgeconv.profiles import Profile, all_profiles

PROFILES = all_profiles()
X86 = {"/proc/sys/kernel/arch": "x86_64\n", "/proc/cpuinfo": "vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2\n"}
PI5 = {"/proc/sys/kernel/arch": "aarch64\n", "/proc/cpuinfo": "CPU implementer\t: 0x41\nCPU architecture: 8\n",
       "/proc/device-tree/model": "Raspberry Pi 5 Model B Rev 1.0\x00"}
# the profiles whose device any x86-64 CPU is (the runtime's own CPU path)
NATIVE_ON_X86 = {"onnxruntime-cpu", "litert-cpu", "ncnn-cpu", "executorch-cpu", "intel-cpu"}


# -- every shipped profile: its default precision, its device -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_default_precision_is_offered(name):
    prof = PROFILES[name]
    assert prof.default_precision in prof.precisions, name
    prof.tolerance(prof.default_precision)  # and it has a tolerance to be checked against
    assert "native" in prof.raw, f"{name} says nowhere which machine is its device ([native])"


def test_a_default_precision_the_device_lacks_is_refused(tmp_path):
    p = tmp_path / "npu.toml"
    p.write_text('name = "x"\nfamily = "x"\nbackend = "openvino"\nrunner = "openvino"\nprecisions = ["fp16"]\n'
                 'default_precision = "fp32"\n[tolerances]\nfp16 = { atol = 5e-2 }\n')
    with pytest.raises(BadInput, match="default_precision 'fp32' is not one of its precisions"):
        Profile.from_file(p)
    p.write_text(p.read_text().replace('default_precision = "fp32"\n', ""))
    assert Profile.from_file(p).default_precision == "fp16"  # no fp32 offered: the first precision, not fp32


def _label(name, read, machine):
    art = {"host_emulation": PROFILES[name].backend in ("jetson", "coral", "ethos-u")}  # what those targets record here
    target = {"profile": name, "profile_data": PROFILES[name].raw}
    return where_label(target, art, "host", {"device": "CPU"}, machine, read.get)  # CPUs only, on both machines


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_figure_away_from_the_device_says_so(name):
    kind, label = _label(name, X86, "x86_64")
    if name in NATIVE_ON_X86:
        assert (kind, label) == ("host", "native on x86-64")
    else:
        assert (kind, label) == (HOST_EMULATION, f"host emulation on x86-64, not {name}")
    on_pi = _label(name, PI5, "aarch64")
    if name == "raspberry-pi-5" or name in NATIVE_ON_X86 - {"intel-cpu"}:
        assert on_pi == ("host", "native on aarch64")
    else:
        assert on_pi == (HOST_EMULATION, f"host emulation on aarch64, not {name}")


def test_targets_separates_native_from_emulated(cli):
    r = cli("targets", "--json")
    assert r.code == 0, r
    rows = {row["name"]: row for row in r.json()["targets"]}
    assert {n for n, row in rows.items() if row["runs_here"] == "native"} == NATIVE_ON_X86
    pi5 = rows["raspberry-pi-5"]
    assert pi5["runs_here"] == "emulated" and "host emulation on x86-64" in pi5["device_part"]
    r = cli("targets")
    assert "runs here natively" in r.stdout and "emulated here" in r.stdout


# -- the canonical step lowers an opset the device's parser does not read ------------------------------------------------
def _model(nodes, opset, inits=()):
    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 2, 2])
    g = h.make_graph(nodes, "g", [x], [y], initializer=list(inits))
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def test_lowering_keeps_type_only_ops_and_says_so():
    from onnx import numpy_helper

    shape = numpy_helper.from_array(np.array([1, 2, 2], np.int64), "shape")
    src = _model([h.make_node("Relu", ["x"], ["r"], name="relu"),
                  h.make_node("Reshape", ["r", "shape"], ["y"], name="flat", allowzero=1)], 18, [shape])
    model, rec = canonicalize(src, lower_to=13, fold=False)
    assert rec.opset_after == 13 and rec.ir_after == 7
    assert rec.changes[0].startswith("opset 18 → 13 (onnx.version_converter") and "1 Relu, 1 Reshape" in rec.changes[0]
    assert not [a for n in model.graph.node for a in n.attribute]  # allowzero=1 dropped: the shape holds no 0
    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in model.graph.node] == ["relu", "flat"]
    unchanged, rec = canonicalize(src, max_opset=13, fold=False)  # without lower_to a newer graph is left alone
    assert rec.opset_after == 18


def test_an_op_the_converter_cannot_lower_is_exit_4_naming_it():
    src = _model([h.make_node("Mish", ["x"], ["m"], name="act.mish"),
                  h.make_node("Reshape", ["m", "shape"], ["y"], name="flat")], 18,
                 [onnx.numpy_helper.from_array(np.array([1, 2, 2], np.int64), "shape")])
    with pytest.raises(ConversionFailed, match=r"cannot lower the graph from opset 18 to 13: node 'act.mish' \(Mish\)") as e:
        canonicalize(src, lower_to=13, fold=False)
    assert e.value.exit_code == 4


# -- real conversions: the opset-13 path from each source kind, the NPU's default ------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory, cli, samples):
    base = tmp_path_factory.mktemp("newcomer")
    runs = {"nano-pt2": ("jetson-nano", [samples / "digits_cnn.pt2"]),
            "nano-torchscript": ("jetson-nano", [samples / "digits_cnn.pt", "--sample", samples / "digits_calib.npz"]),
            "tx2-keras": ("jetson-tx2", [samples / "digits_keras.keras"]),
            "npu-pt2": ("intel-npu", [samples / "digits_cnn.pt2"])}
    out = {}
    for key, (target, args) in runs.items():
        r = cli("convert", *args, "--target", target, "-o", base / key, "--json")  # no --precision: the profile's
        assert r.code == 0, (key, r)
        out[key] = (base / key, r.json()["manifest"])
    return out


@pytest.mark.parametrize("key", ["nano-pt2", "nano-torchscript", "tx2-keras"])
def test_jetson_nano_and_tx2_take_every_source_kind(converted, key):
    _, m = converted[key]
    assert m["precision"] == "fp32" and m["export"]["opset"] == 13 and m["status"] == "ok"
    parity = [c for c in m["checks"] if c["kind"] == "parity"]
    assert parity and all(c["ok"] for c in parity)  # the canonical graph and the artifact, against the source
    if key == "nano-pt2":  # dynamo writes 18; the canonical step lowered it, and the manifest says so
        assert m["export"]["exported_opset"] == 18
        assert any(c.startswith("opset 18 → 13 (onnx.version_converter") for c in m["export"]["canonical"]["changes"])


def test_intel_npu_default_is_fp16(converted):
    assert converted["npu-pt2"][1]["precision"] == "fp16"


def test_validate_and_profile_label_an_emulated_figure(converted, cli, tmp_path):
    bundle = converted["nano-pt2"][0]
    r = cli("validate", bundle, "--runs", "5", "--min-seconds", "0", "--report", tmp_path / "v.json")
    assert r.code == 0, r
    words = "host emulation on x86-64, not jetson-nano"
    assert words in " ".join(r.stdout.split())
    mo = json.loads((tmp_path / "v.json").read_text())["measured_on"]
    assert (mo["kind"], mo["label"]) == (HOST_EMULATION, words)
    r = cli("profile", bundle, "--batch-sizes", "1", "--runs", "5", "--json")
    assert r.code == 0, r
    assert r.json()["measured_on"]["label"] == words


def test_compare_exports_once_and_times_the_source_in_a_clean_process(cli, samples, tmp_path):
    r = cli("compare", samples / "digits_cnn.pt2", "--targets", "onnx,jetson-orin-nano", "--precisions", "fp32",
            "--runs", "20", "--json")
    assert r.code == 0, r
    res = r.json()
    assert res["export"]["exports"] == 1 and res["export"]["from_cache"] == 1 and not res["interrupted"]
    base = res["source_baseline"]
    assert base["framework"] == "torch" and base["p50_ms"] > 0 and base["modules_loaded"] == []
    assert "clean child process" in base["how"] and "time.perf_counter" in base["how"]
    rows = {row["target"]: row for row in res["rows"]}
    assert rows["jetson-orin-nano"]["label"] == "host emulation on x86-64, not jetson-orin-nano"
    assert rows["onnxruntime-cpu"]["label"] == "native on x86-64"
    for row in rows.values():
        assert row["speedup_vs_source"] == pytest.approx(base["p50_ms"] / row["p50_ms"])
