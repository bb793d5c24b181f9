"""What `edgeconv sweep` prints: the matrix it wrote, the count by status, and the changes since the baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def render_sweep(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    con = Console(soft_wrap=True)
    con.print(Path(r["matrix"]).read_text().rstrip(), markup=False)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(r["by_status"].items()))
    con.print(f"\n{r['cells']} cells: {counts}")
    con.print(f"[dim]results: {escape(r['results'])} · matrix: {escape(r['matrix'])} · page: {escape(r['html'])}[/]")
    base = r.get("baseline")
    if base is None:
        return
    if base["machines_differ"]:
        m = base["machines_differ"]
        con.print(f"baseline measured on {escape(str(m['old']))}, this run on {escape(str(m['new']))}: latency not compared")
    if not base["changes"]:
        con.print(f"no change since {escape(base['file'])}")
    for c in base["changes"]:
        mark = "[red]regression[/]" if c["regression"] else "[dim]change[/]"
        con.print(f"{mark} {escape(c['cell_id'])} {c['kind']}: {escape(str(c['old']))} → {escape(str(c['new']))} "
                  f"{escape(c['note'])}")
    con.print(f"{base['regressions']} regression(s) since {escape(base['file'])}")
