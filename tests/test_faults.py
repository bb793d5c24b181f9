"""Faults, not just bad input (issue 26): damaged cache entries are rebuilt, tampered bundles are refused before any file
outside them is opened (by edgeconv and by the bundle's device runner), SIGKILL at any point of a conversion leaves the
old state or the new one (and no child process running), concurrent runs never mix, a full disk is a plain message.

The kill and concurrency tests run each conversion in a process forked from a warm server (torch, onnx, onnxruntime
and edgeconv imported once): a real process, really SIGKILLed, running the same ``edgeconv`` command line, but
without paying ~3 s of imports per run, so 20 kill points cost ~20 s instead of ~2 min. A kill point is a time (a
fraction of the uninterrupted run) or a write (the server kills as soon as a path appears). The TFLite target's runs
each import TensorFlow in onnx2tf's job, so its points run on two servers in parallel.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, SAMPLES, run_subprocess

from edgeconv.atomic import hold
from edgeconv.bundle import Bundle
from edgeconv.export_cache import ENTRY_FILE, entry_problem

DIGITS = SAMPLES / "digits_cnn.pt"

# A warm process that forks one child per command: {"argv", "kill_after", "kill_when", "group"} in, {"code", "killed",
# "elapsed", "orphans"} out. ``kill_when``: [[glob, n], ...], SIGKILL as soon as one glob matches n paths (a file write
# as the kill point). ``group`` False: only the edgeconv process is killed, not its children (they must die with it);
# the server is their subreaper, so "orphans" lists the ones still alive 10 s later (then killed).
SERVER = r'''
import ctypes, glob, json, os, signal, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy, onnx, onnxruntime, torch  # noqa: what every digits conversion imports
import edgeconv.cli, edgeconv.convert, edgeconv.frontends.torch, edgeconv.targets.onnx  # noqa
for extra in sys.argv[1:]:
    __import__(extra)
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: a killed run's orphans become ours
cmd_in, reply = sys.stdin, os.fdopen(os.dup(1), "w")
print("ready", file=reply, flush=True)


def due(job, t0):
    if job["kill_after"] is not None and time.perf_counter() >= t0 + job["kill_after"]:
        return True
    return any(len(glob.glob(pattern, recursive=True)) >= n for pattern, n in job.get("kill_when") or ())


def reap_group(pgid):
    deadline, alive = time.perf_counter() + 10, []
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        alive = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
        if not alive or time.perf_counter() > deadline:
            break
        time.sleep(0.01)
    for p in alive:
        os.kill(p, signal.SIGKILL)
    return alive


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except OSError:
        return None


for line in cmd_in:
    job = json.loads(line)
    for name in (job["stdout"], job["stderr"]):  # there even when a kill lands before the child has opened them
        open(name, "w").close()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 5
        os.setpgid(0, 0)  # its own group: a kill takes its subprocesses (onnx2tf's job) too
        try:
            for fd, name in ((1, job["stdout"]), (2, job["stderr"])):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            edgeconv.cli.app(job["argv"], prog_name="edgeconv")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    try:  # the group from this side too: a kill due before the child's own setpgid still finds it
        os.setpgid(pid, pid)
    except OSError:  # the child set it first (EACCES once it runs the command) or has already ended
        pass
    killed, orphans = False, []
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if due(job, t0):
            try:
                os.killpg(pid, signal.SIGKILL) if job.get("group", True) else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # no such group yet: the child alone
                os.kill(pid, signal.SIGKILL)
            killed = True
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    if killed:
        orphans = reap_group(pid)
    code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"code": code, "killed": killed and code == -signal.SIGKILL, "elapsed": elapsed,
                      "orphans": orphans}), file=reply, flush=True)
'''


class ForkServer:
    def __init__(self, folder: Path, *extra_modules: str):
        self.folder = folder
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, *extra_modules], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.n = 0

    def run(self, *argv, kill_after: float | None = None, kill_when: list | None = None, group: bool = True) -> dict:
        self.n += 1
        out, err = self.folder / f"{self.n}.out", self.folder / f"{self.n}.err"
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "kill_after": kill_after, "group": group,
                                          "kill_when": [[str(g), n] for g, n in kill_when or ()],
                                          "stdout": str(out), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        res = json.loads(self.proc.stdout.readline())
        res["stdout"], res["stderr"] = out.read_text(), err.read_text()
        return res

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ForkServer(tmp_path_factory.mktemp("forks"))
    yield s
    s.close()


def _model_sha(bundle: Path) -> str:
    return Bundle.open(bundle).model_artifact["sha256"]


def _reference(bundle: Path) -> dict[str, np.ndarray]:
    with np.load(bundle / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("*/*") if p.is_dir() and not p.name.startswith("."))


def _assert_cache_whole(cache: Path) -> None:
    """Every entry is whole (as the next run would read it) and no temporary folder is left."""
    for entry in _entries(cache):
        key = entry.parent.name
        doc = json.loads((entry / ENTRY_FILE).read_text())
        assert doc["entry"].startswith(key) and entry_problem(entry, doc["entry"]) is None, entry
    assert not [p for p in cache.glob("*/.*") if p.is_dir()], "a temporary cache folder was left"


def _no_temporaries(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], list(parent.iterdir())


# -- damaged cache entries -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def filled(tmp_path_factory, cli):
    """One conversion with --cache and --data (two outputs entries), kept pristine: each test damages a copy."""
    base = tmp_path_factory.mktemp("filled")
    r = cli("convert", DIGITS, "--target", "onnx", "-o", base / "b", "--cache", base / "cache", "--data",
            SAMPLES / "digits_test.npz", "--json")
    assert r.code == 0, r
    return base


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_name(a.name + ".swap")
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def _damage(cache: Path, how: str) -> str:
    """Damage one entry of ``cache`` as a full disk, a killed copy or a sync tool would; returns the entry's name."""
    key = next(cache.iterdir())
    export = next(p for p in key.glob("export-*") if p.is_dir())
    outputs = sorted(p for p in key.glob("outputs-*") if p.is_dir())
    if how == "truncated":
        data = (export / "model.onnx").read_bytes()
        (export / "model.onnx").write_bytes(data[: len(data) // 3])
        return export.name
    if how == "zero-filled":
        f = outputs[0] / "outputs.npz"
        f.write_bytes(b"\0" * f.stat().st_size)
        return outputs[0].name
    if how == "wrong JSON":
        (key / "source" / "facts.json").write_text('{"framework": "keras", "format": "keras"}')
        return "source"
    if how == "wrong JSON record":
        (export / ENTRY_FILE).write_text("{not json")
        return export.name
    if how == "zero-filled record":
        f = export / ENTRY_FILE
        f.write_bytes(b"\0" * f.stat().st_size)
        return export.name
    if how == "swapped files":  # the reference outputs and the --data outputs trade places
        _swap(outputs[0] / "outputs.npz", outputs[1] / "outputs.npz")
        return outputs[0].name
    if how == "swapped entries":  # a whole entry under another entry's name (its record names the other one)
        _swap(outputs[0], outputs[1])
        return outputs[0].name
    assert how == "missing file"
    (export / "record.json").unlink()
    return export.name


@pytest.mark.parametrize("how", ["truncated", "zero-filled", "wrong JSON", "wrong JSON record", "zero-filled record",
                                 "swapped files", "swapped entries", "missing file"])
def test_a_damaged_cache_entry_is_rebuilt(cli, filled, tmp_path, how):
    cache = tmp_path / "cache"
    shutil.copytree(filled / "cache", cache)
    name = _damage(cache, how)
    r = cli("convert", DIGITS, "--target", "onnx", "-o", tmp_path / "b", "--cache", cache, "--data",
            SAMPLES / "digits_test.npz", "--json")
    assert r.code == 0, r
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: the cache entry")]
    assert warnings and all("rebuilding it" in w for w in warnings), r.stderr
    assert any(name in w for w in warnings)  # one line per damaged entry (a swap damages two)
    assert len(warnings) == (2 if how.startswith("swapped") else 1), warnings
    record = r.json()["manifest"]["export"]["cache"]
    assert any(d.startswith(name) for d in record["damaged"]), record
    # the same result as the conversion that filled the cache: the graph, the reference, the accuracy
    assert _model_sha(tmp_path / "b") == _model_sha(filled / "b")
    ref, want = _reference(tmp_path / "b"), _reference(filled / "b")
    assert ref.keys() == want.keys() and all(np.array_equal(ref[k], want[k]) for k in ref)
    assert r.json()["manifest"]["source_accuracy"] == Bundle.open(filled / "b").manifest["source_accuracy"]
    _assert_cache_whole(cache)
    again = cli("convert", DIGITS, "--target", "onnx", "-o", tmp_path / "b2", "--cache", cache, "--data",
                SAMPLES / "digits_test.npz", "--json")
    assert again.code == 0 and "warning" not in again.stderr, again
    assert set(again.json()["manifest"]["export"]["cache"].values()) >= {"hit"} and "damaged" not in again.json()[
        "manifest"]["export"]["cache"]


def test_a_half_written_cache_entry_is_never_read(cli, filled, tmp_path):
    """A killed fill leaves its temporary folder (and no entry): the next run ignores it, stores the entry, removes it."""
    cache = tmp_path / "cache"
    shutil.copytree(filled / "cache", cache)
    export = next(p for p in cache.glob("*/export-*") if p.is_dir())
    half = export.with_name(f".{export.name}-tmp-killed")
    os.replace(export, half)
    (half / "model.onnx").write_bytes(b"\0" * 10)
    r = cli("convert", DIGITS, "--target", "onnx", "-o", tmp_path / "b", "--cache", cache, "--json")
    assert r.code == 0, r
    assert r.json()["manifest"]["export"]["cache"]["export"] == "stored" and "warning" not in r.stderr
    assert not half.exists()
    _assert_cache_whole(cache)


# -- tampered bundles ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(bundles):
    return bundles("pt")


def _tamper(bundle: Path, how: str, outside: Path) -> str:
    """Tamper with ``bundle``'s manifest (or files); returns what the refusal must name."""
    mf = bundle / "manifest.json"
    m = json.loads(mf.read_text())
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    rel = os.path.relpath(outside, bundle)
    if how == "escaping path":
        model["file"] = rel
    elif how == "absolute path":
        model["file"] = rel = str(outside)
    elif how == "link out":  # a path inside the bundle that is a symbolic link to the outside file
        (bundle / "model.onnx").unlink()
        (bundle / "model.onnx").symlink_to(outside)
        return "model.onnx"
    elif how == "manifest link":
        mf.unlink()
        mf.symlink_to(outside)
        return "manifest.json"
    elif how == "device build path":
        model["device_build"] = {"format": "tensorrt-engine", "onnx": rel, "engine": "model.engine"}
        rel = "device_build.onnx"
    elif how == "wrong hash":
        model["sha256"] = "0" * 64
        rel = "changed since conversion"
    elif how == "missing file":
        (bundle / "model.onnx").unlink()
        rel = "model.onnx is missing"
    elif how == "wrong schema":
        m["schema_version"] = 99
        rel = "schema 99"
    else:
        assert how == "unknown schema"
        m["artifacts"] = {"model.onnx": model}
        rel = "no artifacts"
    mf.write_text(json.dumps(m))
    return rel


@pytest.mark.parametrize("how", ["escaping path", "absolute path", "link out", "manifest link", "device build path",
                                 "wrong hash", "missing file", "wrong schema", "unknown schema"])
def test_a_tampered_bundle_is_refused_before_anything_outside_is_opened(pristine, tmp_path, how):
    """The file outside the bundle is a FIFO: opening it (to hash or load it) blocks until the timeout fails the test.
    (chmod 000 would not do: the tests run as root, who reads it anyway.)"""
    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    sentinel = tmp_path / "outside" / "secret.onnx"
    sentinel.parent.mkdir()
    os.mkfifo(sentinel)
    named = _tamper(bundle, how, sentinel)
    for command in (["validate", bundle, "--runs", "2"], ["profile", bundle, "--batch-sizes", "1", "--runs", "2"]):
        try:
            p = run_subprocess(*command, "--json", timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command[0]} opened {sentinel}, outside the bundle ({how})")
        assert p.returncode == 2, (how, p.stdout[-2000:], p.stderr[-2000:])
        err = json.loads(p.stdout)["error"]
        assert named in err["message"] and "Traceback" not in p.stderr, (how, err)
        if how in ("wrong schema", "unknown schema", "escaping path", "device build path"):
            break  # refused from the manifest alone, as validate showed; profile opens it the same way


# -- killed runs ---------------------------------------------------------------------------------------------------


def _convert_args(out: Path, cache: Path, target: str = "onnx") -> list:
    return ["convert", DIGITS, "--target", target, "-o", out, "--cache", cache, "--json"]


def _left(here: Path) -> tuple[int, bool]:
    """What a killed run left: how many cache entries, and whether a temporary bundle folder."""
    cache, out = here / "cache", here / "out"
    return (len(_entries(cache)) if cache.exists() else 0,
            out.exists() and any(p.name.startswith(".b.tmp-") for p in out.iterdir()))


def _kill_sweep(servers, tmp_path, target: str, points, kills: int, *, warm: bool = False, group: bool = True) -> set:
    """SIGKILL ``convert --cache`` at ``points``: a count (times spread over its uninterrupted run) or a list of
    conditions (fractions of that run's time, or ``kill_when`` lists: file writes); ``kills`` of them must land
    before it ends. After each kill the same command succeeds with the uninterrupted run's artifact, leaves no
    temporary folder, and its cache entries are whole. ``warm``: each point starts from a copy of the uninterrupted
    run's cache (the target's own steps are what is killed, not the fills the other tests kill). ``group`` False:
    only the edgeconv process is killed; its child processes must end with it. ``servers``: one fork server, or
    several that take the points in parallel. Returns what the kills left (see ``_left``)."""
    servers = servers if isinstance(servers, list) else [servers]
    base = servers[0].run(*_convert_args(tmp_path / "base" / "b", tmp_path / "base" / "cache", target))
    assert base["code"] == 0, base
    want = _model_sha(tmp_path / "base" / "b")
    if warm:
        again = servers[0].run(*_convert_args(tmp_path / "base" / "b2", tmp_path / "base" / "cache", target))
        assert again["code"] == 0 and _model_sha(tmp_path / "base" / "b2") == want, again
    t_full = (again if warm else base)["elapsed"]
    fractions = points if isinstance(points, list) else [0.02 + 0.9 * k / max(points - 1, 1) for k in range(points)]
    conditions = [t_full * c if isinstance(c, float) else c for c in fractions]
    free = queue.Queue()
    for s in servers:
        free.put(s)

    def point(k: int) -> tuple | None:
        server = free.get()
        try:
            return _kill_point(server, tmp_path, k, conditions[k], target, want, warm=warm, group=group)
        finally:
            free.put(server)

    with ThreadPoolExecutor(len(servers)) as pool:
        left = [r for r in pool.map(point, range(len(conditions))) if r is not None]
    assert len(left) >= kills, f"only {len(left)} of {len(conditions)} runs were killed before they finished"
    return set(left)


def _kill_point(server, tmp_path: Path, k: int, when, target: str, want: str, *, warm: bool, group: bool) -> tuple | None:
    """One kill point of ``_kill_sweep`` in ``tmp_path/kK`` (a ``kill_when`` list names that folder): the killed run,
    then the same command; what the kill left (None: the run finished before it)."""
    here = tmp_path / f"k{k}"
    if warm:
        shutil.copytree(tmp_path / "base" / "cache", here / "cache")
    args = _convert_args(here / "out" / "b", here / "cache", target)
    first = _killed_run(server, args, when, group, here, warm)
    left = _left(here) if first["killed"] else None
    if first["killed"]:
        assert first["orphans"] == [], f"{first['orphans']} outlived the killed conversion"
        # a killed run leaves either nothing at -o or a whole bundle (if it was killed after the rename)
        assert not (here / "out" / "b").exists() or _model_sha(here / "out" / "b") == want
    again = server.run(*args, "--force")
    assert again["code"] == 0, (k, again)
    assert _model_sha(here / "out" / "b") == want, k
    _no_temporaries(here / "out")
    _assert_cache_whole(here / "cache")
    shutil.rmtree(here)
    return left


def _killed_run(server, args: list, when, group: bool, here: Path, warm: bool) -> dict:
    """One run killed at ``when`` (seconds, or a ``kill_when`` list); a run that finished before a timed kill (the
    machine is shared) is tried again from scratch, earlier."""
    for _ in range(3):
        if isinstance(when, list):
            return server.run(*args, kill_when=when, group=group)
        first = server.run(*args, kill_after=when, group=group)
        assert first["killed"] or first["code"] == 0, first
        if first["killed"]:
            return first
        shutil.rmtree(here / "out")
        if not warm:
            shutil.rmtree(here / "cache")
        when *= 0.7
    return first


@pytest.mark.alone  # kill moments are shares of an uninterrupted run's time, measured alone
def test_convert_killed_at_20_points_then_rerun_gives_the_same_bundle(server, tmp_path):
    left = _kill_sweep(server, tmp_path, "onnx", 20, 20)
    # the kills spread over the run: before the cache was filled, and while the bundle was written
    assert 0 in {n for n, _ in left} and any(tmp for _, tmp in left), left


def _cache_writes(here: Path) -> list[list]:
    """Kill points at the writes of a ``--cache`` fill and of the bundle after it (those the test process sees reliably
    by polling; a file written into a temporary folder renamed a millisecond later is often missed): the key folder;
    the n-th lock or entry in it; each entry's temporary folder; the temporary bundle and the n-th file in it."""
    key, out = here / "cache" / "*", here / "out"
    points = [[key, 1], *([key / "*", n] for n in range(1, 7))]
    points += [[key / ".source-tmp-*", 1], [key / ".source-tmp-*" / "*", 1], [key / ".outputs-*-tmp-*", 1],
               [key / ".export-*-tmp-*", 1]]
    points += [[out / ".b.tmp-*", 1], *([out / ".b.tmp-*" / "*", n] for n in range(1, 4))]
    return [[p] for p in points]


@pytest.mark.alone  # kill moments are shares of an uninterrupted run's time, measured alone
def test_cache_fills_killed_at_every_write_then_rerun_gives_the_same_bundle(server, tmp_path):
    """``--cache`` fills (the source's facts, its outputs, the export) and the bundle killed at each of their writes,
    and at times between them."""
    writes = [_cache_writes(tmp_path / f"k{k}")[k] for k in range(len(_cache_writes(tmp_path)))]
    times = [0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9]
    left = _kill_sweep(server, tmp_path, "onnx", writes + times, 20)
    entries = {n for n, _ in left}
    assert {0, 1, 2} <= entries and max(entries) >= 3, left


def _servers(tmp_path: Path, n: int, *modules: str) -> list[ForkServer]:
    """``n`` fork servers (each with its own folder), to take kill points in parallel."""
    out = []
    for i in range(n):
        (tmp_path / f"s{i}").mkdir()
        out.append(ForkServer(tmp_path / f"s{i}", *modules))
    return out


@pytest.mark.alone  # kill moments are shares of an uninterrupted run's time, measured alone
def test_convert_to_openvino_killed_at_20_points_then_rerun(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (the openvino extra)")
    servers = _servers(tmp_path, 2, "openvino")
    try:
        _kill_sweep(servers, tmp_path, "openvino", 20, 18)
    finally:
        for s in servers:
            s.close()


def _tflite_writes(here: Path) -> list[list]:
    """Kill points at the TFLite target's writes (from a warm cache): the temporary bundle, the ONNX graph in it,
    onnx2tf's working folder, its job file (the job starts), the job's .tflite (it ends), and the bundle's files."""
    tmp = here / "out" / ".b.tmp-*"
    work = tmp / "_build" / "onnx2tf"
    names = [tmp, tmp / "model.onnx", work, work / "job.json", work / "model.tflite", tmp / "model.tflite",
             tmp / "reference.npz", tmp / "edgeconv_runner.pyz", tmp / ".manifest.json.*.tmp", here / "out" / "b"]
    return [[[p, 1]] for p in names]


@pytest.mark.alone  # kill moments are shares of an uninterrupted run's time, measured alone
def test_convert_to_tflite_killed_at_20_points_then_rerun(tmp_path):
    """The TFLite target's own steps (onnx2tf's job, where TensorFlow is imported, TFLiteConverter, the bundle) killed
    at 20 points, at its writes and at times between them; only the edgeconv process is killed: onnx2tf's job must end
    with it. Every run imports TensorFlow in the job (seconds): two fork servers take the points in parallel."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (the tflite extra)")
    servers = _servers(tmp_path, 2, "ai_edge_litert")
    writes = [_tflite_writes(tmp_path / f"k{k}")[k] for k in range(len(_tflite_writes(tmp_path)))]
    times = [0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.9, 0.95]
    try:
        _kill_sweep(servers, tmp_path, "tflite", writes + times, 18, warm=True, group=False)
    finally:
        for s in servers:
            s.close()


def test_validate_killed_leaves_the_old_report_or_the_new_one(server, pristine, tmp_path):
    report = tmp_path / "report.json"
    report.write_text('{"old": true}\n')
    args = ["validate", pristine, "--runs", "50", "--report", report, "--json"]
    whole = server.run(*args)
    assert whole["code"] == 0, whole
    for k in range(10):
        report.write_text('{"old": true}\n')
        server.run(*args, kill_after=whole["elapsed"] * (0.1 + 0.1 * k))
        doc = json.loads(report.read_text())  # never half a document
        assert doc == {"old": True} or (doc["ok"] is True and "latency" in doc), doc


def test_a_temporary_folder_a_killed_run_left_is_removed_and_a_live_one_kept(cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".b.tmp-killed"
    (dead / "sub").mkdir(parents=True)
    (dead / "sub" / "model.onnx").write_bytes(b"half")
    live = out / ".b.tmp-running"
    live.mkdir()
    fd = hold(live)  # another conversion to the same -o, still running
    try:
        r = cli("convert", DIGITS, "--target", "onnx", "-o", out / "b", "--json")
        assert r.code == 0, r
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)
    Bundle.open(out / "b")


# -- concurrent runs -----------------------------------------------------------------------------------------------


def _together(n: int, *argv) -> list[subprocess.CompletedProcess]:
    """``n`` edgeconv processes started at once (real interpreters, so they truly overlap)."""
    procs = [subprocess.Popen([sys.executable, "-m", "edgeconv", *map(str, argv)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(n)]
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return done


def test_concurrent_converts_to_one_output_never_mix(tmp_path):
    out = tmp_path / "out" / "b"
    runs = _together(2, "convert", DIGITS, "--target", "onnx", "-o", out, "--cache", tmp_path / "cache", "--json")
    codes = sorted(p.returncode for p in runs)
    assert codes == [0, 2], [(p.returncode, p.stderr[-1500:]) for p in runs]
    loser = next(p for p in runs if p.returncode == 2)
    assert ("written by another conversion" in loser.stdout or "already exists" in loser.stdout), loser.stdout
    winner = json.loads(next(p for p in runs if p.returncode == 0).stdout)
    assert Bundle.open(out).manifest["created_utc"] == winner["manifest"]["created_utc"]  # the winner's, whole
    _no_temporaries(out.parent)
    _assert_cache_whole(tmp_path / "cache")
    # with --force both succeed, one after the other; the bundle left is one of them, whole
    runs = _together(2, "convert", DIGITS, "--target", "onnx", "-o", out, "--force", "--cache",
                     tmp_path / "cache", "--json")
    assert [p.returncode for p in runs] == [0, 0], [p.stderr[-1500:] for p in runs]
    created = {json.loads(p.stdout)["manifest"]["created_utc"] for p in runs}
    assert Bundle.open(out).manifest["created_utc"] in created
    _no_temporaries(out.parent)


def test_concurrent_fills_of_one_cache_entry_compute_it_once(tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "edgeconv", "convert", str(DIGITS), "--target", "onnx", "-o",
                               str(tmp_path / f"b{i}"), "--cache", str(cache), "--json"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    docs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-2000:]
        docs.append(json.loads(stdout)["manifest"])
    assert docs[0]["artifacts"][0]["sha256"] == docs[1]["artifacts"][0]["sha256"]
    assert sorted(d["export"]["cache"]["export"] for d in docs) == ["hit", "stored"], [d["export"]["cache"] for d in docs]
    _assert_cache_whole(cache)


# -- a full disk ---------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KB tmpfs (root only): room for the ONNX graph, not for the whole bundle."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], check=True, timeout=30,
                       capture_output=True)
    except (subprocess.CalledProcessError, FileNotFoundError, PermissionError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_a_full_disk_is_a_plain_message_and_nothing_half_written(cli, small_disk):
    r = cli("convert", DIGITS, "--target", "onnx", "-o", small_disk / "b", "--json")
    assert r.code in (2, 4), r
    err = r.json()["error"]
    assert "no space left" in err["message"] and str(small_disk) in err["message"], err
    assert list(small_disk.iterdir()) == []


# -- the device side -----------------------------------------------------------------------------------------------


def _device_tamper(bundle: Path, request: Path, how: str, outside: Path) -> str:
    """Tamper with the bundle's manifest or with the request the device runner reads; what the refusal names."""
    rel = os.path.relpath(outside, bundle)
    if how == "request data":
        request.write_text(json.dumps({"runs": 2, "data": {"file": os.path.relpath(outside, request.parent)}}))
        return "data.file"
    if how == "request outputs":
        request.write_text(json.dumps({"runs": 2, "outputs_file": str(outside)}))
        return "outputs_file"
    request.write_text(json.dumps({"runs": 2}))
    if how == "manifest link":
        (bundle / "manifest.json").unlink()
        (bundle / "manifest.json").symlink_to(outside)
        return "manifest.json"
    m = json.loads((bundle / "manifest.json").read_text())
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    if how == "escaping path":
        model["file"] = rel
    else:
        assert how == "device build path"
        model["device_build"] = {"format": "tensorrt-engine", "onnx": rel, "engine": "model.engine"}
    (bundle / "manifest.json").write_text(json.dumps(m))
    return "outside the bundle"


@pytest.mark.parametrize("how", ["escaping path", "manifest link", "device build path", "request data", "request outputs"])
def test_the_device_runner_refuses_paths_outside_before_opening_them(pristine, tmp_path, how):
    """The bundle's own runner (what runs on a device with numpy and a runtime only): a manifest or request naming a
    file outside is exit 2 before that file (a FIFO: opening it would block) is opened."""
    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    sentinel = tmp_path / "outside" / "secret.npz"
    sentinel.parent.mkdir()
    os.mkfifo(sentinel)
    request = tmp_path / "request" / "request.json"
    request.parent.mkdir()
    named = _device_tamper(bundle, request, how, sentinel)
    try:
        p = subprocess.run([sys.executable, str(pristine / "edgeconv_runner.pyz"), str(bundle), "--request", str(request),
                            "--json"], capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the device runner opened {sentinel}, outside the bundle ({how})")
    assert p.returncode == 2, (how, p.stdout[-2000:], p.stderr[-2000:])
    err = json.loads(p.stdout)["error"]
    assert named in err["message"] and "refused" in err["message"], err


JOB_PARENT = r'''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "edgeconv.targets.tflite_job", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(600)
'''


def test_the_tflite_job_dies_with_the_conversion_that_started_it(tmp_path):
    """SIGKILL the process that started onnx2tf's job (while the job imports onnx2tf): the job ends too."""
    pytest.importorskip("onnx2tf", reason="onnx2tf is not installed (the tflite extra)")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"onnx2tf_args": ["-i", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "saved")],
                               "saved_model": str(tmp_path / "saved")}))
    parent = subprocess.Popen([sys.executable, "-c", JOB_PARENT, str(job)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    time.sleep(0.5)
    assert _running(child), "the job ended before its parent was killed"
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.time() + 1  # onnx2tf's import alone takes seconds: the job must not end by itself meanwhile
    while _running(child) and time.time() < deadline:
        time.sleep(0.02)
    assert not _running(child), "onnx2tf's job outlived the killed conversion"


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("files", [{"../outside.engine": b"x"}, {".manifest.json.fetch": b"x"}, {"manifest.json": b"{"},
                                   {"model.engine": b"x", "manifest.json": "escaping"}])
def test_build_remote_takes_back_nothing_that_leaves_the_bundle(pristine, tmp_path, files):
    """What a device sends back after ``build --remote`` is checked before anything is written: a name leading out,
    a hidden name, a manifest that is not JSON or names a path outside the bundle: exit 3, the bundle unchanged."""
    from types import SimpleNamespace

    from edgeconv.errors import MissingDependency
    from edgeconv.remote.jobs import _take_back

    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    if files.get("manifest.json") == "escaping":
        m = json.loads((bundle / "manifest.json").read_text())
        m["artifacts"][0]["device_build"] = {"format": "tensorrt-engine", "engine": "../../outside.engine"}
        files["manifest.json"] = json.dumps(m).encode()
    before = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    with pytest.raises(MissingDependency) as info:
        _take_back(Bundle.open(bundle), files, SimpleNamespace(host="board"))
    msg = info.value.message
    assert info.value.exit_code == 3 and ("nothing taken back" in msg or "not JSON" in msg), msg
    assert {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()} == before
    assert not (tmp_path / "outside.engine").exists()
