"""How a converter library's exception becomes edgeconv's ``ConversionFailed`` (and how edgeconv's own bugs stay bugs)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from edgeconv.core.text import first_line, shorten
from edgeconv.errors import ArtifactRefused, BadInput, ConversionFailed, EdgeconvError, converter_of
from edgeconv.profiles import Profile


@contextlib.contextmanager
def converter_step(what: str, failed_dir: Path):
    """An exception that a converter library raises becomes a ConversionFailed naming the library, with the
    traceback kept in the failed-build directory; one raised by edgeconv's own code stays what it is (a bug)."""
    try:
        yield
    except ArtifactRefused as exc:
        # the file was written by this conversion: its runtime refusing it is this conversion's failure
        raise ConversionFailed(f"{what}: {exc.message}",
                               hint="the converter produced a file its runtime refuses; another --precision or target may "
                                    "avoid it (please report the model)") from exc
    except EdgeconvError:
        raise
    except Exception as exc:
        lib = converter_of(exc)
        if lib is None:
            raise
        import traceback

        failed_dir.mkdir(parents=True, exist_ok=True)
        log = failed_dir / "converter-traceback.txt"
        log.write_text("".join(traceback.format_exception(exc)))
        raise ConversionFailed(f"{what} failed inside {lib}: {type(exc).__name__}: {first_line(exc, 400)}",
                               hint=f"the converter's traceback is in {log}; another target or --opset may avoid it") from exc


def tolerance_hint(profile: Profile) -> str:
    return (f"tolerances per precision are data in the device profile ({profile.path}); --atol NAME=VALUE "
            "overrides one output's max abs error, your own profile .toml changes the rest")


def source_failure(framework: str, feed: dict[str, np.ndarray], exc: Exception) -> BadInput:
    """The source model failing on the inputs edgeconv resolved: the user's bad input, with the reason its framework gave
    and the hint that fixes the common cause (float64 models fed float32 data)."""
    shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))} {v.dtype}" for k, v in feed.items())
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [""]
    # the TorchScript interpreter's first line says only that it failed; its last line says why
    reason = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    hint = "check --input-shape (and that the model runs on such inputs in its own framework)"
    if re.search(r"\bdouble\b|float64", reason, re.IGNORECASE):
        name = next(iter(feed))
        hint = (f"the model computes in float64 (numpy's default float64 data is read as float32): give the dtype, "
                f"e.g. --input-shape {name}={'x'.join(map(str, (1, *feed[name].shape[1:])))}:float64")
    prefix = f"{type(exc).__name__}: "
    return BadInput(f"the {framework} model fails on inputs of shape {shapes}: {prefix}{shorten(reason.removeprefix(prefix))}",
                    hint=hint)
