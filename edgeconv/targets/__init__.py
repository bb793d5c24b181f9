"""Target backends by name: an explicit table, imported on demand."""

from __future__ import annotations

import importlib

from edgeconv.errors import MissingDependency
from edgeconv.targets.base import Artifact, Target, TargetOptions

BACKENDS = {
    "onnx": ("edgeconv.targets.onnx:OnnxTarget", "(base install)"),
    "openvino": ("edgeconv.targets.openvino:OpenVinoTarget", "openvino"),
    "tflite": ("edgeconv.targets.tflite:TfliteTarget", "tflite"),
    "jetson": ("edgeconv.targets.jetson:JetsonTarget", "jetson"),
    "coral": ("edgeconv.targets.coral:CoralTarget", "tflite"),
    "ncnn": ("edgeconv.targets.ncnn:NcnnTarget", "ncnn"),
    "ethos-u": ("edgeconv.targets.ethos_u:EthosUTarget", "ethos-u"),
    "executorch": ("edgeconv.targets.executorch:ExecuTorchTarget", "executorch"),
}


def backend(name: str) -> Target:
    if name not in BACKENDS:
        raise MissingDependency(f"target backend {name!r} is not part of this edgeconv (available: {', '.join(BACKENDS)})")
    ref, extra = BACKENDS[name]
    mod_name, cls_name = ref.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise MissingDependency(f"target backend {name!r} is unavailable: {exc}",
                                hint=f"install it with: pip install 'edgeconv[{extra}]'") from exc
    return getattr(module, cls_name)()


__all__ = ["Artifact", "BACKENDS", "Target", "TargetOptions", "backend"]
