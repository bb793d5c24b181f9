"""Target backends by name: an explicit table, imported on demand."""

from __future__ import annotations

from edgeconv.lazy import load_entry
from edgeconv.targets.base import Artifact, Conversion, QuantSettings, Target, TargetContext, TargetOptions

BACKENDS = {
    "onnx": ("edgeconv.targets.onnx:OnnxTarget", "(base install)"),
    "openvino": ("edgeconv.targets.openvino:OpenVinoTarget", "openvino"),
    "tflite": ("edgeconv.targets.tflite:TfliteTarget", "tflite"),
    "jetson": ("edgeconv.targets.jetson:JetsonTarget", "jetson"),
    "coral": ("edgeconv.targets.coral:CoralTarget", "tflite"),
    "ncnn": ("edgeconv.targets.ncnn:NcnnTarget", "ncnn"),
    "ethos-u": ("edgeconv.targets.ethos_u:EthosUTarget", "ethos-u"),
    "executorch": ("edgeconv.targets.executorch:ExecuTorchTarget", "executorch"),
    "qnn": ("edgeconv.targets.qnn:QnnTarget", "(base install)"),
    "rknn": ("edgeconv.targets.rknn:RknnTarget", "(base install)"),
    "imx500": ("edgeconv.targets.imx500:Imx500Target", "(base install)"),
}


def backend(name: str) -> Target:
    return load_entry(BACKENDS, name, "target backend")()


__all__ = ["Artifact", "BACKENDS", "Conversion", "QuantSettings", "Target", "TargetContext", "TargetOptions", "backend"]
