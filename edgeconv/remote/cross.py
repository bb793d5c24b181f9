"""``validate --remote`` compares each device with this machine: the same request run here too, and the device's
outputs set against this machine's (another CPU architecture, other kernels in the same runtime). The comparison is an
extra: it never costs a device its run (docs/architecture.md)."""

from __future__ import annotations

import os
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.parity import compare_machines
from edgeconv.core.text import first_line
from edgeconv.errors import EdgeconvError
from edgeconv.validate import run_request


def host_run(bundle: Path, request: dict[str, Any] | None, progress: Callable[[str], None]) -> dict[str, Any]:
    """The request executed here, for the artifact's outputs on this machine: one timed run and no budgets (only the
    outputs are used). ``{"outputs", "report"}``, or ``{"reason"}`` when this machine cannot run the artifact or the
    run here failed in any way (an unforeseen error's traceback goes to a file the reason names)."""
    if not request:
        return {"reason": "no request to run here"}
    request = dict(request, runs=1, warmup=0, max_latency_ms=None, max_accuracy_drop=None)
    progress("this machine: running the same request here, for the cross-architecture comparison")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeconv-host-run-") as tmp:
            request["outputs_file"] = str(Path(tmp) / "outputs.npz")
            report = run_request(bundle, request, report=Path(tmp) / "validation.json")
            with np.load(request["outputs_file"]) as z:
                return {"outputs": {k: z[k] for k in z.files}, "report": report}
    except EdgeconvError as exc:
        return {"reason": f"this machine cannot run the artifact: {exc.message}"}
    except Exception as exc:  # noqa: BLE001 - a bug or a runtime failing here must not cost the devices their runs
        return {"reason": f"the run on this machine failed: {type(exc).__name__}: {first_line(str(exc))} "
                          f"(traceback: {_traceback_file(exc)})"}


def _traceback_file(exc: BaseException) -> str:
    """The traceback of an error edgeconv carries on past, written to a file; its path (or why it could not be)."""
    try:
        fd, path = tempfile.mkstemp(prefix="edgeconv-host-run-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    except OSError as err:
        return f"not written: {err}"
    return path


def cross_architecture(host: dict[str, Any], device_outputs: dict[str, Any] | None, report: dict[str, Any]) -> dict[str, Any]:
    """The device's outputs against this machine's, for the same artifact and request (the comparison itself is the
    device runner's ``compare_machines``): max abs difference, top-1 agreement, and each side's top-1 on the data."""
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
