"""Checks before any work: the options of a compress request, and source families compress cannot take."""

from __future__ import annotations

import math
from pathlib import Path

from edgeconv.compress.request import CompressRequest
from edgeconv.errors import BadInput
from edgeconv.lazy import version_of

KERAS_REFUSAL = (
    "compress cannot prune this Keras model here: the maintained Keras pruning library, TensorFlow Model Optimization "
    "(tfmot), works only with tf.keras 2 models (the tf_keras package) and has no Keras 3 support "
    "(tensorflow/model-optimization#1119); the installed Keras is {keras} and .keras files are Keras 3. No maintained "
    "library prunes or factorises Keras 3 models, and edgeconv does not do hand-written layer surgery")


def _ratio(value: float | None, flag: str) -> None:
    if value is not None and not (0.0 < value < 1.0):
        raise BadInput(f"{flag} {value:g} is outside (0, 1): it is the fraction to remove, e.g. {flag} 0.3 removes 30%",
                       hint=f"give {flag} a value between 0 and 1 (exclusive)")


def check_request(req: CompressRequest) -> None:
    """Every option that can be checked without loading anything: ratios, fine-tuning options, the output path."""
    _check_methods(req)
    _check_training(req)
    if req.runs < 1 or req.warmup < 0:
        raise BadInput("--runs must be at least 1 and --warmup at least 0")
    _check_output(req)


def _check_methods(req: CompressRequest) -> None:
    if req.prune_channels is None and req.sparsity is None and req.low_rank is None:
        raise BadInput("nothing to do: give at least one of --prune-channels R, --sparsity S, --low-rank R",
                       hint="e.g. edgeconv compress model.pt2 -o small.pt2 --prune-channels 0.3 --finetune train.npz")
    _ratio(req.prune_channels, "--prune-channels")
    _ratio(req.sparsity, "--sparsity")
    if req.low_rank is not None and not (0.0 < req.low_rank < 1.0 or (req.low_rank >= 1 and float(req.low_rank).is_integer())):
        raise BadInput(f"--low-rank {req.low_rank:g} is neither an energy fraction in (0, 1) nor a whole rank >= 1",
                       hint="--low-rank 0.5 keeps the rank that holds 50% of each layer's energy; --low-rank 8 keeps rank 8")
    if req.keep_slower and req.low_rank is None:
        raise BadInput("--keep-slower without --low-rank: only low-rank splits are undone where they run slower",
                       hint="add --low-rank R, or drop --keep-slower")


def _check_training(req: CompressRequest) -> None:
    if req.finetune is None:
        given = [f for f, v in (("--epochs", req.epochs), ("--lr", req.lr), ("--batch-size", req.batch_size)) if v is not None]
        if given:
            raise BadInput(f"{', '.join(given)} without --finetune TRAIN.npz: there is nothing to train on",
                           hint="add --finetune TRAIN.npz (x and integer labels y)")
    if req.epochs is not None and req.epochs < 1:
        raise BadInput(f"--epochs {req.epochs} must be at least 1")
    if req.lr is not None and not (req.lr > 0 and math.isfinite(req.lr)):
        raise BadInput(f"--lr {req.lr:g} must be a positive learning rate, e.g. 1e-3")
    if req.batch_size is not None and req.batch_size < 1:
        raise BadInput(f"--batch-size {req.batch_size} must be at least 1")
    if req.round_to is not None and req.round_to < 1:
        raise BadInput(f"--round-to {req.round_to} must be at least 1 (1: no rounding)")


def _check_output(req: CompressRequest) -> None:
    if req.output.suffix != ".pt2":
        raise BadInput(f"-o {req.output}: compress writes a torch.export program, whose file ends in .pt2",
                       hint=f"-o {req.output.with_suffix('.pt2')}")
    if req.output.exists() and not req.force:
        raise BadInput(f"{req.output} exists", hint="choose another -o, or add --force to replace it")
    if req.output.resolve() == req.model.resolve():
        raise BadInput("-o names the source model itself; compress never overwrites its source")


def refuse_family(path: Path, family: str) -> None:
    """Keras and ONNX sources: compress writes a model of the source's own family, and neither has a maintained way here."""
    if family == "keras":
        raise BadInput(KERAS_REFUSAL.format(keras=version_of("keras") or "not installed"),
                       hint="compress the PyTorch version of the model (.pt2, or a state_dict with --model-class), or prune "
                            "it with tfmot under tf_keras yourself and hand the result to convert")
    if family == "onnx":
        raise BadInput(f"{path} is an ONNX graph: compress writes a smaller source model of the same family and fine-tunes "
                       "it in its own framework, and ONNX has none",
                       hint="compress the PyTorch or Keras model the graph was exported from")


def refuse_torchscript(path: Path, source_format: str) -> None:
    if source_format == "torchscript":
        raise BadInput(f"{path} is TorchScript only: compress needs the Python modules (Torch-Pruning follows "
                       "nn.Conv2d/nn.Linear layers, fine-tuning trains them) and writes a torch.export program, but a "
                       "TorchScript file keeps a compiled graph, and torch.export cannot trace it",
                       hint="save the model as a .pt2 (torch.export.save) or a state_dict with its class (--model-class)")
