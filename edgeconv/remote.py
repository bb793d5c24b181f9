"""Runs on a device over the user's own OpenSSH: copy the bundle to a fresh remote directory, run there, stream
progress back, fetch the report into ``reports/<host>/``, remove the remote directory (also on failure and
Ctrl-C).

The system ``ssh`` binary is used, not a library: it honours ``~/.ssh/config``, the agent, jump hosts and
known_hosts checking exactly as the user's own logins do. The bundle travels as a tar stream over the same
kind of connection (no scp quoting rules); every remote argument is quoted with ``shlex.quote``.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.bundle import Bundle, write_json
from edgeconv.errors import BadInput, EdgeconvError, MissingDependency

SSH_ERRORS = [
    (r"Could not resolve hostname|Name or service not known|nodename nor servname", "cannot resolve the host name"),
    (r"Connection refused", "connection refused (is sshd running on that port?)"),
    (r"Connection timed out|Operation timed out|timed out", "the host did not answer in time"),
    (r"No route to host|Network is unreachable", "the host is unreachable"),
    (r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed", "host key verification failed (known_hosts checking stays on)"),
    (r"Permission denied", "authentication failed (key or user refused)"),
    (r"No space left on device", "the device's disk is full"),
]
MAX_PARALLEL = 4
# Ctrl-C: the main thread sets _abort and kills the ssh processes in flight; workers then only clean up.
_abort = threading.Event()
_live: set[subprocess.Popen] = set()
_live_lock = threading.Lock()


@dataclass
class Target:
    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, text: str) -> Target:
        m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s]+)(?::(\d+))?", text.strip())
        if not m:
            raise BadInput(f"--remote {text!r} is not user@host[:port]")
        return cls(m.group(1), m.group(2).strip("[]"), int(m.group(3)) if m.group(3) else None)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return self.destination + (f":{self.port}" if self.port else "")


@dataclass
class Ssh:
    target: Target
    identity: Path | None = None
    options: list[str] = field(default_factory=list)
    timeout: float = 30.0

    def base(self) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(max(1, self.timeout))}"]
        if self.target.port:
            cmd += ["-p", str(self.target.port)]
        if self.identity:
            cmd += ["-i", str(self.identity)]
        for opt in self.options:
            cmd += ["-o", opt]
        return [*cmd, self.target.destination, "--"]

    def run(self, args: list[str], *, stdin: bytes | None = None, stream=None, timeout: float | None = None,
            check: bool = True, cleanup: bool = False) -> subprocess.CompletedProcess:
        """Run ``args`` on the device (each argument quoted). ``stream`` receives stderr lines as they arrive."""
        if _abort.is_set() and not cleanup:
            raise MissingDependency(f"{self.target}: interrupted")
        remote = " ".join(shlex.quote(a) for a in args)
        proc = subprocess.Popen([*self.base(), remote], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if not cleanup:
            with _live_lock:
                _live.add(proc)
        err_lines: list[str] = []

        def pump():
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                err_lines.append(line)
                if stream:
                    stream(line)

        def feed():
            try:
                if stdin:
                    proc.stdin.write(stdin)
                proc.stdin.close()
            except OSError:  # the remote side went away; its exit status says why
                pass

        threads = [threading.Thread(target=pump, daemon=True), threading.Thread(target=feed, daemon=True)]
        for t in threads:
            t.start()
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise MissingDependency(f"{self.target}: no answer within {timeout:.0f} s (--timeout)") from None
        except BaseException:
            proc.kill()
            raise
        finally:
            with _live_lock:
                _live.discard(proc)
        for t in (*threads, reader):
            t.join(timeout=10)
        out = b"".join(chunks)
        if _abort.is_set() and not cleanup:
            raise MissingDependency(f"{self.target}: interrupted")
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, "\n".join(err_lines))
        if proc.returncode == 255:  # ssh's own failure: connection, auth, host key
            raise self._ssh_error(result.stderr)
        if check and proc.returncode != 0:
            if "No space left on device" in result.stderr:
                raise self._ssh_error(result.stderr)
            raise MissingDependency(f"{self.target}: `{' '.join(args[:3])}…` failed (exit {proc.returncode})",
                                    details=result.stderr[-2000:])
        return result

    def _ssh_error(self, stderr: str) -> MissingDependency:
        for pattern, what in SSH_ERRORS:
            if re.search(pattern, stderr):
                return MissingDependency(f"{self.target}: {what}", details=stderr.strip()[-2000:])
        return MissingDependency(f"{self.target}: ssh failed", details=stderr.strip()[-2000:])


def _tar(bundle: Path, extra: dict[str, Path | bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(bundle.iterdir()):
            if p.name == "reports":
                continue
            tar.add(p, arcname=f"bundle/{p.name}")
        if not (bundle / "edgeconv_runner.py").exists():  # a bundle made before bundles carried their runner
            from edgeconv.convert import DEVICE_RUNNER

            tar.add(DEVICE_RUNNER, arcname="bundle/edgeconv_runner.py")
        for name, content in extra.items():
            if isinstance(content, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(content)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(content))
            else:
                tar.add(content, arcname=name)
    return buf.getvalue()


class DeviceFailed(EdgeconvError):
    """The run on the device ended without a report, or with the device's own refusal: the device's exit code."""

    def __init__(self, message: str, exit_code: int, **kw):
        super().__init__(message, **kw)
        self.exit_code = exit_code


@dataclass
class RemoteRequest:
    bundle: Path
    remotes: list[str]
    command: str = "validate"  # validate, profile (a request each); build (needs edgeconv on the device)
    request: dict[str, Any] | None = None  # validate/profile: the request, executed on the device as it is here
    identity: Path | None = None
    ssh_options: list[str] = field(default_factory=list)
    remote_python: str = "python3"
    timeout: float = 30.0
    run_timeout: float = 1800.0
    args: list[str] = field(default_factory=list)  # build's own options, passed through


def _device_request(req: RemoteRequest, bundle: Bundle, has_edgeconv: bool) -> tuple[dict[str, Any], dict[str, Path]]:
    """The request as the device reads it (its data file beside it) and the files to send with it."""
    request = dict(req.request or {}, where="device")
    files: dict[str, Path] = {}
    if request.get("data"):
        local = Path(request["data"]["file"])
        name = "data" + (local.suffix or ".npz")
        files[name] = local
        request["data"] = {**request["data"], "file": name}
    if req.command == "profile" and not request.get("batch_sizes") and not request.get("layers") and not has_edgeconv:
        from edgeconv.profile import default_batch_sizes

        request["batch_sizes"] = default_batch_sizes(bundle.manifest)
    return request, files


def _device_result(res: subprocess.CompletedProcess, target: Target, ran: str, bundle: Bundle,
                   remote_python: str) -> dict[str, Any]:
    """The device's report; or its refusal (its message and exit code); or, when it crashed or printed no report,
    its own exit code with the tail of its stderr."""
    tail = "\n".join(res.stderr.strip().splitlines()[-30:])[-3000:] or None
    try:
        doc = json.loads(res.stdout.decode())
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        code = res.returncode or int(err.get("exit_code") or 1)
        raise DeviceFailed(f"{target}: {err.get('message')}", code, hint=err.get("hint"),
                           details=tail if code not in (2, 3) else None)
    if res.returncode in (0, 1) and isinstance(doc, dict):
        return doc
    missing = re.search(r"No module named '([\w.]+)'", res.stderr)
    if missing:
        raise MissingDependency(f"{target}: {remote_python} has no {missing.group(1)}: install it on the device "
                                f"({_install_hint(missing.group(1), bundle)})", details=tail)
    what = "crashed" if res.returncode not in (0, 1) else "printed no report"
    signal_note = f", signal {res.returncode - 128}" if 128 < res.returncode < 160 else ""
    raise DeviceFailed(f"{target}: the {ran} {what} (exit {res.returncode}{signal_note}); its stderr ends:",
                       res.returncode or 1, details=tail or "(nothing on stderr)")


def _host_run(req: RemoteRequest, progress) -> dict[str, Any]:
    """``validate --remote``: the same request executed here as well, for the artifact's outputs on this machine, so
    each device's report can say how far its outputs are from this machine's (another CPU architecture, other
    kernels in the same runtime). One timed run and no budgets: only the outputs are used. ``{"outputs", "report"}``,
    or ``{"reason"}`` when this machine cannot run the artifact or the run here failed in any way: the comparison is an
    extra, so it never fails the devices' runs (an unforeseen error's traceback goes to a file the reason names)."""
    import tempfile

    import numpy as np

    from edgeconv.validate import run_request

    if not req.request:
        return {"reason": "no request to run here"}
    request = dict(req.request, runs=1, warmup=0, max_latency_ms=None, max_accuracy_drop=None)
    progress("this machine: running the same request here, for the cross-architecture comparison")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeconv-host-run-") as tmp:
            request["outputs_file"] = str(Path(tmp) / "outputs.npz")
            report = run_request(req.bundle, request, report=Path(tmp) / "validation.json")
            with np.load(request["outputs_file"]) as z:
                return {"outputs": {k: z[k] for k in z.files}, "report": report}
    except EdgeconvError as exc:
        return {"reason": f"this machine cannot run the artifact: {exc.message}"}
    except Exception as exc:  # noqa: BLE001 - a bug or a runtime failing here must not cost the devices their runs
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return {"reason": f"the run on this machine failed: {type(exc).__name__}: {first} (traceback: {_traceback_file(exc)})"}


def _traceback_file(exc: BaseException) -> str:
    """The traceback of an error edgeconv carries on past, written to a file; its path (or why it could not be)."""
    import os
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="edgeconv-host-run-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError as err:
        return f"not written: {err}"
    return path


def _saves_outputs(ssh: Ssh, req: RemoteRequest, bundle: Bundle, has_edgeconv: bool) -> bool:
    """Whether what runs the request on the device knows ``outputs_file`` (a runner from an older edgeconv refuses
    a request field it does not know)."""
    if has_edgeconv:
        code = "from edgeconv.device.edgeconv_runner import REQUEST_DEFAULTS as d; raise SystemExit('outputs_file' not in d)"
        return ssh.run([req.remote_python, "-c", code], check=False, timeout=req.timeout).returncode == 0
    runner = bundle.path / "edgeconv_runner.py"
    return not runner.exists() or '"outputs_file"' in runner.read_text()


def cross_architecture(host: dict[str, Any], device_outputs: dict[str, Any] | None, report: dict[str, Any]) -> dict[str, Any]:
    """The device's outputs against this machine's, for the same artifact and request (the comparison itself is the
    device runner's ``compare_machines``): max abs difference, top-1 agreement, and each side's top-1 on the data."""
    from edgeconv.device.edgeconv_runner import compare_machines

    if "reason" in host:
        return {"compared": False, "reason": host["reason"]}
    if device_outputs is None:
        return {"compared": False, "reason": "the device's runner does not save its outputs (convert the bundle again)"}
    here = host["report"]
    if (here["artifact"], here["runner"]) != (report["artifact"], report["runner"]):
        return {"compared": False, "reason": f"the device ran {report['artifact']} on {report['runner']}, this machine "
                                             f"{here['artifact']} on {here['runner']}"}
    section = {"compared": True, **compare_machines(host["outputs"], device_outputs)}
    for side, rep in (("host", here), ("device", report)):
        mo = rep["measured_on"]
        acc = (rep.get("accuracy") or {}).get("artifact") or {}
        section[side] = {"machine": mo.get("machine"), "host": mo.get("host"), "runtime": mo.get("runtime"),
                         "version": mo.get("version"), "numpy": mo.get("numpy"), "top1": acc.get("top1")}
    if section["host"]["top1"] is not None and section["device"]["top1"] is not None:
        section["top1_points_difference"] = (section["device"]["top1"] - section["host"]["top1"]) * 100
    if report.get("accuracy"):
        section["data"] = report["accuracy"]["data"]
    return section


def _fetch_outputs(ssh: Ssh, path: str, timeout: float) -> dict[str, Any]:
    import numpy as np

    with np.load(io.BytesIO(ssh.run(["cat", path], timeout=timeout).stdout)) as z:
        return {k: z[k] for k in z.files}


def _one(req: RemoteRequest, target: Target, progress, host: dict[str, Any] | None = None) -> dict[str, Any]:
    bundle = Bundle.open(req.bundle)
    ssh = Ssh(target, req.identity, req.ssh_options, req.timeout)
    workdir = ssh.run(["mktemp", "-d", "-t", "edgeconv.XXXXXXXX"], timeout=req.timeout).stdout.decode().strip()
    if not workdir.startswith("/"):
        raise MissingDependency(f"{target}: could not create a temporary directory on the device")
    try:
        remote_bundle = f"{workdir}/bundle"
        has_edgeconv = ssh.run([req.remote_python, "-c", "import edgeconv"], check=False, timeout=req.timeout).returncode == 0
        ran = "edgeconv" if has_edgeconv else "device runner"
        extra: dict[str, Path | bytes] = {}
        if req.command == "build":
            if not has_edgeconv:
                raise MissingDependency(f"{target}: `edgeconv build --remote` needs edgeconv on the device, and "
                                        f"{req.remote_python} there has none (pip install edgeconv plus the runtime extra; "
                                        "`validate` and `profile --remote` work without it)")
            cmd = [req.remote_python, "-m", "edgeconv", "build", remote_bundle, "--json", *req.args]
        else:
            request, files = _device_request(req, bundle, has_edgeconv)
            if host is not None and "outputs" in host and _saves_outputs(ssh, req, bundle, has_edgeconv):
                request["outputs_file"] = f"{workdir}/outputs.npz"
            extra = {"request.json": json.dumps(request, indent=2).encode(), **files}
            where = [remote_bundle, "--request", f"{workdir}/request.json", "--json"]
            if has_edgeconv:  # edgeconv there executes the same request with the same function, on its richer runners
                cmd = [req.remote_python, "-m", "edgeconv", req.command, *where]
                if req.command == "validate":
                    cmd += ["--report", f"{workdir}/report.json"]
            else:
                cmd = [req.remote_python, f"{remote_bundle}/edgeconv_runner.py", *where]
        progress(f"{target}: copying {bundle.path.name} to {workdir}")
        ssh.run(["tar", "-C", workdir, "-xf", "-"], stdin=_tar(bundle.path, extra), timeout=req.run_timeout)
        progress(f"{target}: running {'edgeconv' if has_edgeconv else 'the bundle device runner'} with {req.remote_python}")
        # through sh, so that a runner killed by a signal comes back as 128+N, not as ssh's own 255
        res = ssh.run(["sh", "-c", '"$@"; exit $?', "sh", *cmd], check=False, timeout=req.run_timeout,
                      stream=lambda line: progress(f"{target}: {line}"))
        report = _device_result(res, target, ran, bundle, req.remote_python)
        device_outputs = None
        if host is not None and report.get("outputs_file"):  # read before the directory goes; its path means nothing here
            device_outputs = _fetch_outputs(ssh, report.pop("outputs_file"), req.run_timeout)
        if host is not None and "latency" in report:
            report["cross_architecture"] = cross_architecture(host, device_outputs, report)
        if req.command == "profile" and not has_edgeconv:  # the device runner measures; the knee/source names come here
            from edgeconv.profile import device_profile_report

            report = device_profile_report(bundle, report)
        facts = ssh.run(["uname", "-a"], check=False, timeout=req.timeout).stdout.decode().strip()
        report["device"] = {"target": str(target), "uname": facts, "ran": ran}
        nv = ssh.run(["sh", "-c", "command -v nvpmodel >/dev/null && nvpmodel -q"], check=False, timeout=req.timeout)
        if nv.returncode == 0:
            report["device"]["power_mode"] = nv.stdout.decode().strip()
        if req.command == "build" and res.returncode == 0:
            progress(f"{target}: fetching the built bundle back")
            _fetch_bundle(ssh, remote_bundle, bundle.path, req.run_timeout)
    finally:
        try:
            ssh.run(["rm", "-rf", "--", workdir], check=False, timeout=req.timeout, cleanup=True)
        except EdgeconvError:
            pass
    dest = bundle.path / "reports" / target.host / {"validate": "validation.json"}.get(req.command, f"{req.command}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, report)
    report["report_file"] = str(dest)
    return report


def _fetch_bundle(ssh: Ssh, remote_bundle: str, local: Path, timeout: float) -> None:
    """Bring the device-built files (engine, timing cache, manifest) back; the manifest is written last."""
    data = ssh.run(["tar", "-C", remote_bundle, "-cf", "-", "."], timeout=timeout).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/" not in m.name.removeprefix("./")]
        for m in sorted(members, key=lambda m: m.name.endswith("manifest.json")):
            name = m.name.removeprefix("./")
            if name == "reports":
                continue
            content = tar.extractfile(m).read()
            tmp = local / f".{name}.fetch"
            tmp.write_bytes(content)
            tmp.replace(local / name)


def _install_hint(module: str, bundle: Bundle) -> str:
    runner = bundle.model_artifact.get("runner")
    return {"numpy": "pip install numpy", "onnxruntime": "pip install onnxruntime",
            "tensorrt": "JetPack's python3-libnvinfer", "ai_edge_litert": "pip install ai-edge-litert",
            "tflite_runtime": "pip install ai-edge-litert (or tflite-runtime)"}.get(module, f"the {runner} runtime")


def run_remote(req: RemoteRequest, progress=None) -> dict[str, Any]:
    """Run ``req.command`` on every device in parallel (bounded); one failing device does not stop the others."""
    if not req.remotes:
        raise BadInput("no --remote host given")
    Bundle.open(req.bundle)  # a bad bundle is the user's error, before any connection
    targets = [Target.parse(r) for r in req.remotes]
    lock = threading.Lock()

    def say(line: str) -> None:
        if progress:
            with lock:
                progress(line)

    def run(t: Target) -> dict[str, Any]:
        try:
            rep = _one(req, t, say, host)
            return {"target": str(t), "ok": bool(rep.get("ok", True)), "report": rep}
        except EdgeconvError as exc:
            return {"target": str(t), "ok": False, "error": exc.message, "exit_code": exc.exit_code, "details": exc.details}

    _abort.clear()
    # before the devices, not beside them: a loopback device (an emulated board) shares this machine's cores
    host = _host_run(req, say) if req.command == "validate" else None
    pool = ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets)))
    futures = [pool.submit(run, t) for t in targets]
    try:
        results = [f.result() for f in futures]
    except KeyboardInterrupt:
        _abort.set()
        with _live_lock:
            for proc in list(_live):
                proc.kill()
        pool.shutdown(wait=True)  # each worker removes its remote directory before it ends
        raise
    pool.shutdown()
    return {"bundle": str(req.bundle), "devices": results, "ok": all(r["ok"] for r in results)}


def read_hosts(path: Path) -> list[str]:
    if not path.is_file():
        raise BadInput(f"--hosts file {path} does not exist")
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]

