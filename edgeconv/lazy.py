"""The one place heavy libraries are imported from.

torch, tensorflow, openvino, onnx2tf and tensorrt are never imported at CLI start-up; the function that needs
one calls :func:`require`, which turns an ImportError into a typed error naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from edgeconv.errors import MissingDependency

# module name -> the extra of edgeconv that installs it
EXTRAS = {
    "torch": "torch",
    "onnxscript": "torch",
    "tensorflow": "keras",
    "tf2onnx": "keras",
    "keras": "keras",
    "openvino": "openvino",
    "nncf": "openvino",
    "PIL": "images",
    "matplotlib": "plot",
    "onnxruntime": "(base install)",
    "onnx": "(base install)",
    "onnxslim": "(base install)",
}


def require(module: str, *, why: str = "") -> ModuleType:
    """Import ``module`` or raise MissingDependency naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise _missing(module, why, str(exc)) from exc


def require_installed(module: str, *, why: str = "") -> None:
    """Like ``require`` for a module that a child process will import: found, not imported here."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise _missing(module, why, f"No module named {module.split('.')[0]!r}")


def _missing(module: str, why: str, cause: str) -> MissingDependency:
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    if extra and not extra.startswith("("):
        hint = f"install it with: pip install 'edgeconv[{extra}]'"
    else:
        hint = f"install it with: pip install {top}"
    purpose = f" (needed {why})" if why else ""
    return MissingDependency(f"{top} is not installed{purpose}: {cause}", hint=hint)


def load_entry(table: dict[str, tuple[str, str]], name: str, kind: str):
    """``table[name]`` is ``("module:Attr", extra)``; import it, or say which extra provides it."""
    if name not in table:
        raise MissingDependency(f"no {kind} named {name!r} in this edgeconv (known: {', '.join(table)})",
                                hint="upgrade edgeconv if the bundle or profile comes from a newer version")
    ref, extra = table[name]
    mod_name, attr = ref.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        install = f"pip install 'edgeconv[{extra}]'" if not extra.startswith("(") else "pip install edgeconv"
        raise MissingDependency(f"{kind} {name!r} is unavailable: {exc}", hint=f"install it with: {install}") from exc
    return getattr(module, attr)


def version_of(distribution: str) -> str | None:
    """Installed version of a distribution, without importing it."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
