"""The runtimes the device runner has, one module each (ONNX Runtime, LiteRT with the Edge TPU delegate, TensorRT, ncnn,
RKNNLite on a Rockchip NPU, onnxruntime-qnn's HTP backend): an explicit table. Each imports its runtime inside the
function that needs it. edgeconv on the host has more runners (OpenVINO, ExecuTorch) in ``edgeconv/runners``. See
docs/architecture.md."""

from .litert import LiteRtBackend
from .ncnn import NcnnBackend
from .onnxruntime import OnnxRuntimeBackend
from .qnn import QnnBackend
from .rknn import RknnBackend
from .tensorrt import TensorRtBackend

BACKENDS = {"onnxruntime": OnnxRuntimeBackend, "litert": LiteRtBackend, "tensorrt": TensorRtBackend, "ncnn": NcnnBackend,
            "rknn": RknnBackend, "qnn": QnnBackend}
