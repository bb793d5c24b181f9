"""Fine-tuning: cross-entropy on the model's own input layout, Adam, seeded; the sparsity schedule applied per epoch."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeconv.compress.methods import MagnitudePruning, sparsity_schedule
from edgeconv.progress import TrainingProgress
from edgeconv.specs import TensorSpec


def _logits(torch, out):
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _epoch(torch, model, opt, tensors: list, labels, starts: list[int], batch_size: int, perm,
           progress: TrainingProgress) -> tuple[float, int, int]:
    """One pass over the shuffled batches: the summed loss, the correct predictions and the samples seen."""
    total_loss, correct, seen = 0.0, 0, 0
    for i in starts:
        idx = perm[i:i + batch_size]
        opt.zero_grad()
        logits = _logits(torch, model(*[t[idx] for t in tensors]))
        loss = torch.nn.functional.cross_entropy(logits, labels[idx])
        loss.backward()
        opt.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == labels[idx]).sum())
        seen += len(idx)
        progress.advance()
    return total_loss, correct, seen


def finetune(torch, model, specs: list[TensorSpec], feed: dict[str, np.ndarray], y: np.ndarray, *, epochs: int, lr: float,
             batch_size: int, seed: int, magnitude: MagnitudePruning | None, progress: TrainingProgress) -> list[dict[str, Any]]:
    """Cross-entropy on the model's own input layout, Adam, seeded shuffles; with ``magnitude``, the sparsity follows
    :func:`sparsity_schedule` (pruned at the start of each epoch). Returns one row per epoch."""
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
            model.train()
            perm = torch.randperm(n, generator=gen)
            total_loss, correct, seen = _epoch(torch, model, opt, tensors, labels, starts, batch_size, perm, progress)
            row = {"epoch": epoch + 1, "loss": total_loss / seen, "train_top1": correct / seen,
                   "sparsity": schedule[epoch]}
            history.append(row)
            progress.epoch(row, epochs)
    finally:
        progress.close()
        model.eval()
    return history
