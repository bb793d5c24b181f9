"""Which artifact of a bundle this machine runs, on which backend, with which options: the one choice, here and on
the device. See docs/architecture.md."""

import os
import platform

from .backends import BACKENDS
from .backends.base import check_options
from .errors import BadInput, MissingDependency

EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def _has_module(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _has_edgetpu():
    import ctypes

    try:
        ctypes.CDLL(EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1"))
        return True
    except OSError:
        return False


def artifact_to_run(manifest, has_module=_has_module, has_edgetpu=_has_edgetpu):
    """The artifact this machine runs and its runner options: a TensorRT engine where TensorRT is installed, the
    Edge TPU model where the Edge TPU library is, else the bundle's main model."""
    arts = manifest["artifacts"]
    for art in arts:
        if art["role"] == "engine" and art.get("runner") == "tensorrt" and has_module("tensorrt"):
            return art, dict(art.get("runner_options") or {})
    for art in arts:
        if art["role"] == "edgetpu-model" and has_edgetpu():
            return art, dict(art.get("runner_options") or {}, delegate=EDGETPU_LIBRARY[platform.system()])
    art = [a for a in arts if a["role"] == "model"][0]
    return art, dict(art.get("runner_options") or {})


def runner_options(art, options, request):
    """The artifact's runner options with the request's on top (``--device``, ``--io-layout`` …)."""
    layout = request.get("io_layout", "source")
    if layout not in ("source", "nhwc"):
        raise BadInput("--io-layout must be source or nhwc, not %r" % (layout,))
    out = dict(options)
    if layout == "nhwc":
        if art["runner"] != "litert":
            raise BadInput("--io-layout nhwc applies to TFLite artifacts; %s takes the source layout" % art["file"])
        out["io_layout"] = "artifact"
    for k, v in (request.get("runner_options") or {}).items():
        if v is not None:
            out[k] = v
    return out


def open_backend(bundle_dir, art, options, threads=None):
    """The device runner's backend for ``art`` (edgeconv has more: OpenVINO, ExecuTorch)."""
    cls = BACKENDS.get(art["runner"])
    if cls is None:
        raise MissingDependency("this device runner has no backend for %r: install edgeconv with its %s extra on the device "
                                "(pip install 'edgeconv[%s]') and run again" % (art["runner"], art["runner"], art["runner"]))
    check_options(art["runner"], cls.accepted_options, options)
    kwargs = dict((k, v) for k, v in options.items() if v is not None)
    return cls(os.path.join(str(bundle_dir), art["file"]), threads=threads, **kwargs)
