"""Runners by name: an explicit table, imported on demand (an import failure names the extra to install)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from edgeconv.errors import MissingDependency
from edgeconv.runners.base import Runner

RUNNERS = {
    "onnxruntime": ("edgeconv.runners.onnxruntime:OnnxRuntimeRunner", "(base install)"),
    "openvino": ("edgeconv.runners.openvino:OpenVinoRunner", "openvino"),
    "litert": ("edgeconv.runners.litert:LiteRtRunner", "tflite"),
    "tensorrt": ("edgeconv.runners.tensorrt:TensorRtRunner", "jetson"),
    "ncnn": ("edgeconv.runners.ncnn:NcnnRunner", "ncnn"),
    "executorch": ("edgeconv.runners.executorch:ExecuTorchRunner", "executorch"),
}


def runner_class(name: str) -> type[Runner]:
    if name not in RUNNERS:
        raise MissingDependency(f"no runner named {name!r} in this edgeconv (known: {', '.join(RUNNERS)})",
                                hint="upgrade edgeconv; the bundle may come from a newer version")
    ref, extra = RUNNERS[name]
    mod_name, cls_name = ref.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise MissingDependency(f"runner {name!r} is unavailable: {exc}",
                                hint=f"install it with: pip install 'edgeconv[{extra}]'") from exc
    return getattr(module, cls_name)


def open_runner(name: str, artifact: Path, *, threads: int | None = None, options: dict[str, Any] | None = None) -> Runner:
    return runner_class(name)(artifact, threads=threads, options=options)


__all__ = ["RUNNERS", "Runner", "open_runner", "runner_class"]
