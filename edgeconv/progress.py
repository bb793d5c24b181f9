"""Steps of long operations. The library announces steps; the CLI decides how they look (rich, or nothing).

What the libraries print during a step is captured (edgeconv/quiet.py): logged, shown with --verbose or when the step
fails; edgeconv's own lines go to ``quiet.terminal()``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from edgeconv import quiet


class Steps:
    """No-op progress: library default and what ``--json`` uses."""

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        with self._captured(label):
            yield

    def note(self, text: str) -> None:
        pass

    @contextlib.contextmanager
    def _captured(self, label: str) -> Iterator[None]:
        """The libraries' output during the step into the log; shown as :meth:`quiet.Captured.shown` says."""
        cap = quiet.Captured(label)
        try:
            with quiet.captured(label) as cap:
                yield
        except BaseException:
            self._library_output(cap, failed=True)
            raise
        self._library_output(cap, failed=False)

    def _library_output(self, cap: quiet.Captured, failed: bool) -> None:
        shown = cap.shown(failed)
        if shown:
            print(shown, file=quiet.terminal())


class RichSteps(Steps):
    """A spinner per step on stderr, a check mark and its time when it ends."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(file=quiet.terminal())

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        import time

        t0 = time.perf_counter()
        with self.console.status(f"{label}…"):
            try:
                with self._captured(label):
                    yield
            except BaseException:
                self.console.print(f"[red]✗[/] {label}")
                raise
        self.console.print(f"[green]✓[/] {label} [dim]({time.perf_counter() - t0:.1f}s)[/]")

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/]")

    def _library_output(self, cap: quiet.Captured, failed: bool) -> None:
        shown = cap.shown(failed)
        if shown:
            self.console.print(shown, style="dim", markup=False, highlight=False, soft_wrap=True)


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

        self.console = Console(file=quiet.terminal(), highlight=False)
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
