"""On-device runs over SSH against a real OpenSSH server on 127.0.0.1 (started here, stopped after)."""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_subprocess

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).exists():
        pytest.fail("sshd is not installed: `make setup` installs openssh-server (Debian) for these tests")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "other_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True, timeout=30)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {d / 'sshd.pid'}\nLogLevel ERROR\nAcceptEnv TMPDIR\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-E", str(d / "sshd.log")])
    deadline = time.time() + 15
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("sshd did not start: " + (d / "sshd.log").read_text())
    pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    yield {"port": port, "dir": d, "user": getpass.getuser(),
           "opts": ["--identity", str(d / "client_key"), "--ssh-option", f"UserKnownHostsFile={d / 'known_hosts'}",
                    "--ssh-option", "StrictHostKeyChecking=yes"]}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def device_python(tmp_path_factory):
    """A 'device' Python: a fresh venv with only numpy and the runtimes, no edgeconv, no torch or TensorFlow."""
    d = tmp_path_factory.getbasetemp() / "devicevenv" / "venv"  # one per session: test_one_path.py uses it too
    if not (d.parent / "ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(d)], check=True, timeout=120)
        pip = [str(d / "bin" / "pip"), "install", "--quiet", "numpy", "onnxruntime", "ai-edge-litert"]
        subprocess.run(pip, check=True, timeout=900)
        (d.parent / "ready").write_text("")
    return str(d / "bin" / "python")


def remote(sshd) -> str:
    return f"{sshd['user']}@127.0.0.1:{sshd['port']}"


def test_remote_validate_matches_local(cli, bundles, sshd, samples):
    bundle = bundles("pt")
    local = cli("validate", bundle, "--runs", "10", "--json").json()
    r = cli("validate", bundle, "--remote", remote(sshd), *sshd["opts"], "--remote-python", sys.executable, "--runs", "10",
            "--data", samples / "digits_test.npz", "--json")
    assert r.code == 0, r
    dev = r.json()["devices"][0]
    assert dev["ok"] and dev["report"]["device"]["ran"] == "edgeconv"
    rep = dev["report"]
    assert rep["parity"]["outputs"] == local["parity"]["outputs"]  # same bundle, same runtime: identical numbers
    assert rep["latency"]["runs"] >= 10 and rep["latency"]["p50_ms"] > 0  # at least --runs and --min-seconds
    assert rep["accuracy"]["drop_points"] == pytest.approx(0.0, abs=1e-9)
    saved = bundle / "reports" / "127.0.0.1" / "validation.json"
    assert json.loads(saved.read_text())["latency"]["runs"] >= 10


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_device_runner_in_a_bare_venv(cli, sshd, device_python, samples, tmp_path, target):
    out = tmp_path / f"digits {target} 'x' $HOME"  # a space, a quote and a $ survive
    r = cli("convert", samples / "digits_cnn.pt", "--target", target, "-o", out, "--data", samples / "digits_test.npz", "--json")
    assert r.code == 0, r
    r = cli("validate", out, "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python, "--runs", "10",
            "--data", samples / "digits_test.npz", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert rep["device"]["ran"] == "device runner"
    assert rep["measured_on"]["runtime"] == ("onnxruntime" if target == "onnx" else "litert")
    assert rep["ok"] and rep["parity"]["ok"]
    assert rep["accuracy"]["artifact"]["top1"] > 0.9 and rep["accuracy"]["drop_points"] == pytest.approx(0.0, abs=1e-9)
    assert (out / "reports" / "127.0.0.1" / "validation.json").exists()


def test_two_devices_in_parallel(cli, bundles, sshd):
    r = cli("validate", bundles("pt2"), "--remote", remote(sshd), "--remote", remote(sshd), *sshd["opts"],
            "--remote-python", sys.executable, "--runs", "5", "--json")
    assert r.code == 0, r
    assert [d["ok"] for d in r.json()["devices"]] == [True, True]


def test_one_failing_device_does_not_stop_the_other(cli, bundles, sshd):
    dead = f"{sshd['user']}@127.0.0.1:{_free_port()}"
    r = cli("validate", bundles("pt2"), "--remote", remote(sshd), "--remote", dead, *sshd["opts"],
            "--remote-python", sys.executable, "--runs", "5", "--json")
    assert r.code == 1
    devs = r.json()["devices"]
    assert devs[0]["ok"] and not devs[1]["ok"] and "connection refused" in devs[1]["error"]


def test_unreachable_port_fails_fast(cli, bundles, sshd):
    t0 = time.time()
    r = cli("validate", bundles("pt"), "--remote", f"{sshd['user']}@127.0.0.1:{_free_port()}", *sshd["opts"])
    assert r.code == 3 and time.time() - t0 < 10
    assert "connection refused" in r.stdout + r.stderr


def test_wrong_key_is_an_auth_failure(cli, bundles, sshd):
    opts = ["--identity", str(sshd["dir"] / "other_key"), *sshd["opts"][2:]]
    r = cli("validate", bundles("pt"), "--remote", remote(sshd), *opts)
    assert r.code == 3 and "authentication failed" in r.stdout + r.stderr


def test_unknown_host_key_is_refused(cli, bundles, sshd, tmp_path):
    (tmp_path / "empty_known_hosts").write_text("")
    opts = ["--identity", str(sshd["dir"] / "client_key"), "--ssh-option", f"UserKnownHostsFile={tmp_path / 'empty_known_hosts'}",
            "--ssh-option", "StrictHostKeyChecking=yes"]
    r = cli("validate", bundles("pt"), "--remote", remote(sshd), *opts)
    assert r.code == 3 and "host key verification failed" in r.stdout + r.stderr


def test_missing_runtime_on_the_device_is_exit_3(cli, sshd, samples, tmp_path, device_python):
    out = tmp_path / "ov"
    assert cli("convert", samples / "digits_cnn.pt", "--target", "openvino", "-o", out, "--json").code == 0
    r = cli("validate", out, "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python)
    assert r.code == 3 and "no backend for 'openvino'" in r.stdout + r.stderr


def _remote_tmp(tmp_path: Path) -> tuple[Path, list[str]]:
    """A temporary folder of this test's own on the device (its mktemp honours TMPDIR, which the test sshd accepts),
    so that what it leaves is told apart from the remote directories of tests running beside it."""
    root = tmp_path / "device-tmp"
    root.mkdir()
    return root, ["--ssh-option", f"SetEnv=TMPDIR={root}"]


def _remote_dirs(root: Path) -> set[str]:
    return {p.name for p in root.glob("edgeconv.*")}


def test_ctrl_c_mid_run_leaves_no_remote_directory(bundles, sshd, tmp_path):
    root, env = _remote_tmp(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "edgeconv", "validate", str(bundles("pt")), "--remote", remote(sshd),
                             *sshd["opts"], *env, "--remote-python", sys.executable, "--runs", "2000000"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not _remote_dirs(root):
        time.sleep(0.05)
    assert _remote_dirs(root), "the remote directory never appeared"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    time.sleep(0.5)
    assert not _remote_dirs(root)


def test_profile_and_build_over_ssh_need_edgeconv_there(cli, bundles, sshd, samples, tmp_path, device_python):
    dyn = tmp_path / "dyn"
    assert cli("convert", samples / "digits_cnn.pt", "--dynamic-batch", "-o", dyn, "--json").code == 0
    r = cli("profile", dyn, "--remote", remote(sshd), *sshd["opts"], "--remote-python", sys.executable, "--batch-sizes", "1,4",
            "--runs", "5", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert [row["batch"] for row in rep["rows"]] == [1, 4] and rep["device"]["ran"] == "edgeconv"
    assert (dyn / "reports" / "127.0.0.1" / "profile.json").exists()
    # without edgeconv there, the bundle's device runner sweeps and the knee is worked out here
    r = cli("profile", dyn, "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python, "--batch-sizes", "1,2,4",
            "--runs", "5", "--budget-ms", "1000", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert rep["device"]["ran"] == "device runner" and [row["batch"] for row in rep["rows"]] == [1, 2, 4]
    for row in rep["rows"]:
        assert row["runs"] >= 5 and 0 < row["p50_ms"] <= row["p99_ms"] and not row["diverges"]
    assert rep["knee"]["batch"] in (1, 2, 4) and rep["best_under_budget"]["batch"] in (1, 2, 4)
    assert "device runner" in rep["method"]
    r = cli("build", dyn, "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python)
    assert r.code == 3 and "needs edgeconv on the device" in r.stdout + r.stderr
    # build on a host without TensorRT: the device's own error comes back, exit 3
    orin = tmp_path / "orin"
    r = cli("convert", samples / "digits_cnn.pt", "--target", "jetson-orin-nano", "--precision", "fp16", "-o", orin, "--json")
    assert r.code == 0, r
    r = cli("build", orin, "--remote", remote(sshd), *sshd["opts"], "--remote-python", sys.executable)
    assert r.code == 3 and "tensorrt not installed" in r.stdout + r.stderr
    # one engine per bundle: two devices would overwrite each other's engine
    r = cli("build", orin, "--remote", remote(sshd), "--remote", remote(sshd), *sshd["opts"])
    assert r.code == 2 and "takes one device" in r.stderr


def test_selftest_over_ssh(cli, sshd, device_python):
    """Converted here, validated on the 'board' by the bundle's device runner (no edgeconv there)."""
    r = cli("selftest", "--target", "raspberry-pi-5", "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python,
            "--json")
    assert r.code == 0, r
    res = r.json()
    assert [(row["where"], row["step"], row["ok"]) for row in res["rows"]] == [
        ("this machine", "convert", True), (remote(sshd), "validate", True)]
    assert "top-1" in res["rows"][1]["detail"] and "on litert" in res["rows"][1]["detail"]
    dev = res["devices"][0]
    assert dev["ok"] and dev["validation"]["device"]["ran"] == "device runner"


def test_selftest_over_ssh_stops_at_a_failed_build(cli, sshd):
    """A Jetson profile builds on the board first; a board without TensorRT says so (exit 3) and is not validated."""
    r = cli("selftest", "--target", "jetson-orin-nano", "--remote", remote(sshd), *sshd["opts"],
            "--remote-python", sys.executable)
    assert r.code == 3, r
    assert "tensorrt not installed" in r.stdout + r.stderr and "validate" not in r.stdout


def test_a_full_disk_on_the_device_is_named(cli, bundles, sshd, tmp_path):
    """The device's temporary directory on a 64 KiB tmpfs: the bundle does not fit, the message says the disk is
    full (exit 3), and the half-copied directory is removed."""
    if os.geteuid() != 0:
        pytest.fail("mounting the small tmpfs needs root (as `make setup` and .ci/run have)")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True, timeout=30)
    try:
        r = cli("validate", bundles("pt"), "--remote", remote(sshd), *sshd["opts"], "--ssh-option", f"SetEnv=TMPDIR={small}",
                "--remote-python", sys.executable)
        assert r.code == 3, r
        assert "the device's disk is full" in r.stdout + r.stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=False, timeout=30)


# The device runner's protocol: asked, never read from source text (edgeconv/remote/protocol.py).

_PROTOCOL_1_RUNNER = b'''import argparse, json, sys
ap = argparse.ArgumentParser()  # a runner from before the protocol: no --protocol, no "protocol" request field
ap.add_argument("bundle")
ap.add_argument("--request")
ap.add_argument("--json", action="store_true")
args = ap.parse_args()
request = json.load(open(args.request))
if "protocol" in request:
    print(json.dumps({"ok": False, "error": {"message": "unknown field protocol", "exit_code": 2}}))
    sys.exit(2)
print(json.dumps({"ok": True, "request": request}))
'''


def _with_runner(src: Path, dest: Path, name: str | None, content: bytes = b"") -> Path:
    """A copy of the bundle ``src`` whose device runner is ``name`` holding ``content``; ``name`` None: a bundle from
    before bundles carried their runner."""
    import hashlib

    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("reports"))
    manifest = json.loads((dest / "manifest.json").read_text())
    old = next(a for a in manifest["artifacts"] if a["role"] == "device-runner")
    (dest / old["file"]).unlink()
    manifest["artifacts"].remove(old)
    if name is not None:
        (dest / name).write_bytes(content)
        manifest["artifacts"].append({**old, "file": name, "sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)})
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def _python_with(tmp_path: Path, python: str, package: dict[str, str]) -> str:
    """A 'device' Python that imports the given edgeconv package files (an older or a newer edgeconv) first."""
    site = tmp_path / "site"
    for rel, text in package.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {python} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_a_runner_from_before_the_protocol_gets_a_protocol_1_request(cli, bundles, sshd, device_python, tmp_path):
    """A runner without --protocol is protocol 1: its request carries no protocol field (it would refuse one)."""
    old = _with_runner(bundles("pt"), tmp_path / "old", "edgeconv_runner.py", _PROTOCOL_1_RUNNER)
    r = cli("validate", old, "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python, "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert rep["device"]["ran"] == "device runner" and rep["request"]["where"] == "device"
    assert "protocol" not in rep["request"] and rep["request"]["outputs_file"].endswith("/outputs.npz")


def test_a_runner_of_a_newer_protocol_is_refused(cli, bundles, sshd, device_python, tmp_path):
    newer = b"import sys\nif '--protocol' in sys.argv:\n    print(99)\n    sys.exit(0)\nsys.exit('ran a request')\n"
    new = _with_runner(bundles("pt"), tmp_path / "new", "edgeconv_runner.pyz", newer)
    r = cli("validate", new, "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python)
    assert r.code == 3, r
    text = " ".join((r.stdout + r.stderr).split())
    assert "edgeconv_runner.pyz) reads request protocol 99, newer than this edgeconv's 4" in text
    assert "upgrade edgeconv on this machine" in text and "ran a request" not in text


def test_a_bundle_without_a_runner_gets_this_edgeconvs(cli, bundles, sshd, device_python, tmp_path):
    """A bundle written before bundles carried their runner: the current runner goes with the copy on the device."""
    bare = _with_runner(bundles("pt"), tmp_path / "bare", None)
    r = cli("validate", bare, "--remote", remote(sshd), *sshd["opts"], "--remote-python", device_python, "--runs", "5", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert rep["device"]["ran"] == "device runner" and rep["ok"] and rep["cross_architecture"]["compared"]
    assert not list(bare.glob("edgeconv_runner*"))  # the bundle here is left as it was


def test_an_edgeconv_older_than_the_protocol_leaves_the_run_to_the_runner(cli, bundles, sshd, device_python, tmp_path):
    python = _python_with(tmp_path, device_python, {"edgeconv/__init__.py": ""})
    r = cli("validate", bundles("pt"), "--remote", remote(sshd), *sshd["opts"], "--remote-python", python,
            "--runs", "5", "--json")
    assert r.code == 0, r
    rep = r.json()["devices"][0]["report"]
    assert rep["device"]["ran"] == "device runner" and rep["ok"]


def test_an_edgeconv_of_a_newer_protocol_is_refused(cli, bundles, sshd, device_python, tmp_path):
    python = _python_with(tmp_path, device_python, {"edgeconv/__init__.py": "", "edgeconv/core/__init__.py": "",
                                                    "edgeconv/core/request.py": "PROTOCOL_VERSION = 5\n"})
    r = cli("validate", bundles("pt"), "--remote", remote(sshd), *sshd["opts"], "--remote-python", python)
    assert r.code == 3, r
    assert "reads request protocol 5, newer than this edgeconv's 4" in " ".join((r.stdout + r.stderr).split())


# Faults over SSH (issue 26): a device killed or dropped mid-run, a device whose python3 hangs.

def _more_sshd(sshd, tmp_path: Path, n: int) -> tuple[list[tuple[subprocess.Popen, int]], list[str]]:
    """``n`` more sshd (more 'devices') with the first one's keys, each on its own port; and SSH options for all."""
    d = sshd["dir"]
    servers = []
    for i in range(n):
        port = _free_port()
        servers.append((subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-p", str(port), "-o",
                                          f"PidFile={tmp_path / f'sshd{i}.pid'}", "-E", str(tmp_path / f"sshd{i}.log")]), port))
    for _, port in servers:
        if not _listening(port, 15):
            pytest.fail(f"an sshd on {port} did not start: " + "".join(p.read_text() for p in tmp_path.glob("sshd*.log")))
    pub = (d / "host_key.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n" for port in [sshd["port"], *(p for _, p in servers)]))
    opts = ["--identity", str(d / "client_key"), "--ssh-option", f"UserKnownHostsFile={known}",
            "--ssh-option", "StrictHostKeyChecking=yes"]
    return servers, opts


def _listening(port: int, seconds: float) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (sshd's connections and sessions, whatever their process group)."""
    parents = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        cur = todo.pop()
        found.append(cur)
        todo += [c for c, par in parents.items() if par == cur]
    return found


def _stalling_python(tmp_path: Path, ports: list[int] | None) -> str:
    """A device Python that, on the devices at ``ports`` (None: everywhere, for every command), writes its pid and
    command line into ``tmp_path/stalled-PORT`` and sleeps instead of running the request; elsewhere this Python."""
    wrapper = tmp_path / "python"
    when = "*" if ports is None else "|".join(f'*" {port}"' for port in ports)
    stall = "*" if ports is None else "*--request*"
    wrapper.write_text(f'#!/bin/sh\nport=${{SSH_CONNECTION##* }}\ncase "$SSH_CONNECTION" in {when}) case "$*" in {stall}) '
                       f'echo "$$ $*" > {tmp_path}/stalled-$port; exec sleep 600;; esac;; esac\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _wait_for(path: Path, seconds: float = 60) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        time.sleep(0.05)
    pytest.fail(f"{path} never appeared")


def _stalled(marker: Path) -> tuple[int, Path]:
    """The stalled run's pid and its remote directory."""
    pid, *argv = _wait_for(marker).split()
    return int(pid), Path(next(a for a in argv if a.endswith("/request.json"))).parent


def test_devices_killed_mid_run_among_three(bundles, sshd, tmp_path):
    """Three devices; two are killed mid-run: one's run process (its directory is then removed), the other's whole
    sshd with every connection (its directory cannot be removed: its error names it). Exit 3 for each, with its
    reason; the third device's report is kept."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles("pt"), bundle, ignore=shutil.ignore_patterns("reports"))
    servers, opts = _more_sshd(sshd, tmp_path, 2)
    (run_killed, p_run), (device_killed, p_dev) = servers
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edgeconv", "validate", str(bundle), "--remote", remote(sshd),
                                 *(f"--remote={sshd['user']}@127.0.0.1:{p}" for p in (p_run, p_dev)), *opts,
                                 "--remote-python", _stalling_python(tmp_path, [p_run, p_dev]), "--runs", "5", "--json"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        (pid, run_dir), (_, dev_dir) = _stalled(tmp_path / f"stalled-{p_run}"), _stalled(tmp_path / f"stalled-{p_dev}")
        t0 = time.time()
        for p in [pid, *_descendants(device_killed.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        for server, _ in servers:
            server.kill()
            server.wait(timeout=10)
    assert time.time() - t0 < 30 and proc.returncode == 1, (proc.returncode, err[-2000:])
    good, killed, gone = json.loads(out)["devices"]
    assert good["ok"] and good["report"]["latency"]["runs"] >= 5, good
    kept = json.loads((bundle / "reports" / "127.0.0.1" / "validation.json").read_text())
    assert kept["device"]["target"] == remote(sshd) and kept["ok"]
    assert not killed["ok"] and killed["exit_code"] == 3, killed
    assert "was killed on the device" in killed["error"] and "SIGKILL" in killed["error"], killed
    assert not run_dir.exists()
    assert not gone["ok"] and gone["exit_code"] == 3 and "connection was lost" in gone["error"], gone
    assert f"the remote directory {dev_dir} was left on the device" in gone["error"], gone
    assert dev_dir.exists()
    shutil.rmtree(dev_dir)


def _alive(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_device_whose_python_hangs_is_given_up_after_the_timeout(bundles, sshd, tmp_path):
    """Its python3 never answers: the device is given up after --timeout (exit 3), and what hung is killed with its
    remote directory."""
    python = _stalling_python(tmp_path, None)
    root, env = _remote_tmp(tmp_path)
    t0 = time.time()
    r = run_subprocess("validate", bundles("pt"), "--remote", remote(sshd), *sshd["opts"], *env, "--remote-python", python,
                       "--timeout", "3", "--json", timeout=60)
    took = time.time() - t0
    assert r.returncode == 3, (r.stdout[-2000:], r.stderr[-2000:])
    dev = json.loads(r.stdout)["devices"][0]
    assert "no answer within 3 s (--timeout)" in dev["error"] and dev["exit_code"] == 3, dev
    assert took < 20, took
    pid = (tmp_path / f"stalled-{sshd['port']}").read_text().split()[0]
    deadline = time.time() + 5
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the hanging python3 was left running on the device"
    assert not _remote_dirs(root)
