"""QNN runner: a qnn bundle's context ONNX on onnxruntime-qnn's HTP backend, never on the CPU EP.

onnxruntime-qnn is a plugin execution provider: its library is registered with ONNX Runtime
(``register_execution_provider_library``) and the session takes its device (``add_provider_for_devices``) with
``session.disable_cpu_ep_fallback=1``, so a graph the HTP cannot run fails to load instead of running on the CPU
(the old ``providers=["QNNExecutionProvider"]`` form silently does that). On the device the library comes from the
installed ``onnxruntime_qnn`` package; on a host without it, from the qnn toolchain's venv (``edgeconv toolchain install
qnn``), where its HTP backend is QNN's x86-64 emulator. Everything else is ONNX Runtime's runner (docs/architecture.md).
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path
from typing import Any

from edgeconv import toolchains
from edgeconv.core.backends.onnxruntime import OnnxRuntimeBackend
from edgeconv.core.text import first_line
from edgeconv.errors import ArtifactRefused, CheckFailed, MissingDependency
from edgeconv.runners.onnxruntime import OnnxRuntimeRunner

EP = "QNNExecutionProvider"
LIBRARY = "libonnxruntime_providers_qnn.so"


def library_path() -> tuple[Path, str]:
    """The QNN EP's plugin library and its onnxruntime-qnn version: the installed onnxruntime_qnn, else the qnn
    toolchain's."""
    if importlib.util.find_spec("onnxruntime_qnn") is not None:
        import onnxruntime_qnn

        return Path(onnxruntime_qnn.get_library_path()), onnxruntime_qnn.__version__
    tc = toolchains.require("qnn")
    found = sorted(tc.path.glob(f"lib/python*/site-packages/onnxruntime_qnn/{LIBRARY}"))
    if not found:
        raise MissingDependency(f"the qnn toolchain in {tc.path} has no {LIBRARY}",
                                hint=f"reinstall it: {toolchains.install_command('qnn')} (then run again)")
    return found[0], tc.versions.get("onnxruntime-qnn", "?")


def qnn_devices(ort) -> tuple[list, str]:
    """The QNN EP's devices and its onnxruntime-qnn version, its library registered once per process."""
    path, version = library_path()
    if not any(d.ep_name == EP for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(EP, str(path))
        except Exception as exc:  # ONNX Runtime's own words: an incompatible onnxruntime or library
            raise MissingDependency(f"ONNX Runtime {ort.__version__} cannot load the QNN EP from {path}: {first_line(exc)}",
                                    hint="onnxruntime-qnn 2.7 needs onnxruntime >= 1.24") from exc
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not devices:
        raise MissingDependency(f"the QNN EP (onnxruntime-qnn {version}, {path}) offers no device here")
    return devices, version


class QnnBackend(OnnxRuntimeBackend):
    """ONNX Runtime with the QNN EP's HTP backend as the only EP that may run a node."""

    name = "qnn"
    accepted_options = ()

    def __init__(self, path, threads=None):
        import onnxruntime as ort

        self.devices, self.qnn_version = qnn_devices(ort)
        super().__init__(path, threads)

    def _session_options(self, cpu_fallback: bool = False):
        so = super()._session_options()
        if cpu_fallback:  # only to name what the CPU EP would run
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        else:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        so.add_provider_for_devices(self.devices, {"backend_type": "htp"})
        return so

    def open_session(self, options, why):
        try:
            return self.ort.InferenceSession(self.path, options)
        except Exception as exc:  # a node the HTP refuses, a context binary for another arch: ONNX Runtime's own words
            if "fallback to CPU EP" in str(exc):
                raise CheckFailed(f"QNN's HTP backend does not take {', '.join(self.cpu_nodes())} of {self.path}: "
                                  "it would run on the CPU EP, which the qnn runner refuses") from exc
            raise ArtifactRefused(f"QNN's HTP backend cannot load {self.path}{why}: {first_line(exc)}") from exc

    def cpu_nodes(self) -> list[str]:
        """``name (op)`` of each node ONNX Runtime hands the CPU EP when it may (Q/DQ nodes last)."""
        sess = self.ort.InferenceSession(self.path, self._session_options(cpu_fallback=True))
        nodes = [n for sub in sess.get_provider_graph_assignment_info() if sub.ep_name != EP for n in sub.get_nodes()]
        nodes.sort(key=lambda n: n.op_type in ("QuantizeLinear", "DequantizeLinear"))
        return [f"{n.name} ({n.op_type})" for n in nodes]

    def info(self) -> dict[str, Any]:
        out = super().info()
        emulated = platform.machine() in ("x86_64", "AMD64")
        out.update(runtime="onnxruntime-qnn", version=self.qnn_version, onnxruntime=self.version,
                   device="HTP emulator (x86-64)" if emulated else "HTP", precision="as compiled in the context binary")
        return out


class QnnRunner(OnnxRuntimeRunner):
    runtime = "qnn"
    backend_class = QnnBackend
    accepted_options = QnnBackend.accepted_options
