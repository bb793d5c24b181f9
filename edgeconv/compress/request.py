"""What ``edgeconv compress`` is asked to do, and its defaults (docs/architecture.md, "compress")."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeconv.frontends.base import LoadOptions
from edgeconv.specs import Dim

DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_BATCH = 10, 1e-3, 64
PARITY_ATOL, PARITY_RTOL = 1e-4, 1e-3  # the written .pt2 against the compressed module in memory (both fp32 torch)


@dataclass
class CompressRequest:
    model: Path
    output: Path
    prune_channels: float | None = None
    # --prune-channels keeps a multiple of this many channels per layer: ONNX Runtime's x86 convolutions work in blocks of
    # 8 channels (AVX2; 16 on AVX-512), and a pruned MobileNetV2 whose widths are not multiples runs no faster at all
    round_to: int | None = 8
    sparsity: float | None = None
    low_rank: float | None = None  # 0 < R < 1: energy fraction kept; R >= 1 (whole): fixed rank
    keep_slower: bool = False  # --low-rank: keep the splits that run slower too (for size), timed and reported all the same
    finetune: Path | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    data: Path | None = None
    input_shapes: dict[str | None, list[Dim]] = field(default_factory=dict)
    input_dtypes: dict[str | None, str] = field(default_factory=dict)
    load: LoadOptions = field(default_factory=LoadOptions)
    force: bool = False
    seed: int = 0
    runs: int = 100
    warmup: int = 10
    threads: int | None = None
    command_line: list[str] = field(default_factory=list)

    @property
    def epochs_or_default(self) -> int:
        return self.epochs or DEFAULT_EPOCHS

    @property
    def lr_or_default(self) -> float:
        return self.lr or DEFAULT_LR

    @property
    def batch_size_or_default(self) -> int:
        return self.batch_size or DEFAULT_BATCH
