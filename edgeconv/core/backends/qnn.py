"""Qualcomm QNN: a qnn bundle's context ONNX on onnxruntime-qnn's HTP backend, never on the CPU EP. The device runner
has it (``pip install onnxruntime-qnn`` on the device), and edgeconv's own qnn runner is this backend with the QNN
library found in the qnn toolchain when edgeconv's environment has none (edgeconv/runners/qnn.py).

onnxruntime-qnn is a plugin execution provider: its library is registered with ONNX Runtime
(``register_execution_provider_library``) and the session takes its device (``add_provider_for_devices``) with
``session.disable_cpu_ep_fallback=1``, so a graph the HTP cannot run fails to load instead of running on the CPU (the
old ``providers=["QNNExecutionProvider"]`` form only warns and runs everything on the CPU EP: never used). A node that
would run on the CPU EP is refused by name (exit 1): a QNN figure is the HTP's or none. On x86-64 the HTP backend is
QNN's emulator, and ``info()`` says so. See docs/architecture.md, "NPU toolchains"."""

import contextlib
import os
import platform
import sys

from ..errors import ArtifactRefused, CheckFailed, MissingDependency
from ..text import first_line
from .onnxruntime import OnnxRuntimeBackend

EP = "QNNExecutionProvider"
LIBRARY = "libonnxruntime_providers_qnn.so"
INSTALL = "pip install onnxruntime-qnn (it brings the onnxruntime it needs)"


def installed_library():
    """``(path, version)`` of the QNN EP's plugin library from the installed ``onnxruntime_qnn``, or None."""
    try:
        import onnxruntime_qnn
    except ImportError:
        return None
    return onnxruntime_qnn.get_library_path(), getattr(onnxruntime_qnn, "__version__", "?")


def qnn_devices(ort, path, version):
    """The QNN EP's devices, its library (``path``) registered once per process."""
    if not any(d.ep_name == EP for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(EP, str(path))
        except Exception as exc:  # ONNX Runtime's own words: an incompatible onnxruntime or library
            raise MissingDependency("ONNX Runtime %s cannot load the QNN EP from %s: %s"
                                    % (ort.__version__, path, first_line(exc)),
                                    hint="onnxruntime-qnn 2.7 needs onnxruntime >= 1.24: %s" % INSTALL) from exc
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not devices:
        raise MissingDependency("the QNN EP (onnxruntime-qnn %s, %s) offers no device here" % (version, path))
    return devices


@contextlib.contextmanager
def stdout_to_stderr():
    """File descriptor 1 pointed at stderr for a while: QNN's native library prints a line on it when a session starts
    (" # LIBNATIVE: ..."), through C's buffered stdout, and the runner's stdout is its JSON report. C's buffers are
    flushed into stderr before stdout is given back."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush_c_stdio()
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdio():
    """``fflush(NULL)``: every C stdio buffer written out now (to where file descriptor 1 points now)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # Windows has no process-wide C library handle: its CRT flushes on its own terms
        return
    libc.fflush(None)


def htp_emulated(machine=None):
    """QNN's HTP backend is an emulator on x86-64: the NPU is only on the device."""
    return (machine or platform.machine()) in ("x86_64", "AMD64")


class QnnBackend(OnnxRuntimeBackend):
    """ONNX Runtime with the QNN EP's HTP backend as the only EP that may run a node."""

    name = "qnn"
    accepted_options = ()

    def __init__(self, path, threads=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependency("onnxruntime is not installed: %s" % INSTALL)
        library, self.qnn_version = self.library()
        self.devices = qnn_devices(ort, library, self.qnn_version)
        OnnxRuntimeBackend.__init__(self, path, threads)

    def library(self):
        """``(path, version)`` of the QNN EP's plugin library: the installed onnxruntime-qnn's."""
        found = installed_library()
        if found is None:
            raise MissingDependency("onnxruntime-qnn is not installed: %s" % INSTALL)
        return found

    def _session_options(self, cpu_fallback=False):
        so = OnnxRuntimeBackend._session_options(self)
        if cpu_fallback:  # only to name what the CPU EP would run
            so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
        else:
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        so.add_provider_for_devices(self.devices, {"backend_type": "htp"})
        return so

    def open_session(self, options, why):
        try:
            with stdout_to_stderr():
                return self.ort.InferenceSession(self.path, options)
        except Exception as exc:  # a node the HTP refuses, a context binary for another arch: ONNX Runtime's own words
            if "fallback to CPU EP" in str(exc):
                raise CheckFailed("QNN's HTP backend does not take %s of %s: it would run on the CPU EP, which the qnn "
                                  "runner refuses" % (", ".join(self.cpu_nodes()), self.path)) from exc
            raise ArtifactRefused("QNN's HTP backend cannot load %s%s: %s" % (self.path, why, first_line(exc))) from exc

    def cpu_nodes(self):
        """``name (op)`` of each node ONNX Runtime hands the CPU EP when it may (Q/DQ nodes last)."""
        with stdout_to_stderr():
            sess = self.ort.InferenceSession(self.path, self._session_options(cpu_fallback=True))
        nodes = [n for sub in sess.get_provider_graph_assignment_info() if sub.ep_name != EP for n in sub.get_nodes()]
        nodes.sort(key=lambda n: n.op_type in ("QuantizeLinear", "DequantizeLinear"))
        return ["%s (%s)" % (n.name, n.op_type) for n in nodes]

    def info(self):
        out = OnnxRuntimeBackend.info(self)
        emulated = htp_emulated()
        out.update(runtime="onnxruntime-qnn", version=self.qnn_version, onnxruntime=self.version, emulated=emulated,
                   device="HTP emulator (x86-64)" if emulated else "HTP", precision="as compiled in the context binary")
        return out
