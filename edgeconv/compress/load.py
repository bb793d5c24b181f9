"""Loading the source for compression: its inputs, a trainable module that computes what the source computes, and
the labelled sets for fine-tuning and top-1, each checked against the model before any work."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.compress.checks import refuse_torchscript
from edgeconv.compress.lifting import trainable_from_program
from edgeconv.compress.request import PARITY_ATOL, PARITY_RTOL, CompressRequest
from edgeconv.core.text import first_line
from edgeconv.errors import BadInput, ConversionFailed
from edgeconv.specs import TensorSpec

Labelled = tuple[dict[str, np.ndarray], np.ndarray]  # inputs by name, integer class ids


@dataclass
class Loaded:
    """The source loaded and made trainable: what every later step of compress reads."""

    source: Any  # the frontend's SourceModel
    specs: list[TensorSpec]
    model: Any  # the nn.Module that is compressed in place
    functional: list[str]  # ATen calls the lifting left as functions on raw weights
    example: dict[str, np.ndarray]  # one random batch-1 input per spec
    args: tuple  # the same as torch tensors
    ref: list[np.ndarray]  # the trainable module's outputs on ``example``, before compression
    train: Labelled | None = None
    val: Labelled | None = None


def outputs(torch, out) -> list:
    """A module's outputs as a list of tensors, whether it returns one, a dict or a sequence."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return list(out)


def load(torch, req: CompressRequest) -> Loaded:
    """``req.model`` loaded, its inputs resolved, lifted into a trainable module (checked against the source), and the
    labelled sets of ``--finetune``/``--data`` read and checked against the model."""
    from edgeconv.frontends import load_source
    from edgeconv.specs import random_inputs

    source = load_source(req.model, req.load)
    refuse_torchscript(req.model, source.format)
    specs = _specs(source, req)
    model, functional = trainable(torch, source)
    feed = random_inputs(specs, batch=1)
    example = {s.name: np.asarray(feed[s.name]) for s in specs}
    args = tuple(torch.from_numpy(example[s.name]) for s in specs)
    ref = _same_as_source(torch, source, model, example, args)
    loaded = Loaded(source, specs, model, functional, example, args, ref)
    _labelled_sets(torch, req, loaded)
    return loaded


def _specs(source, req: CompressRequest) -> list[TensorSpec]:
    """The model's inputs; a shape the model does not keep comes from ``--data``/``--finetune`` or ``--input-shape``."""
    from edgeconv.shapes import ShapeRequest, resolve

    files = [(flag, p) for flag, p in (("--data", req.data), ("--finetune", req.finetune)) if p is not None]
    try:
        return resolve(source, ShapeRequest(req.input_shapes, req.input_dtypes, False, files)).specs
    except BadInput as exc:
        if files or not exc.hint or "--input-shape" not in exc.hint:
            raise
        shape = exc.hint.split("--input-shape ", 1)[1]
        raise BadInput(exc.message, hint=f"give --data VAL.npz or --finetune TRAIN.npz (their x gives it, first axis = "
                                         f"samples), or the shape: --input-shape {shape}") from None


def trainable(torch, source) -> tuple[Any, list[str]]:
    """A module that trains and computes what ``source`` computes: the program's graph with its convolutions, linears
    and batch norms lifted into modules (a .pt2), or a copy of the source's module; and the ATen calls left functional."""
    if source.program is not None:
        model, functional = trainable_from_program(torch, source.program)
    else:
        model, functional = copy.deepcopy(source.module).eval(), []
    for p in model.parameters():  # a module saved frozen still trains here, and its outputs are traced to its layers
        p.requires_grad_(True)
    return model, functional


def _same_as_source(torch, source, model, example: dict[str, np.ndarray], args: tuple) -> list[np.ndarray]:
    """The trainable module's outputs on ``example``, checked against the source's own."""
    with torch.no_grad():
        ref = [o.numpy() for o in outputs(torch, model(*args))]
        check = [np.asarray(o) for o in source.run(example)]
    same = len(ref) == len(check) and all(np.allclose(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)
                                          for a, b in zip(ref, check, strict=True))
    if not same:
        raise ConversionFailed("the trainable module rebuilt from the program does not compute what the program computes",
                               hint="give the model as a state_dict with --model-class")
    return ref


def load_labelled(path: Path, specs: list[TensorSpec], classes: int, flag: str) -> Labelled:
    from edgeconv.data import load_inputs

    feed, y = load_inputs(path, specs, need_labels=True)
    if y.min() < 0 or y.max() >= classes:
        raise BadInput(f"{flag} {path}: labels 'y' go from {int(y.min())} to {int(y.max())}; the model has {classes} classes, "
                       f"so labels must be class ids 0..{classes - 1}")
    return feed, y


def _labelled_sets(torch, req: CompressRequest, loaded: Loaded) -> None:
    """``loaded.train`` and ``loaded.val`` from ``--finetune`` and ``--data``, which need a classifier."""
    ref = loaded.ref
    classes = int(ref[0].shape[-1]) if ref and ref[0].ndim == 2 else None
    if (req.finetune is not None or req.data is not None) and classes is None:
        raise BadInput(f"--finetune/--data need a classifier: the model's first output is {list(ref[0].shape)}, not "
                       "(N, classes)")
    if req.finetune is not None:
        loaded.train = load_labelled(req.finetune, loaded.specs, classes, "--finetune")
        if len(loaded.train[1]) < 2:
            raise BadInput(f"--finetune {req.finetune} holds {len(loaded.train[1])} sample; fine-tuning needs at least 2")
    if req.data is not None:
        loaded.val = load_labelled(req.data, loaded.specs, classes, "--data")
    if loaded.train is not None:
        _runs_batch_of_two(torch, loaded)


def _runs_batch_of_two(torch, loaded: Loaded) -> None:
    """Fine-tuning trains in batches: a graph tied to batch 1 is refused before any work."""
    feed = loaded.train[0]
    with torch.no_grad():  # in eval mode: a training-mode pass would move the batch-norm statistics
        try:
            loaded.model(*[torch.from_numpy(np.ascontiguousarray(feed[s.name][:2])) for s in loaded.specs])
        except Exception as exc:  # any failure here means the graph is tied to batch 1
            raise BadInput(f"the model does not run on a batch of 2 ({type(exc).__name__}: {first_line(exc, 200)}); "
                           "fine-tuning trains in batches",
                           hint="a .pt2 exported at batch 1 may have the batch baked into a reshape: give the model as "
                                "a state_dict with --model-class") from exc
