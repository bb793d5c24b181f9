"""``edgeconv build BUNDLE``: the device-side step for formats that are compiled on or for the device
(TensorRT engines on a Jetson). The manifest records what was built where, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeconv.bundle import MANIFEST, Bundle, write_json
from edgeconv.errors import BadInput
from edgeconv.progress import Steps
from edgeconv.specs import sha256_of


def build_bundle(path: Path, *, dla_core: int | None = None, workspace_mb: int | None = None, compiler: str | None = None,
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
    if build["format"] == "edgetpu-compile":
        return _compile_edgetpu(bundle, art, compiler, steps)
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


def _compile_edgetpu(bundle: Bundle, art: dict[str, Any], compiler: str | None, steps: Steps) -> dict[str, Any]:
    from edgeconv.errors import MissingDependency
    from edgeconv.targets.coral import compile_model, find_compiler, predict

    found = find_compiler(compiler)
    if found is None:
        raise MissingDependency("edgetpu_compiler is not on PATH (Google ships it for x86-64 Debian/Ubuntu from its own "
                                "apt repository, not from PyPI)", hint="install it there, or pass --compiler PATH")
    with steps.step(f"Compiling {art['file']} for the Edge TPU"):
        record = compile_model(found, bundle.path / art["file"], bundle.path, predict(bundle.path / art["file"]))
    manifest = bundle.manifest
    art["device_build"] = {**art["device_build"], "built": True, **record}
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["role"] not in ("edgetpu-model",)]
    for file, role in ((record["file"], "edgetpu-model"), (record["log"], "log")):
        p = bundle.path / file
        manifest["artifacts"].append({"file": file, "role": role, "precision": "int8",
                                      "runner": "litert" if role != "log" else None,
                                      "sha256": sha256_of(p), "bytes": p.stat().st_size,
                                      **({"runner_options": art.get("runner_options", {})} if role != "log" else {})})
    write_json(bundle.path / MANIFEST, manifest)
    return {"format": "edgetpu-compile", **record}

