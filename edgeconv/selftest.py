"""``edgeconv selftest --target jetson``: the first check on a new board — convert the bundled digits sample for
this device, build what must be built here, validate, and give one table."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeconv.errors import MissingDependency
from edgeconv.progress import Steps


def sample_dir() -> Path:
    here = Path(__file__).resolve().parent
    for d in (here / "_samples", here.parent / "samples"):
        if (d / "digits_cnn.pt").exists():
            return d
    raise MissingDependency("the bundled digits sample is missing from this installation")


def selftest(target: str, steps: Steps | None = None) -> dict[str, Any]:
    from edgeconv.build import build_bundle
    from edgeconv.calibration import CalibrationRequest
    from edgeconv.convert import ConvertRequest, convert
    from edgeconv.profiles import resolve_profile
    from edgeconv.validate import ValidateRequest, validate

    steps = steps or Steps()
    profile = resolve_profile(target)
    if profile.backend == "jetson":
        from edgeconv.targets.jetson_device import TEGRA_RELEASE, device_info

        if not TEGRA_RELEASE.exists():
            raise MissingDependency(f"this is not a Jetson ({TEGRA_RELEASE} not found): selftest --target {target} runs on the board",
                                    hint="on this machine, `edgeconv convert … --target jetson-…` prepares and previews a bundle")
        device_info()  # tensorrt and the GPU are here, or a clear exit 3
    samples = sample_dir()
    precision = "int8" if "int8" in profile.precisions else "fp16" if "fp16" in profile.precisions else "fp32"
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeconv-selftest-") as tmp:
        out = Path(tmp) / "bundle"
        convert(ConvertRequest(model=samples / "digits_cnn.pt", target=profile.path and str(profile.path) or target,
                               precision=precision, output=out, data=samples / "digits_test.npz",
                               calib=CalibrationRequest(str(samples / "digits_calib.npz")) if precision == "int8" else None,
                               command_line=["edgeconv", "selftest", "--target", target]), steps)
        rows.append({"step": "convert", "ok": True, "detail": f"{profile.name} {precision}"})
        if profile.backend == "jetson":
            record = build_bundle(out, steps=steps)
            rows.append({"step": "build", "ok": True, "detail": f"TensorRT {record['built_on']['tensorrt']} on "
                         f"{record['built_on'].get('board') or record['built_on']['gpu']}, {record['build_seconds']:.0f} s"})
        report = validate(ValidateRequest(bundle=out, data=samples / "digits_test.npz", max_accuracy_drop=1.0), steps)
        rows.append({"step": "validate", "ok": report["ok"],
                     "detail": f"top-1 {report['accuracy']['artifact']['top1']:.2%} (drop {report['accuracy']['drop_points']:.2f} "
                               f"points), p50 {report['latency']['p50_ms']:.3f} ms on {report['measured_on']['runtime']}"})
    return {"ok": all(r["ok"] for r in rows), "target": profile.name, "rows": rows, "validation": report}
