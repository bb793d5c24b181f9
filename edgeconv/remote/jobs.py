"""One job per command that runs on a device: what to send with the bundle, what to run there, what to bring back
(docs/architecture.md). Each takes a ``Session`` (the connection and the remote directory, ``transport``'s) and returns
the device's report and what ran it ("edgeconv" or "device runner"). A new remote command is a new job in ``JOBS``."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.atomic import write_bytes_atomic
from edgeconv.bundle import MANIFEST, Bundle, inside, manifest_problems
from edgeconv.errors import MissingDependency
from edgeconv.profile import default_batch_sizes, device_profile_report
from edgeconv.remote.cross import cross_architecture
from edgeconv.remote.options import RemoteRequest
from edgeconv.remote.protocol import Plan, ask_runner, device_report, edgeconv_there, plan_request
from edgeconv.remote.transport import Session

Here = dict[str, Any] | None  # validate: this machine's run of the same request (cross.host_run)
Done = tuple[dict[str, Any], str]  # the device's report, and what ran it there
Job = Callable[[Session, Bundle, RemoteRequest, Here], Done]


def validate_job(dev: Session, bundle: Bundle, req: RemoteRequest, here: Here) -> Done:
    """The request run on the device. With this machine's run of the same request (``here``), the device's outputs
    come back too (before its directory goes) and the report gets their comparison."""
    report, plan = _run_request(dev, bundle, req, outputs=here is not None and "outputs" in here)
    device_outputs = None
    if here is not None and report.get("outputs_file"):  # a path on the device: it means nothing here
        with np.load(io.BytesIO(dev.read(report.pop("outputs_file")))) as z:
            device_outputs = {k: z[k] for k in z.files}
    if here is not None and "latency" in report:
        report["cross_architecture"] = cross_architecture(here, device_outputs, report)
    return report, plan.ran


def profile_job(dev: Session, bundle: Bundle, req: RemoteRequest, here: Here = None) -> Done:
    """The request run on the device; the bundle's runner measures, and the knee and the layers' source names are
    worked out here."""
    report, plan = _run_request(dev, bundle, req)
    if not plan.edgeconv:
        report = device_profile_report(bundle, report)
    return report, plan.ran


def build_job(dev: Session, bundle: Bundle, req: RemoteRequest, here: Here = None) -> Done:
    """edgeconv on the device builds in its copy of the bundle (``req.args``: build's options); the built files
    (engine, timing cache, manifest) come back into the bundle here."""
    if not edgeconv_there(dev).installed:
        raise MissingDependency(f"{dev.host}: `edgeconv build --remote` needs edgeconv on the device, and {dev.python} "
                                "there has none (pip install edgeconv plus the runtime extra; `validate` and `profile "
                                "--remote` work without it)")
    dev.say(f"copying {bundle.path.name} to {dev.workdir}")
    dev.send(_bundle_files(bundle.path))
    dev.say(f"running edgeconv with {dev.python}")
    res = dev.execute([dev.python, "-m", "edgeconv", "build", f"{dev.workdir}/bundle", "--json", *req.args])
    report = device_report(res, dev.host, "edgeconv", bundle, dev.python)
    if res.returncode == 0:
        dev.say("fetching the built bundle back")
        _take_back(bundle, dev.read_files(f"{dev.workdir}/bundle"), dev)
    return report, "edgeconv"


def _take_back(bundle: Bundle, files: dict[str, bytes], dev: Session) -> None:
    """The built files into the bundle here, the manifest last (it names the others). What the device sent is
    checked before anything is written: plain file names inside the bundle, and a manifest whose paths stay in it."""
    bad = [name for name in files if inside(bundle.path, name) is None or "/" in name or name.startswith(".")]
    try:
        manifest = json.loads(files[MANIFEST]) if MANIFEST in files else None
    except ValueError as exc:
        raise MissingDependency(f"{dev.host}: the built bundle's {MANIFEST} is not JSON ({exc})") from None
    problems = manifest_problems(bundle.path, manifest) if isinstance(manifest, dict) else []
    if bad or problems:
        raise MissingDependency(f"{dev.host}: the built bundle names files outside the bundle: "
                                f"{'; '.join([*(repr(n) for n in bad), *problems])}: nothing taken back")
    for name in sorted(files, key=lambda n: n == MANIFEST):
        write_bytes_atomic(bundle.path / name, files[name])


JOBS: dict[str, Job] = {"validate": validate_job, "profile": profile_job, "build": build_job}


def _run_request(dev: Session, bundle: Bundle, req: RemoteRequest, outputs: bool = False) -> tuple[dict[str, Any], Plan]:
    """validate and profile: the bundle and its request to the device, run there by edgeconv or the bundle's runner
    (``protocol`` decides which, and what the request may ask); ``outputs``: the device saves its outputs."""
    plan = plan_request(dev, bundle.path)
    request, files = _device_request(req, bundle, plan)
    dev.say(f"copying {bundle.path.name} to {dev.workdir}")
    dev.send({**_bundle_files(bundle.path, plan), **files})
    plan = ask_runner(dev, plan)
    if outputs:
        request["outputs_file"] = f"{dev.workdir}/outputs.npz"
    dev.send({"request.json": json.dumps(plan.fit(request), indent=2).encode()})
    dev.say(f"running {'edgeconv' if plan.edgeconv else 'the bundle device runner'} with {dev.python}")
    res = dev.execute(plan.command(dev.python, req.command, dev.workdir))
    return device_report(res, dev.host, plan.ran, bundle, dev.python), plan


def _device_request(req: RemoteRequest, bundle: Bundle, plan: Plan) -> tuple[dict[str, Any], dict[str, Path]]:
    """The request as the device reads it (its data file beside it) and the files to send with it."""
    request = dict(req.request or {}, where="device")
    files: dict[str, Path] = {}
    if request.get("data"):
        local = Path(request["data"]["file"])
        name = "data" + (local.suffix or ".npz")
        files[name] = local
        request["data"] = {**request["data"], "file": name}
    if req.command == "profile" and not request.get("batch_sizes") and not request.get("layers") and not plan.edgeconv:
        request["batch_sizes"] = default_batch_sizes(bundle.manifest)
    return request, files


def _bundle_files(bundle: Path, plan: Plan | None = None) -> dict[str, Path | bytes]:
    """The bundle as ``bundle/`` in the remote directory (not its reports), with the runner ``plan`` adds."""
    files: dict[str, Path | bytes] = {f"bundle/{p.name}": p for p in sorted(bundle.iterdir()) if p.name != "reports"}
    if plan is not None and plan.added_runner is not None:
        files[f"bundle/{plan.runner}"] = plan.added_runner
    return files
