"""Fine-tuning: cross-entropy on the model's own input layout, Adam, seeded; the sparsity schedule applied per epoch."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgeconv.compress.methods import MagnitudePruning, sparsity_schedule
from edgeconv.progress import TrainingProgress
from edgeconv.specs import TensorSpec


def _logits(torch, out, index: int = 0):
    """The class scores among a module's outputs: the ``index``-th of a dict, tuple or list, else the one tensor."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        out = out[index]
    return out


def _epoch(torch, model, opt, tensors: list, labels, starts: list[int], batch_size: int, perm,
           progress: TrainingProgress, output_index: int = 0) -> tuple[float, int, int]:
    """One pass over the shuffled batches: the summed loss, the correct predictions and the samples seen."""
    total_loss, correct, seen = 0.0, 0, 0
    for i in starts:
        idx = perm[i:i + batch_size]
        opt.zero_grad()
        logits = _logits(torch, model(*[t[idx] for t in tensors]), output_index)
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        loss.backward()
        opt.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == labels[idx]).sum())
        seen += len(idx)
        progress.advance()
    return total_loss, correct, seen


def finetune(torch, model, specs: list[TensorSpec], feed: dict[str, np.ndarray], y: np.ndarray, *, epochs: int, lr: float,
             batch_size: int, seed: int, magnitude: MagnitudePruning | None, progress: TrainingProgress,
             output_index: int = 0, modes: tuple[Callable, Callable] | None = None) -> list[dict[str, Any]]:
    """Cross-entropy on the model's own input layout (its ``output_index``-th output), Adam, seeded shuffles; with
    ``magnitude``, the sparsity follows :func:`sparsity_schedule` (pruned at the start of each epoch). ``modes``: how to
    put the model in training and in eval mode (default ``model.train()``/``model.eval()``; an exported graph module
    needs torchao's). Returns one row per epoch."""
    to_train, to_eval = modes or (lambda m: m.train(), lambda m: m.eval())
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in specs]
    labels = torch.from_numpy(y.astype(np.int64))
    n = len(labels)
    batch_size = min(batch_size, n)
    starts = [i for i in range(0, n, batch_size) if n - i >= 2 or i == 0]  # a last batch of one would break batch norm
    schedule = sparsity_schedule(magnitude.target, epochs) if magnitude else [None] * epochs
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    progress.start(epochs, len(starts))
    try:
        for epoch in range(epochs):
            if magnitude:
                magnitude.step(schedule[epoch])
            to_train(model)
            perm = torch.randperm(n, generator=gen)
            total_loss, correct, seen = _epoch(torch, model, opt, tensors, labels, starts, batch_size, perm, progress,
                                               output_index)
            row = {"epoch": epoch + 1, "loss": total_loss / seen, "train_top1": correct / seen,
                   "sparsity": schedule[epoch]}
            history.append(row)
            progress.epoch(row, epochs)
    finally:
        progress.close()
        to_eval(model)
    return history
