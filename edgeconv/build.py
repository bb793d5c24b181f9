"""``edgeconv build BUNDLE``: the device-side step for formats that are compiled on or for the device
(TensorRT engines on a Jetson). The manifest records what was built where, atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgeconv.bundle import MANIFEST, Bundle, write_json
from edgeconv.errors import BadInput
from edgeconv.progress import Steps
from edgeconv.specs import sha256_of


def build_bundle(path: Path, *, dla_core: int | None = None, workspace_mb: int | None = None,
                 steps: Steps | None = None) -> dict[str, Any]:
    steps = steps or Steps()
    bundle = Bundle.open(path)
    art = bundle.model_artifact
    build = art.get("device_build")
    if not build:
        raise BadInput(f"{path} ({bundle.manifest['target']['profile']}) has nothing to build on a device",
                       hint="device-built formats: TensorRT engines (--target jetson…)")
    build = {**build, **({"dla_core": dla_core} if dla_core is not None else {}),
             **({"workspace_mb": workspace_mb} if workspace_mb else {})}
    if build["format"] != "tensorrt-engine":
        raise BadInput(f"edgeconv does not know how to build {build['format']!r}")
    from edgeconv.targets.jetson_device import build_engine

    with steps.step(f"Building the TensorRT engine from {build['onnx']}"):
        record = build_engine(bundle.path, build, steps)
    manifest = bundle.manifest
    art["device_build"] = record
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["role"] != "engine"]
    engine = bundle.path / record["engine"]
    manifest["artifacts"].append({"file": record["engine"], "role": "engine", "precision": art["precision"], "runner": "tensorrt",
                                  "sha256": sha256_of(engine), "bytes": engine.stat().st_size,
                                  "runner_options": {"built_on": record["built_on"]}})
    write_json(bundle.path / MANIFEST, manifest)
    return record


def describe(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, default=str)
