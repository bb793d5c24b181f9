"""Steps of long operations. The library announces steps; the CLI decides how they look (rich, or nothing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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
