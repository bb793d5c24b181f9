"""The debug report for people: the worst layers first, then every layer in graph order."""

from __future__ import annotations

from typing import Any


def _f(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def render_debug(r: dict[str, Any], top: int = 10) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgeconv.render import console

    console.print(f"[bold]{escape(r['bundle'])}[/] · {r['target']} {r['precision']} · {escape(r['artifact'])} on {r['runtime']} "
                  f"against {escape(r['reference'])} · {r['data']['count']} samples of {escape(r['data']['path'])}"
                  + (f" · [red]bundle marked {r['status']}[/]" if r.get("status") not in (None, "ok") else ""))
    console.print(f"[dim]{escape(r['capture'])}[/]")
    first = r["first_diverging"]
    if first:
        console.print(f"[bold red]first diverging layer:[/] [bold]{escape(first['source'] or first['layer'])}[/]"
                      + (f" ({first['source_class']})" if first.get("source_class") else "")
                      + f" — ONNX node {escape(first['layer'])} ({first['op']}): SNR {first['snr_db']:.1f} dB, of which it adds "
                        f"{first['added_snr_db']:.1f} dB on its own (its inputs: {_f(first['inherited_snr_db'], '.1f')} dB)"
                      + (f"; the runtime fused {escape(', '.join(first['carries']))} into it, so their error is in that"
                         if first.get("carries") else ""))
    else:
        console.print(f"[green]no layer falls below {r['threshold_db']:g} dB SNR by its own error[/]")

    sens = r.get("sensitivity")

    def table(title: str, rows: list[dict[str, Any]]) -> Table:
        t = Table(title=title, title_justify="left")
        cols = [("source", "left"), ("ONNX node", "left"), ("op", "left"), ("SNR dB", "right"), ("adds dB", "right"),
                ("in dB", "right"), ("cos", "right"), ("max err", "right")]
        for col, just in cols + ([("alone in float", "right")] if sens else []):
            t.add_column(col, justify=just, overflow="fold", no_wrap=just == "right")
        for row in rows:
            carries = f" (+ fused {', '.join(row['carries'])})" if row.get("carries") else ""
            cells = [escape((row["source"] or "—") + carries) + (" ◀ first" if row["first_diverging"] else ""),
                     escape(row["layer"]), row["op"], _f(row["snr_db"], ".1f"), _f(row["added_snr_db"], ".1f"),
                     _f(row["inherited_snr_db"], ".1f"), _f(row.get("cosine"), ".4f"), _f(row.get("max_abs_error"), ".3g")]
            t.add_row(*cells, *([_f(row.get("alone_in_float"), ".3g")] if sens else []),
                      style="bold red" if row["first_diverging"] else None)
        return t

    ranked = sorted((x for x in r["layers"] if x["rank"] is not None), key=lambda x: x["rank"])
    console.print(table(f"Worst {min(top, len(ranked))} layers (by the error each adds)", ranked[:top]))
    console.print(table("Every layer in graph order", r["layers"]))
    if r["unmatched_layers"]:
        console.print(f"[dim]{r['unmatched_layers']} layer(s) have no counterpart the runtime exposes (fused or renamed): "
                      "shown with —[/]")
    for o in r["outputs"]:
        console.print(f"output {escape(o['name'])}: SNR {o['snr_db']:.1f} dB, cosine {o['cosine']:.4f}, max abs error "
                      f"{o['max_abs_error']:.3g}")
    if sens:
        console.print(f"[dim]alone in float: the int8 guard's {sens['metric']} (full int8: {_f(sens['before'], '.3g')}) with "
                      "that layer alone in float, measured by convert --fallback auto[/]")
    console.print("[dim]SNR: channel-balanced (mean over channels of noise/signal), so a channel int8 loses is not hidden "
                  "by a large one; adds: the SNR this layer's own error alone would leave; in: the worst SNR it reads[/]")
