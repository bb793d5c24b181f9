"""Labelled and sample data files (``.npz``/``.npy``), checked against a model's inputs; batched evaluation.

The loader and its checks are the core's (``edgeconv.core.data``, the device runner's too), so a data file is
refused in the same words here and on a device; this module gives them edgeconv's typed specs (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeconv.core import data as core
from edgeconv.core.accuracy import classifier_output, topk_accuracy
from edgeconv.core.data import DATA_FORMS, read_arrays
from edgeconv.specs import TensorSpec, sha256_of

__all__ = ["DATA_FORMS", "accuracy", "classifier_output", "data_record", "feed_count", "fixed_batch", "load_inputs",
           "pick_inputs", "read_arrays", "run_batched"]

feed_count = core.feed_count  # samples in a feed: the data set's first axis; 1 for one feed as the model takes it

accuracy = topk_accuracy  # top-1 (and top-5) against integer labels: the core's rule


def _specs(specs: list[TensorSpec]) -> list[dict]:
    return [s.to_dict() for s in specs]


def pick_inputs(path: Path, arrays: dict[str, np.ndarray], specs: list[TensorSpec], *,
                labels: bool = False) -> dict[str, np.ndarray]:
    """The arrays that feed ``specs``: by input name, or ``x`` for a one-input model (unchecked)."""
    return core.pick_inputs(path, arrays, _specs(specs), labels=labels)


def load_inputs(path: Path, specs: list[TensorSpec], *, need_labels: bool) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs keyed ``x`` (one-input models) or by input name, from an .npz or an .npy; labels ``y``
    (integer class ids, .npz only) when the file has them, required with ``need_labels``."""
    return core.load_labelled(path, _specs(specs), need_labels=need_labels)


def fixed_batch(specs: list[TensorSpec]) -> int | None:
    """The batch every call has: the size on the batch axis of the first input that has one (a 0-d ``sr`` has none,
    a state ``[layers, batch, hidden]`` has it on axis 1); None when it is open."""
    first = next((s for s in specs if s.batch_axis is not None and s.batch_axis < len(s.shape)), None)
    size = first.shape[first.batch_axis] if first else None
    return size if isinstance(size, int) else None


def data_record(path: Path, n: int) -> dict:
    return {"path": str(path), "sha256": sha256_of(path), "count": int(n)}


class _Call:
    """A plain function as the core's backend interface (prepare, run), so batching is written once."""

    def __init__(self, fn: Callable[[dict[str, np.ndarray]], list[np.ndarray]]):
        self.run = fn

    @staticmethod
    def prepare(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feed


def run_batched(run: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feed: dict[str, np.ndarray],
                batch: int | None, chunk: int = 64) -> list[np.ndarray]:
    """Run ``feed`` through in slices of the model's fixed batch (or ``chunk`` when batch is dynamic)."""
    return core.run_batched(_Call(run), feed, batch, chunk)
