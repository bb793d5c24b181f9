"""Typed errors. Library code raises these; only the CLI maps them to a message and an exit code.

The kinds the host and the device share (EdgeconvError, BadInput, ArtifactRefused, MissingDependency …) are defined
once, in ``edgeconv/core/errors.py``, and imported here; this module adds the host's own (docs/architecture.md).

Exit codes: 0 ok · 1 a check or budget failed · 2 bad usage or bad input (incl. preflight
refusals) · 3 missing dependency, device or unsupported platform · 4 conversion failed · 5 internal error (a bug
in edgeconv; the traceback is written to a file).
"""

from __future__ import annotations

from edgeconv.core.errors import (ArtifactRefused, BadInput, CheckFailed, EdgeconvError, MissingDependency, NoLayerProfiler,
                                  UnknownProtocol)

__all__ = ["ArtifactRefused", "BadInput", "CheckFailed", "ConversionFailed", "EdgeconvError", "IntermediatesUnavailable",
           "InternalError", "MissingDependency", "NoLayerProfiler", "PreflightError", "UnknownProtocol", "converter_of"]


class PreflightError(BadInput):
    """A target refuses a model or an option before any conversion work starts."""


class IntermediatesUnavailable(BadInput):
    """``edgeconv debug``: the artifact's runtime cannot expose its intermediate tensors (or they match nothing)."""


class ConversionFailed(EdgeconvError):
    """An exporter or converter failed, or its result does not compute what the source computes."""

    exit_code = 4


class InternalError(EdgeconvError):
    """A bug in edgeconv (not a failed check): its own exit code, so CI never reads it as a missed budget."""

    exit_code = 5


# Libraries whose exceptions mean "this converter or runtime could not do it", not "edgeconv has a bug".
CONVERTER_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime", "onnxslim", "onnxsim", "tensorflow", "keras", "tf_keras",
                      "tf2onnx", "onnx2tf", "openvino", "nncf", "executorch", "pnnx", "ncnn", "ethosu", "ai_edge_litert",
                      "onnx_graphsurgeon")


def converter_of(exc: BaseException) -> str | None:
    """The converter library an exception came from: the package of the first frame after edgeconv's last one,
    when it is one of CONVERTER_PACKAGES. None when edgeconv itself (or numpy, the standard library ...) raised it."""
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    tb = exc.__traceback__
    frames = []
    while tb is not None:
        frames.append(Path(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    last_ours = max((i for i, f in enumerate(frames) if here in f.parents), default=None)
    if last_ours is None or last_ours + 1 >= len(frames):
        return None
    callee = frames[last_ours + 1]
    roots = [Path(p).resolve() for p in sys.path if p]
    root = max((r for r in roots if r in callee.resolve().parents), key=lambda r: len(r.parts), default=None)
    if root is None:
        return None
    top = callee.resolve().relative_to(root).parts[0].removesuffix(".py")
    return top if top in CONVERTER_PACKAGES else None
