"""The device path on a real aarch64 userland: a Debian bookworm arm64 root under qemu-user (binfmt), reached over an
OpenSSH server on 127.0.0.1 whose sessions run inside that root (.ci/arm_board.py, `make arm-board`).

Nothing here is mocked: the bundle's device runner runs as an aarch64 process with Debian's Python 3.11 and the
aarch64 wheels of numpy, LiteRT and ONNX Runtime, and this machine runs the same request on its x86-64 wheels for the
cross-architecture comparison. The board is built once per machine (cached in /var/cache/edgeconv/arm-board) by
`make arm-board`, which `make test` runs first; the session fixture only starts a built board (`start --no-build`: no
apt-get, no pip here) and skips with the reason `make arm-board` recorded where this machine cannot run it, or with
"the board is not built" where it was never run. Not root is its own reason, and a failure under CI.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest
from conftest import ROOT, convert_digits
from test_core import report_keys

from edgeconv.core.machine import EMULATED_LABEL as EMULATED

BOARD = ROOT / ".ci" / "arm_board.py"
EXIT_NO_BINFMT, EXIT_NOT_BUILT = 77, 75  # .ci/arm_board.py's: this machine cannot run the board; it is not built


def _reason(stderr: str) -> str:
    """The script's error message (it may span lines), on one line."""
    text = stderr[stderr.rfind("arm-board: error: "):] if "arm-board: error: " in stderr else stderr
    return " ".join(text.removeprefix("arm-board: error: ").split()) or "?"


@pytest.fixture(scope="session")
def arm_board():
    """The running board: its edgeconv arguments and what it reported of itself. Started here when it is built and not
    running (never built: that is `make arm-board`'s); stopped after the session if this fixture started it."""
    if os.geteuid() != 0:
        why = ("not root: the ARM64 board needs root (chroot, mount, binfmt_misc, its own sshd); run `make arm-board` "
               "and the tests as root")
        if os.environ.get("CI") or os.environ.get("EDGECONV_CI"):
            pytest.fail(why + " (CI must run the board's tests)")
        pytest.skip(why)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(BOARD), "start", "--no-build", "--json"], check=False, capture_output=True,
                       text=True, timeout=600)
    if r.returncode == EXIT_NO_BINFMT:
        pytest.skip("this machine cannot run the aarch64 board: " + _reason(r.stderr))
    if r.returncode == EXIT_NOT_BUILT:
        pytest.skip(_reason(r.stderr))
    assert r.returncode == 0, f"`{BOARD} start --no-build` failed:\n{r.stderr[-4000:]}"
    lines = r.stdout.strip().splitlines()
    record, args = json.loads(lines[-2]), shlex.split(lines[-1])
    record["fixture_seconds"] = time.monotonic() - t0
    yield {"args": args, "record": record, "facts": record["facts"], "remote": args[args.index("--remote") + 1]}
    if record["started"]:
        subprocess.run([sys.executable, str(BOARD), "stop"], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def pi_int8(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("arm") / "pi4-int8"
    convert_digits(cli, out, "--target", "raspberry-pi-4", "--precision", "int8")
    return out


@pytest.fixture(scope="module")
def onnx_fp32(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("arm") / "onnx-fp32"
    convert_digits(cli, out, "--target", "onnx")
    return out


REMOTE_ENVELOPE = ("device", "cross_architecture", "report_file")  # what edgeconv adds to a device's report on its way back


def _same_keys_as_here(rep: dict, here: dict) -> None:
    """The board's report has the fields of the one made in-process on this host, recursively (edgeconv's envelope
    aside): one report schema wherever a request runs."""
    # measured_on.emulation is in both: None on this host, the qemu evidence (label, emulator, evidence) on the board
    there = {k for k in report_keys(rep) if k.split(".")[0] not in REMOTE_ENVELOPE and not k.startswith("measured_on.emulation.")}
    assert rep["measured_on"]["emulation"] and here["measured_on"]["emulation"] is None
    assert there == report_keys(here) - {"report_file"}, (there ^ report_keys(here))


def _device_report(r) -> dict:
    dev = r.json()["devices"][0]
    assert "report" in dev, dev
    return dev["report"]


def _on_the_board(rep: dict, facts: dict, runtime: str) -> None:
    """The report was measured by the bundle's device runner as an aarch64 process on the board's own wheels."""
    mo = rep["measured_on"]
    assert mo["machine"] == "aarch64" and "aarch64" in mo["platform"]
    assert mo["distribution"] == facts["distribution"] and "bookworm" in mo["distribution"]
    assert mo["python"] == facts["python"] and mo["python"].startswith("3.11")
    assert mo["numpy"] == facts["numpy"] and mo["runtime"] == runtime
    assert mo["version"] == facts["ai-edge-litert" if runtime == "litert" else "onnxruntime"]
    assert rep["device"]["ran"] == "device runner" and " aarch64 " in f" {rep['device']['uname']} "


def test_int8_tflite_on_the_arm_board_agrees_with_x86(cli, arm_board, pi_int8, samples, tmp_path):
    """An int8 raspberry-pi-4 bundle validated on the aarch64 board: parity, accuracy and the budgets decide as on the
    host, and the same outputs computed here on x86-64 are compared with the board's (recorded in the report)."""
    r = cli("validate", pi_int8, *arm_board["args"], "--data", samples / "digits_test.npz", "--max-accuracy-drop", "1",
            "--runs", "20", "--json")
    assert r.code == 0, r
    rep = _device_report(r)
    _on_the_board(rep, arm_board["facts"], "litert")
    here = cli("validate", pi_int8, "--data", samples / "digits_test.npz", "--max-accuracy-drop", "1", "--runs", "20",
               "--report", tmp_path / "here.json")
    assert here.code == 0, here
    _same_keys_as_here(rep, json.loads((tmp_path / "here.json").read_text()))
    assert rep["precision"] == "int8" and rep["target"] == "raspberry-pi-4" and rep["ok"] and rep["parity"]["ok"]
    assert rep["accuracy"]["artifact"]["top1"] > 0.9
    cross = rep["cross_architecture"]
    assert cross["compared"] and cross["compared_on"] == "data" and cross["samples"] == 360
    assert (cross["host"]["machine"], cross["device"]["machine"]) == ("x86_64", "aarch64")
    assert cross["device"]["top1"] == rep["accuracy"]["artifact"]["top1"]
    assert abs(cross["top1_points_difference"]) <= 0.5, cross  # the x86 and aarch64 kernels agree to within 0.5 points
    assert cross["top1_agreement"] >= 0.99 and 0.0 <= cross["max_abs"] < 1.0, cross  # int8: a few quantisation steps at most
    saved = json.loads((pi_int8 / "reports" / "127.0.0.1" / "validation.json").read_text())
    assert saved["cross_architecture"]["max_abs"] == cross["max_abs"]


def test_latency_budget_missed_on_the_board_exits_1(cli, arm_board, pi_int8):
    """A p50 budget no board meets: exit 1, the budget named, and the table says the timing is emulated."""
    r = cli("validate", pi_int8, *arm_board["args"], "--runs", "10", "--max-latency-ms", "0.0001")
    assert r.code == 1, r
    text = " ".join(r.stdout.split())  # the table wraps at the terminal's width
    assert "budget max_latency_ms_p50 missed" in text
    assert f"latency of {arm_board['remote']}: {EMULATED}" in text
    # the evidence the board's kernel gives: /proc/sys/kernel/arch exists on recent kernels only, /proc/cpuinfo always
    assert ("the kernel is x86_64 (/proc/sys/kernel/arch) but this process is aarch64" in text
            or "/proc/cpuinfo describes an x86 CPU but this process is aarch64" in text), text


def test_emulation_label_in_the_json_report(cli, arm_board, onnx_fp32, samples):
    """An ONNX fp32 bundle on the board's ONNX Runtime: the label, from the device's own evidence, is in the JSON report
    (measured_on and latency) and in the saved report; the fp32 outputs agree across architectures."""
    r = cli("validate", onnx_fp32, *arm_board["args"], "--data", samples / "digits_test.npz", "--runs", "10", "--json")
    assert r.code == 0, r
    rep = _device_report(r)
    _on_the_board(rep, arm_board["facts"], "onnxruntime")
    mo = rep["measured_on"]
    assert mo["kind"] == EMULATED and rep["latency"]["measured"] == EMULATED
    assert mo["emulation"]["label"] == EMULATED and any("/proc/" in e for e in mo["emulation"]["evidence"])
    saved = json.loads((onnx_fp32 / "reports" / "127.0.0.1" / "validation.json").read_text())
    assert saved["measured_on"]["kind"] == EMULATED and saved["latency"]["measured"] == EMULATED
    cross = rep["cross_architecture"]
    assert cross["compared"] and cross["top1_agreement"] == 1.0 and cross["max_abs"] < 1e-3, cross
    assert cross["top1_points_difference"] == 0.0


def test_profile_and_selftest_on_the_board(cli, arm_board, pi_int8, tmp_path):
    r = cli("profile", pi_int8, *arm_board["args"], "--batch-sizes", "1,2", "--runs", "5", "--json")
    assert r.code == 0, r
    rep = _device_report(r)
    assert rep["measured_on"]["machine"] == "aarch64" and rep["measured_on"]["kind"] == EMULATED
    assert [row["batch"] for row in rep["rows"]] == [1, 2] and all(row["p50_ms"] > 0 for row in rep["rows"])
    here = cli("profile", pi_int8, "--batch-sizes", "1,2", "--runs", "5", "--report", tmp_path / "here.json")
    assert here.code == 0, here
    _same_keys_as_here(rep, json.loads((tmp_path / "here.json").read_text()))
    r = cli("selftest", "--target", "raspberry-pi-5", *arm_board["args"], "--json")
    assert r.code == 0, r
    res = r.json()
    assert [(row["step"], row["ok"]) for row in res["rows"]] == [("convert", True), ("validate", True)]
    assert EMULATED in res["rows"][1]["detail"]
    val = res["devices"][0]["validation"]
    assert val["measured_on"]["machine"] == "aarch64" and val["precision"] == "int8"
    assert val["cross_architecture"]["compared"] and abs(val["cross_architecture"]["top1_points_difference"]) <= 0.5


def test_real_machines_keep_their_plain_label(cli, onnx_fp32):
    """No emulation evidence on this x86 host, nor in what a real Raspberry Pi 4 shows; qemu's is recognised."""
    from edgeconv.core.machine import emulation

    r = cli("validate", onnx_fp32, "--runs", "5", "--json")
    assert r.code == 0, r
    assert r.json()["measured_on"]["kind"] == "host" and r.json()["measured_on"]["emulation"] is None
    pi4 = {"/proc/sys/kernel/arch": "aarch64\n",
           "/proc/cpuinfo": "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
                            "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd08\n"}
    assert emulation("aarch64", pi4.get) is None
    qemu = {"/proc/sys/kernel/arch": "x86_64\n",
            "/proc/cpuinfo": "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2\n"}
    found = emulation("aarch64", qemu.get)
    assert found["label"] == EMULATED and len(found["evidence"]) == 2


def test_a_registered_qemu_handler_is_evidence_too(tmp_path):
    """An older kernel has no /proc/sys/kernel/arch, and qemu-user 8.1 on presents the guest an aarch64 /proc/cpuinfo of
    its own: then qemu's enabled binfmt handler for this process's own architecture (visible where binfmt_misc is
    mounted) is the evidence; a disabled one is not. Real /proc text, read from files in a temporary root."""
    from edgeconv.core.machine import emulation

    def proc(files: dict[str, str]):
        root = tmp_path / str(len(list(tmp_path.iterdir())))
        for path, text in files.items():
            (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
            (root / path.lstrip("/")).write_text(text)

        def read(path):
            f = root / path.lstrip("/")
            return f.read_text() if f.exists() else None

        return read

    handler = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n"
               "magic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n")
    cpuinfo = ("processor\t: 0\nBogoMIPS\t: 100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics\n"
               "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd07\nCPU revision\t: 0\n")
    found = emulation("aarch64", proc({"/proc/cpuinfo": cpuinfo, "/proc/sys/fs/binfmt_misc/qemu-aarch64": handler}))
    assert found["label"] == EMULATED
    assert found["evidence"] == ["qemu's binfmt handler for aarch64 is registered here "
                                 "(/proc/sys/fs/binfmt_misc/qemu-aarch64)"]
    disabled = handler.replace("enabled", "disabled", 1)
    assert emulation("aarch64", proc({"/proc/cpuinfo": cpuinfo, "/proc/sys/fs/binfmt_misc/qemu-aarch64": disabled})) is None
    # an older kernel without /proc/sys/kernel/arch under qemu: the host's cpuinfo alone gives it away
    x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr pae avx2\n"
    assert emulation("aarch64", proc({"/proc/cpuinfo": x86}))["evidence"] == [
        "/proc/cpuinfo describes an x86 CPU but this process is aarch64"]
