"""``run_remote``: a command on every device in parallel (bounded), one failing device not stopping the others; each
device's report saved into the bundle's ``reports/<host>/`` (docs/architecture.md)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from edgeconv.bundle import Bundle, write_json
from edgeconv.errors import BadInput, EdgeconvError
from edgeconv.remote.cross import host_run
from edgeconv.remote.jobs import JOBS, Here
from edgeconv.remote.options import RemoteRequest
from edgeconv.remote.transport import Session, SshHost, in_parallel

REPORT_NAMES = {"validate": "validation.json"}  # else COMMAND.json


def run_remote(req: RemoteRequest, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``req.command`` on every device in parallel (bounded); one failing device does not stop the others."""
    if not req.remotes:
        raise BadInput("no --remote host given")
    Bundle.open(req.bundle)  # a bad bundle is the user's error, before any connection
    hosts = [SshHost.parse(r) for r in req.remotes]
    lock = threading.Lock()

    def say(line: str) -> None:
        if progress:
            with lock:
                progress(line)

    # before the devices, not beside them: a loopback device (an emulated board) shares this machine's cores
    here = host_run(req.bundle, req.request, say) if req.command == "validate" else None
    results = in_parallel(lambda host: _device_result(req, host, say, here), hosts)
    return {"bundle": str(req.bundle), "devices": results, "ok": all(r["ok"] for r in results)}


def _device_result(req: RemoteRequest, host: SshHost, say: Callable[[str], None], here: Here) -> dict[str, Any]:
    try:
        rep = _on_device(req, host, say, here)
        return {"target": str(host), "ok": bool(rep.get("ok", True)), "report": rep}
    except EdgeconvError as exc:
        return {"target": str(host), "ok": False, "error": exc.message, "exit_code": exc.exit_code, "details": exc.details}


def _on_device(req: RemoteRequest, host: SshHost, say: Callable[[str], None], here: Here) -> dict[str, Any]:
    """The command's job on one device, in a remote directory removed after it; the report, saved here."""
    bundle = Bundle.open(req.bundle)
    with Session.open(host, req.ssh, say, req.run_timeout) as dev:
        report, ran = JOBS[req.command](dev, bundle, req, here)
        facts = dev.facts()
    report["device"] = {"target": str(host), "uname": facts.pop("uname"), "ran": ran, **facts}
    if dev.left:  # the run is whole, but its remote directory could not be removed
        report["device"]["remote_directory_left"] = dev.left
        say(f"{host}: warning: {dev.left}")
    dest = bundle.path / "reports" / host.host / REPORT_NAMES.get(req.command, f"{req.command}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, report)
    report["report_file"] = str(dest)
    return report
