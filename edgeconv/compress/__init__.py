"""``edgeconv compress``: a smaller source model of the same family, before the frontend (docs/architecture.md).

Three tools, each from a maintained library, combinable in this order:

- structured channel pruning (``--prune-channels R``): Torch-Pruning's DepGraph removes R of each prunable group of
  coupled channels (by group L2 magnitude); the graph really shrinks, so every runtime gets faster;
- low-rank factorisation (``--low-rank R``): every Linear and 1x1 convolution split by truncated SVD into two thin
  layers, keeping the rank that holds R of the layer's energy (0 < R < 1) or a fixed rank (R >= 1);
- unstructured magnitude pruning (``--sparsity S``): the smallest weights of every convolution and Linear (one global
  threshold) set to zero with ``torch.nn.utils.prune``; with ``--finetune`` iteratively, as Han et al. describe: prune,
  retrain, raise the threshold, repeat (a cubic schedule over the first half of the epochs), then retrain at S.

Fine-tuning (``--finetune TRAIN.npz``) trains with cross-entropy on the model's own input layout, seeded. The result is
written as a ``torch.export`` program (``.pt2``) that ``convert`` takes like any other, read back through the same
frontend and checked against the compressed module. The report puts the source and the result side by side:
parameters, non-zero parameters, MACs, the size of each as a ``.pt2`` (like with like), the zipped size of an int8
ONNX artifact, ONNX Runtime fp32 p50 latency (before and after interleaved) and top-1 on ``--data``.

The package, in the order a run goes through it:

- ``request``: :class:`CompressRequest` and the defaults;
- ``checks``: every option checked before anything loads, and the source families compress refuses;
- ``load`` and ``lifting``: the source loaded and made a trainable module (a torch.export program lifted back into
  ``nn.Conv*``/``nn.Linear``/``nn.BatchNorm*``/``nn.PReLU``/``nn.LayerNorm``/``nn.GroupNorm``/``nn.Embedding``/
  ``nn.LSTM``/``nn.GRU`` layers by a table of builders, one per ATen op; ``recurrent``: the LSTM/GRU forms);
- ``channels``: channel pruning, every layer kept whole named with its reason, the pruned copy run before it is kept
  (``reshapes``: widths written into the graph derived from the input where they can be);
- ``methods``: low-rank factorisation, magnitude pruning; ``pays``: a factorisation kept only where it is not slower
  on ONNX Runtime; ``training``: fine-tuning;
- ``measure``: MACs, int8 size, latency, top-1; ``report``: the before/after record;
- ``pipeline``: :func:`compress`, the steps in order.

Progress goes through :mod:`edgeconv.progress`, the table through :mod:`edgeconv.render`. torch and torch_pruning are
imported inside the functions that need them.
"""

from __future__ import annotations

from edgeconv.compress.checks import KERAS_REFUSAL, check_request
from edgeconv.compress.channels import prune_channels
from edgeconv.compress.methods import DENSE_NOTE, MagnitudePruning, low_rank, sparsity_schedule
from edgeconv.compress.pipeline import compress
from edgeconv.compress.request import DEFAULT_BATCH, DEFAULT_EPOCHS, DEFAULT_LR, CompressRequest
from edgeconv.compress.training import finetune
from edgeconv.progress import RichTrainingProgress, TrainingProgress
from edgeconv.render import render_compress as render_report

__all__ = [
    "DEFAULT_BATCH", "DEFAULT_EPOCHS", "DEFAULT_LR", "DENSE_NOTE", "KERAS_REFUSAL", "CompressRequest", "MagnitudePruning",
    "RichTrainingProgress", "TrainingProgress", "check_request", "compress", "finetune", "low_rank", "prune_channels",
    "render_report", "sparsity_schedule",
]
