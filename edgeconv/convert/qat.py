"""Quantization-aware fine-tuning, the int8 guard's lever for a PyTorch source given a labelled training set
(``convert --finetune TRAIN.npz``). The source is made trainable as ``compress`` makes it, prepared by torchao's PT2E
flow (``prepare_qat_pt2e`` with its x86 quantizer: weights fake-quantized per channel and symmetric, activations per
tensor, which is how ONNX Runtime, NNCF and TFLite quantize them), trained a few epochs with the same loop as
``compress --finetune``, and its trained float weights written back into the source's module. That module is saved as
``finetuned.pt2`` and goes through the same ONNX export and canonical step as the source, so the backend then quantizes
the fine-tuned graph with its own calibration. See docs/architecture.md."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import BadInput, ConversionFailed, MissingDependency
from edgeconv.specs import TensorSpec

FINETUNED = "finetuned.pt2"
DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_BATCH = 3, 1e-4, 64


@dataclass
class TrainSet:
    """``--finetune``: its inputs and integer labels, and how long to train on them."""

    path: Path
    feed: dict[str, np.ndarray]
    labels: np.ndarray
    epochs: int = DEFAULT_EPOCHS
    lr: float = DEFAULT_LR
    batch_size: int = DEFAULT_BATCH

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.path), "samples": int(len(self.labels)), "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size}


def load_train_set(path: Path, specs: list[TensorSpec], classes: int | None, epochs: int | None,
                   lr: float | None) -> TrainSet:
    """``--finetune TRAIN.npz`` read and checked against the model's inputs and its class count before any work."""
    from edgeconv.compress.load import load_labelled

    if classes is None:
        raise BadInput("--finetune trains a classifier with cross-entropy; this model has no output of shape (N, classes)")
    feed, labels = load_labelled(path, specs, classes, "--finetune")
    if len(labels) < 2:
        raise BadInput(f"--finetune {path} holds {len(labels)} sample; fine-tuning needs at least 2")
    return TrainSet(path, feed, labels.astype(np.int64), epochs or DEFAULT_EPOCHS, lr or DEFAULT_LR)


def _torchao():
    """torchao's PT2E QAT entry points (torchao's import logs its optional CUDA kernels as warnings: kept quiet)."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
        from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError as exc:
        raise MissingDependency(f"quantization-aware fine-tuning needs torchao ({first_line(exc)})",
                                hint="pip install 'edgeconv[compress]'") from exc
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True))
    return prepare_qat_pt2e, quantizer, (move_exported_model_to_train, move_exported_model_to_eval)


def _example(torch, specs: list[TensorSpec], train: TrainSet) -> tuple:
    n = min(train.batch_size, len(train.labels))
    return tuple(torch.from_numpy(np.ascontiguousarray(train.feed[s.name][:n])) for s in specs)


def _prepare(torch, model, specs: list[TensorSpec], train: TrainSet):
    """The trainable module exported with an open batch and prepared for QAT (fake quantization in the graph)."""
    prepare_qat_pt2e, quantizer, modes = _torchao()
    args = _example(torch, specs, train)
    batch = torch.export.Dim("batch", min=2)
    try:
        program = torch.export.export(model, args, dynamic_shapes=tuple({0: batch} for _ in args))
        return prepare_qat_pt2e(program.module(), quantizer), modes
    except Exception as exc:  # noqa: BLE001 (torch.export and the quantizer raise many types; all mean "cannot be prepared")
        raise ConversionFailed(f"quantization-aware fine-tuning: the model cannot be prepared for QAT "
                               f"({type(exc).__name__}: {first_line(exc, 200)})",
                               hint="a model whose batch is baked into a reshape cannot train in batches: give it as a "
                                    "state_dict with --model-class") from exc


def _copy_weights(torch, prepared, model) -> None:
    """The trained float weights (and batch-norm statistics) of the prepared graph back into the source's module."""
    trained = prepared.state_dict()
    own = model.state_dict()
    missing = [k for k, _ in model.named_parameters() if k not in trained]
    if missing:
        raise ConversionFailed(f"quantization-aware fine-tuning: the prepared graph lost the parameters {missing[:5]}")
    model.load_state_dict({k: trained[k] if k in trained else v for k, v in own.items()})


def finetune_source(source, specs: list[TensorSpec], train: TrainSet, output_index: int, dest: Path) -> tuple[Path, list]:
    """The source fine-tuned with fake quantization in the loop, saved as ``dest/finetuned.pt2`` (inputs as ``specs``);
    returns its path and the training history (one row per epoch)."""
    import torch

    from edgeconv.compress.load import trainable
    from edgeconv.compress.training import finetune
    from edgeconv.progress import TrainingProgress

    model, _ = trainable(torch, source)
    prepared, modes = _prepare(torch, model, specs, train)
    try:
        history = finetune(torch, prepared, specs, train.feed, train.labels, epochs=train.epochs, lr=train.lr,
                           batch_size=train.batch_size, seed=0, magnitude=None, progress=TrainingProgress(),
                           output_index=output_index, modes=modes)
    except Exception as exc:  # noqa: BLE001 (any failure of the training loop: the lever records it, the guard goes on)
        raise ConversionFailed(f"quantization-aware fine-tuning failed ({type(exc).__name__}: {first_line(exc, 200)})") from exc
    _copy_weights(torch, prepared, model)
    model.eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(train.feed[s.name][:2])) for s in specs)
    fixed = [isinstance(s.shape[0], int) for s in specs]
    shapes = tuple(None if f else {0: torch.export.Dim("batch", min=1)} for f in fixed)
    if any(fixed):
        args = tuple(a[: s.shape[0]] for a, s in zip(args, specs))
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / FINETUNED
    with torch.no_grad():
        torch.export.save(torch.export.export(model, args, dynamic_shapes=shapes if not all(fixed) else None), path)
    return path, history
