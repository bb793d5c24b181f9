"""Runners by name: an explicit table, imported on demand (an import failure names the extra to install)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeconv.lazy import load_entry
from edgeconv.runners.base import Runner

RUNNERS = {
    "onnxruntime": ("edgeconv.runners.onnxruntime:OnnxRuntimeRunner", "(base install)"),
    "openvino": ("edgeconv.runners.openvino:OpenVinoRunner", "openvino"),
    "litert": ("edgeconv.runners.litert:LiteRtRunner", "tflite"),
    "tensorrt": ("edgeconv.runners.tensorrt:TensorRtRunner", "jetson"),
    "ncnn": ("edgeconv.runners.ncnn:NcnnRunner", "ncnn"),
    "executorch": ("edgeconv.runners.executorch:ExecuTorchRunner", "executorch"),
    "qnn": ("edgeconv.runners.qnn:QnnRunner", "(base install)"),
    "rknn": ("edgeconv.runners.rknn:RknnRunner", "(base install)"),
    "imx500": ("edgeconv.runners.imx500:Imx500Runner", "(base install)"),
}


def runner_class(name: str) -> type[Runner]:
    return load_entry(RUNNERS, name, "runner")


def open_runner(name: str, artifact: Path, *, threads: int | None = None, options: dict[str, Any] | None = None) -> Runner:
    return runner_class(name)(artifact, threads=threads, options=options)


__all__ = ["RUNNERS", "Runner", "open_runner", "runner_class"]
