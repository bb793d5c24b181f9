"""Steps of long operations. The library announces steps; the CLI decides how they look (rich, or nothing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class Steps:
    """No-op progress: library default and what ``--json`` uses."""

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        yield

    def note(self, text: str) -> None:
        pass


class RichSteps(Steps):
    """A spinner per step on stderr, a check mark and its time when it ends."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        import time

        t0 = time.perf_counter()
        with self.console.status(f"{label}…"):
            try:
                yield
            except BaseException:
                self.console.print(f"[red]✗[/] {label}")
                raise
        self.console.print(f"[green]✓[/] {label} [dim]({time.perf_counter() - t0:.1f}s)[/]")

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/]")


class TrainingProgress:
    """Fine-tuning progress: the library calls it; the CLI decides how it looks. This one shows nothing."""

    def start(self, epochs: int, batches: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        pass

    def close(self) -> None:
        pass


class RichTrainingProgress(TrainingProgress):
    """A progress bar on stderr over every batch of every epoch, and one line per epoch: loss, accuracy, sparsity."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.bar = None

    def start(self, epochs: int, batches: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("fine-tuning epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console)
        self.task = self.bar.add_task("", total=epochs * batches, epoch=1, epochs=epochs, stats="")
        self.bar.start()

    def advance(self) -> None:
        self.bar.update(self.task, advance=1)

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        stats = f"loss {row['loss']:.4f} · train top-1 {row['train_top1'] * 100:.1f}%"
        if row.get("sparsity") is not None:
            stats += f" · sparsity {row['sparsity']:.3f}"
        self.bar.console.print(f"  epoch {row['epoch']}/{epochs}: {stats}")
        self.bar.update(self.task, epoch=min(row["epoch"] + 1, epochs), stats=stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
