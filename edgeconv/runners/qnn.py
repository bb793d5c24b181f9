"""QNN runner: the core's QnnBackend (a qnn bundle's context ONNX on onnxruntime-qnn's HTP backend, never on the CPU
EP; edgeconv/core/backends/qnn.py) behind edgeconv's runner interface, so the host and the device run it through the
same code. The one host difference: where edgeconv's environment has no ``onnxruntime_qnn``, the QNN EP's library
comes from the qnn toolchain's venv (``edgeconv toolchain install qnn``), where its HTP backend is QNN's x86-64
emulator (docs/architecture.md, "NPU toolchains")."""

from __future__ import annotations

from pathlib import Path

from edgeconv import toolchains
from edgeconv.core.backends.qnn import LIBRARY, QnnBackend, installed_library
from edgeconv.errors import MissingDependency
from edgeconv.runners.onnxruntime import OnnxRuntimeRunner


def toolchain_library() -> tuple[Path, str]:
    """The QNN EP's plugin library in the qnn toolchain's venv, and that toolchain's onnxruntime-qnn version."""
    tc = toolchains.require("qnn")
    found = sorted(tc.path.glob(f"lib/python*/site-packages/onnxruntime_qnn/{LIBRARY}"))
    if not found:
        raise MissingDependency(f"the qnn toolchain in {tc.path} has no {LIBRARY}",
                                hint=f"reinstall it: {toolchains.install_command('qnn')} (then run again)")
    return found[0], tc.versions.get("onnxruntime-qnn", "?")


class HostQnnBackend(QnnBackend):
    """The core's QnnBackend, its library from the installed onnxruntime-qnn, else from the qnn toolchain."""

    def library(self) -> tuple[Path | str, str]:
        return installed_library() or toolchain_library()


class QnnRunner(OnnxRuntimeRunner):
    runtime = "qnn"
    backend_class = HostQnnBackend
    accepted_options = QnnBackend.accepted_options
