"""What runs a request on the device, which request protocol it reads, and how its answer reads back here
(docs/architecture.md).

edgeconv installed on the device runs the request (``python3 -m edgeconv validate``, on its richer runners) when it
is new enough to say its protocol; otherwise the bundle's device runner does. The protocol is asked, never guessed:
``edgeconv.core.request.PROTOCOL_VERSION`` from edgeconv there, ``python3 <runner> --protocol`` from a runner (one that
does not know the flag is protocol 1). A device that reads a newer protocol than this machine writes is refused.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeconv.bundle import DEVICE_RUNNER_NAME, Bundle, device_runner_bytes
from edgeconv.core.request import PROTOCOL_VERSION
from edgeconv.core.text import shorten
from edgeconv.errors import EdgeconvError, MissingDependency
from edgeconv.remote.transport import Session, SshHost

OLD_RUNNER_NAME = "edgeconv_runner.py"  # the runner of bundles written before it became one .pyz
FIRST_PROTOCOL = 1  # a runner without --protocol; it reads outputs_file already
# request fields added after protocol 1, and the protocol that added them (an older runner gets the request without them)
SINCE_PROTOCOL = {"protocol": 2, "score_output": 3, "min_seconds": 4, "warmup_seconds": 4, "stable": 4, "stable_tolerance": 4,
                  "stable_max_s": 4, "allow_unstable": 4, "max_memory_mb": 4}
# edgeconv on the device, and its protocol: exit 10 without edgeconv, 11 for an edgeconv older than the protocol
_NO_EDGECONV, _EDGECONV_WITHOUT_PROTOCOL = 10, 11
_ASK_EDGECONV = ("import sys\n"
                 f"try:\n    import edgeconv\nexcept ImportError:\n    sys.exit({_NO_EDGECONV})\n"
                 "try:\n    from edgeconv.core.request import PROTOCOL_VERSION as v\n"
                 f"except ImportError:\n    sys.exit({_EDGECONV_WITHOUT_PROTOCOL})\nprint(v)")


@dataclass(frozen=True)
class EdgeconvThere:
    installed: bool
    protocol: int | None  # None: no edgeconv there, or one older than the protocol (its runner is not asked)


def edgeconv_there(dev: Session) -> EdgeconvThere:
    """Whether the device's Python has edgeconv, and the request protocol it reads."""
    res = dev.ask([dev.python, "-c", _ASK_EDGECONV])
    if res.returncode == 0:
        return EdgeconvThere(True, _number(res.stdout))
    return EdgeconvThere(res.returncode == _EDGECONV_WITHOUT_PROTOCOL, None)


@dataclass(frozen=True)
class Plan:
    """What runs the request on the device: edgeconv there, or the bundle's runner file; and the protocol it reads."""

    edgeconv: bool
    runner: str  # the runner's file name in the bundle
    protocol: int | None  # None until the bundle's runner, once on the device, is asked
    added_runner: bytes | None = None  # this edgeconv's runner, sent with a bundle written before bundles carried one

    @property
    def ran(self) -> str:
        return "edgeconv" if self.edgeconv else "device runner"

    def knows(self, request_field: str) -> bool:
        return self.protocol is not None and self.protocol >= SINCE_PROTOCOL.get(request_field, FIRST_PROTOCOL)

    def fit(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request as the device's protocol reads it: the fields of later protocols left out (they only add to
        protocol 1's), and its own protocol named where it reads one. A budget or a --score-output the device's protocol
        cannot read is refused (MissingDependency), never dropped: it would pass unchecked, or score another output."""
        budgets = [k for k in ("max_memory_mb", "score_output") if request.get(k) is not None and not self.knows(k)]
        if budgets:
            raise MissingDependency(f"the device's {self.ran} reads request protocol {self.protocol}; "
                                    f"--{budgets[0].replace('_', '-')} needs protocol {SINCE_PROTOCOL[budgets[0]]}: convert "
                                    "the bundle again (its runner) or upgrade edgeconv on the device")
        out = {k: v for k, v in request.items() if self.knows(k)}
        if self.knows("protocol"):
            out["protocol"] = self.protocol
        return out

    def command(self, python: str, command: str, workdir: str) -> list[str]:
        """The command line that runs ``workdir/request.json`` on ``workdir/bundle``."""
        where = [f"{workdir}/bundle", "--request", f"{workdir}/request.json", "--json"]
        if self.edgeconv:  # edgeconv there executes the same request with the same function, on its richer runners
            report = ["--report", f"{workdir}/report.json"] if command == "validate" else []
            return [python, "-m", "edgeconv", command, *where, *report]
        return [python, f"{workdir}/bundle/{self.runner}", *where]


def plan_request(dev: Session, bundle: Path) -> Plan:
    """edgeconv on the device when it says its protocol (refused when newer than this machine's), else the bundle's
    runner (this edgeconv's own, added, for a bundle that has none)."""
    there = edgeconv_there(dev)
    runner = next((n for n in (DEVICE_RUNNER_NAME, OLD_RUNNER_NAME) if (bundle / n).is_file()), None)
    added = None
    if runner is None:  # a bundle written before bundles carried their runner
        runner, added = DEVICE_RUNNER_NAME, device_runner_bytes()
    if there.protocol is not None:
        return Plan(True, runner, _known(there.protocol, f"edgeconv there (with {dev.python})", dev.host), added)
    return Plan(False, runner, PROTOCOL_VERSION if added else None, added)


def ask_runner(dev: Session, plan: Plan) -> Plan:
    """The plan with the protocol of the bundle's runner, asked on the device (the bundle is there by now). A runner
    that fails to answer is taken for protocol 1: one without ``--protocol`` refuses the flag, and one that cannot
    start at all (no numpy there) says why when the request runs."""
    if plan.protocol is not None:
        return plan
    res = dev.ask([dev.python, f"{dev.workdir}/bundle/{plan.runner}", "--protocol"])
    number = _number(res.stdout) if res.returncode == 0 else None
    protocol = FIRST_PROTOCOL if number is None else number
    return replace(plan, protocol=_known(protocol, f"the bundle's device runner ({plan.runner})", dev.host))


def _number(stdout: bytes) -> int | None:
    lines = stdout.decode(errors="replace").strip().splitlines()
    return int(lines[-1]) if lines and lines[-1].strip().isdigit() else None


def _known(protocol: int, what: str, host: SshHost) -> int:
    if protocol > PROTOCOL_VERSION:
        raise MissingDependency(f"{host}: {what} reads request protocol {protocol}, newer than this edgeconv's "
                                f"{PROTOCOL_VERSION}: upgrade edgeconv on this machine to the device's version or newer")
    return protocol


# signals that end a run from outside, not a crash of the run itself: the device is at fault (exit 3)
KILLED_BY = {1: "SIGHUP: its session ended", 9: "SIGKILL: the OOM killer, or a user", 15: "SIGTERM: a shutdown, or a user"}


class DeviceFailed(EdgeconvError):
    """The run on the device ended without a report, or with the device's own refusal: the device's exit code."""

    def __init__(self, message: str, exit_code: int, **kw):
        super().__init__(message, **kw)
        self.exit_code = exit_code


def device_report(res: subprocess.CompletedProcess, host: SshHost, ran: str, bundle: Bundle, python: str) -> dict[str, Any]:
    """The device's report; or its refusal (its message and exit code); or, when it crashed or printed no report,
    its own exit code with the tail of its stderr."""
    tail = shorten("\n".join(res.stderr.strip().splitlines()[-30:]), 3000, keep="tail") or None
    try:
        doc = json.loads(res.stdout.decode())
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        code = res.returncode or int(err.get("exit_code") or 1)
        raise DeviceFailed(f"{host}: {err.get('message')}", code, hint=err.get("hint"),
                           details=tail if code not in (2, 3) else None)
    if res.returncode in (0, 1) and isinstance(doc, dict):
        return doc
    missing = re.search(r"No module named '([\w.]+)'", res.stderr)
    if missing:
        raise MissingDependency(f"{host}: {python} has no {missing.group(1)}: install it on the device "
                                f"({_install_hint(missing.group(1), bundle)})", details=tail)
    what = "crashed" if res.returncode not in (0, 1) else "printed no report"
    signal_note = f", signal {res.returncode - 128}" if 128 < res.returncode < 160 else ""
    if res.returncode - 128 in KILLED_BY:  # ended from outside (the OOM killer, a shutdown, a user): the device's fault
        raise DeviceFailed(f"{host}: the {ran} was killed on the device (exit {res.returncode}{signal_note}, "
                           f"{KILLED_BY[res.returncode - 128]}); its stderr ends:", 3, details=tail or "(nothing on stderr)")
    raise DeviceFailed(f"{host}: the {ran} {what} (exit {res.returncode}{signal_note}); its stderr ends:",
                       res.returncode or 1, details=tail or "(nothing on stderr)")


def _install_hint(module: str, bundle: Bundle) -> str:
    runner = bundle.model_artifact.get("runner")
    return {"numpy": "pip install numpy", "onnxruntime": "pip install onnxruntime",
            "tensorrt": "JetPack's python3-libnvinfer", "ai_edge_litert": "pip install ai-edge-litert",
            "tflite_runtime": "pip install ai-edge-litert (or tflite-runtime)"}.get(module, f"the {runner} runtime")
