"""``edgeconv selftest --target jetson``: the first check on a new board — convert the bundled digits sample for
this device, build what must be built here, validate, and give one table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeconv.errors import MissingDependency
from edgeconv.progress import Steps
from edgeconv.remote.options import RemoteRequest, SshOptions


def sample_dir() -> Path:
    here = Path(__file__).resolve().parent
    for d in (here / "_samples", here.parent / "samples"):
        if (d / "digits_cnn.pt").exists():
            return d
    raise MissingDependency("the bundled digits sample is missing from this installation")


SELFTEST_MAX_DROP = 1.0  # top-1 points the digits sample may lose on the device


def _plan(target: str):
    from edgeconv.profiles import resolve_profile

    profile = resolve_profile(target)
    precision = "int8" if "int8" in profile.precisions else "fp16" if "fp16" in profile.precisions else "fp32"
    return profile, precision


def _convert_sample(profile, precision: str, target: str, out: Path, command: list[str], steps: Steps) -> dict[str, Any]:
    from edgeconv.calibration import CalibrationRequest
    from edgeconv.convert import ConvertRequest, convert

    samples = sample_dir()
    convert(ConvertRequest(model=samples / "digits_cnn.pt", target=profile.path and str(profile.path) or target,
                           precision=precision, output=out, data=samples / "digits_test.npz",
                           calib=CalibrationRequest(str(samples / "digits_calib.npz")) if precision == "int8" else None,
                           command_line=command), steps)
    return {"where": "this machine", "step": "convert", "ok": True, "detail": f"{profile.name} {precision}"}


def _sample_request(bundle: Path):
    """The validation of the sample: its labelled test set, and the drop budget that holds here and on a board."""
    from edgeconv.validate import ValidateRequest

    return ValidateRequest(bundle=bundle, data=sample_dir() / "digits_test.npz", max_accuracy_drop=SELFTEST_MAX_DROP)


def _validate_row(report: dict[str, Any], where: str) -> dict[str, Any]:
    acc = report["accuracy"]
    top1 = acc["artifact"]["top1"]
    ok = bool(report["ok"]) and acc["drop_points"] <= SELFTEST_MAX_DROP  # the drop is also a budget in the request
    return {"where": where, "step": "validate", "ok": ok,
            "detail": f"top-1 {top1:.2%} (drop {acc['drop_points']:.2f} points, budget {SELFTEST_MAX_DROP}), "
                      f"p50 {report['latency']['p50_ms']:.3f} ms on {report['measured_on']['runtime']}"
                      + (f" ({report['measured_on']['kind']})" if report["measured_on"].get("emulation") else "")}


def selftest(target: str, steps: Steps | None = None) -> dict[str, Any]:
    from edgeconv.build import build_bundle
    from edgeconv.validate import validate

    steps = steps or Steps()
    profile, precision = _plan(target)
    if profile.backend == "jetson":
        from edgeconv.targets.jetson_device import TEGRA_RELEASE, device_info

        if not TEGRA_RELEASE.exists():
            raise MissingDependency(f"this is not a Jetson ({TEGRA_RELEASE} not found): selftest --target {target} runs on "
                                    "the board",
                                    hint=f"from a workstation: edgeconv selftest --target {target} --remote user@board")
        device_info()  # tensorrt and the GPU are here, or a clear exit 3
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeconv-selftest-") as tmp:
        out = Path(tmp) / "bundle"
        rows.append(_convert_sample(profile, precision, target, out, ["edgeconv", "selftest", "--target", target], steps))
        if profile.backend == "jetson":
            record = build_bundle(out, steps=steps)
            rows.append({"where": "this machine", "step": "build", "ok": True,
                         "detail": f"TensorRT {record['built_on']['tensorrt']} on "
                                   f"{record['built_on'].get('board') or record['built_on']['gpu']}, "
                                   f"{record['build_seconds']:.0f} s"})
        report = validate(_sample_request(out), steps)
        rows.append(_validate_row(report, "this machine"))
    return {"ok": all(r["ok"] for r in rows), "target": profile.name, "rows": rows, "validation": report}


def selftest_remote(target: str, ssh: SshOptions, steps: Steps | None = None, progress=None) -> dict[str, Any]:
    """The same check for boards reached over SSH: convert here (where torch is), then on each board build what
    must be built there (a TensorRT engine; needs edgeconv on the board) and validate (edgeconv or the bundle's
    device runner). Each board gets its own copy of the bundle: an engine belongs to one GPU and TensorRT."""
    import shutil

    steps = steps or Steps()
    profile, precision = _plan(target)
    remotes = ssh.devices()
    rows: list[dict[str, Any]] = []
    devices = []
    with tempfile.TemporaryDirectory(prefix="edgeconv-selftest-") as tmp:
        out = Path(tmp) / "bundle"
        command = ["edgeconv", "selftest", "--target", target, *[a for r in remotes for a in ("--remote", r)]]
        rows.append(_convert_sample(profile, precision, target, out, command, steps))
        for i, dev in enumerate(remotes):
            copy = Path(tmp) / f"bundle-{i}"
            shutil.copytree(out, copy)
            board_rows, device = _on_board(copy, dev, ssh, profile.backend == "jetson", steps, progress)
            rows += board_rows
            devices.append(device)
    return {"ok": all(r["ok"] for r in rows), "target": profile.name, "rows": rows, "devices": devices}


def _on_board(bundle: Path, dev: str, ssh: SshOptions, build: bool, steps: Steps,
              progress) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One board's stages, build (when ``build``) then validate, each over SSH; the first that fails ends the board's
    run. Its table rows and its device record."""
    from edgeconv.remote.run import run_remote
    from edgeconv.validate import build_request

    rows: list[dict[str, Any]] = []
    device: dict[str, Any] = {"target": dev, "ok": False}
    for stage in (["build"] if build else []) + ["validate"]:
        request = None
        if stage == "validate":  # the same request as the local selftest's: the drop budget holds on the board
            request = build_request(_sample_request(bundle), steps)
        req = RemoteRequest(bundle=bundle, remotes=[dev], ssh=ssh, command=stage, request=request)
        res = run_remote(req, progress)["devices"][0]
        if not res["ok"] and "report" not in res:
            rows.append({"where": dev, "step": stage, "ok": False, "detail": res["error"]})
            device.update(error=res["error"], exit_code=res.get("exit_code", 1))
            break
        if stage == "build":
            on = res["report"].get("build", {}).get("built_on", {})
            rows.append({"where": dev, "step": "build", "ok": res["ok"],
                         "detail": f"TensorRT {on.get('tensorrt')} on {on.get('board') or on.get('gpu')}"})
            if not res["ok"]:
                break
        else:
            rows.append(_validate_row(res["report"], dev))
            device["ok"] = rows[-1]["ok"]
            device["validation"] = res["report"]
    return rows, device
