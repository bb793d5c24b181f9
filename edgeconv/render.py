"""Rich tables for people. Every figure says where it was measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(highlight=False)


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _allowed(o: dict[str, Any]) -> str:
    parts = []
    allowed = o.get("allowed_abs", o["atol"])
    if allowed is not None:
        parts.append(f"abs ≤ {allowed:.0e}" + (" (scaled)" if o["atol"] is not None and allowed > o["atol"] else ""))
    if o.get("allowed_rel") is not None:
        parts.append(f"rel ≤ {o['allowed_rel']:.0e}")
    parts.append(f"cos ≥ {o['min_cosine']}")
    return ", ".join(parts)


def _parity_table(parity: dict[str, Any], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("output", "shape", "max abs err", "max rel err", "cosine", "allowed", "ok"):
        t.add_column(col, justify="right" if col not in ("output", "shape") else "left")
    for o in parity["outputs"]:
        t.add_row(o["name"], "x".join(map(str, o["actual_shape"])), _fmt(o["max_abs"], ".2e"), _fmt(o["max_rel"], ".2e"),
                  _fmt(o["cosine"], ".6f"), _allowed(o), "✅" if o["ok"] else f"❌ {o['reason']}")
    return t


def render_convert(result) -> None:
    m = result.manifest
    model = next(a for a in m["artifacts"] if a["role"] == "model")
    console.print(f"[bold]bundle[/] {result.bundle}  ·  target [bold]{m['target']['profile']}[/]  ·  precision "
                  f"[bold]{m['precision']}[/]  ·  {model['file']} ({_size(model['bytes'])})")
    exp = m["export"]
    console.print(f"exported with {exp['exporter']}, opset {exp['opset']}"
                  + (f" [dim](fallback: {exp['fallback_reason']})[/]" if exp["fallback_reason"] else ""))
    for c in m["checks"]:
        if c["kind"] in ("parity", "agreement"):
            console.print(_parity_table(c, f"{c['kind'].capitalize()}: {c['label']} ({c['samples']} samples)"))
            if c.get("top1_agreement") is not None:
                console.print(f"top-1 agreement with the source: {c['top1_agreement']:.2%}")
        elif c["kind"] == "accuracy":
            console.print(f"accuracy on {c['data']['path']} ({c['data']['count']} samples{_scored(c)}): source top-1 "
                          f"{c['source']['top1']:.2%}, artifact top-1 {c['artifact']['top1']:.2%}, "
                          f"drop {c['drop_points']:.2f} points")
            if c.get("compared") and c.get("max_drop_points") is not None:
                console.print(f"[dim]budget: {escape(c['compared'])}[/]")
        elif c["kind"] == "edgetpu-mapping":
            _edgetpu_table(c)
        elif c["kind"] == "imx500-memory":
            console.print(f"IMX500 memory report: {escape(c['summary'])}")
        elif c["kind"] == "ethos-u-npu-mapping":
            e = c["estimate"]
            console.print(f"Ethos-U ({c['accelerator_config']}, {c['system_config']}, {c['memory_mode']}): "
                          f"{c['npu_ops']} of {c['ops']} ops on the NPU ({c['npu_share_ops']:.0%}); "
                          f"{e['label']}: {e['cycles_total']:,} cycles = "
                          f"{e['inference_time_ms']:.4f} ms at {e['core_clock_mhz']:.0f} MHz, SRAM {e['sram_used_kib']:.1f} KiB, "
                          f"off-chip {e['off_chip_used_kib']:.1f} KiB")
            for op in c["cpu_operators"]:
                console.print(f"  [yellow]on the CPU:[/] {op}")
    fb = m.get("fallback")
    if fb and fb.get("precision") == "fp16":  # edgeconv/convert/fp16_fallback.py
        kept = ", ".join(f"{x['source'] or x['layer']} ({x['why']})" for x in fb["float_layers"]) or "none"
        console.print(f"[bold]fp16 fallback[/] ({'met' if fb['ok'] else '[red]missed[/]'} parity): "
                      f"{len(fb['float_layers'])} layer(s) kept in fp32 — {escape(kept)} [dim]({fb['mechanism']})[/]")
    elif fb:
        label = "NNCF accuracy control" if fb.get("mode") == "accuracy-control" else "int8 guard"
        console.print(_guard_line(label, fb))
    if model.get("float_ops"):
        console.print(f"[yellow]left in float ({('the ' + label) if fb else 'no int8 kernel'}):[/] "
                      f"{', '.join(model['float_ops'])}")
    build = model.get("device_build")
    if build and not build.get("built"):
        console.print(f"[yellow]not built here:[/] {build.get('reason') or build.get('how')}\n"
                      f"  then: {build.get('command') or 'edgeconv build BUNDLE'}")
    if model.get("host_emulation"):
        console.print(f"[dim]checks above ran as host emulation, not on the device: {model.get('host_emulation_note')}[/]")


def _scored(c: dict[str, Any]) -> str:
    """``, output 'logits' chosen by its name``: which output accuracy was computed on, and why."""
    return f", output '{escape(c['output'])}' chosen by {escape(c.get('output_chosen_by') or '?')}" if c.get("output") else ""


def _edgetpu_table(c: dict[str, Any]) -> None:
    t = Table(title="Edge TPU mapping (predicted from Coral's published rules)", title_justify="left")
    for col in ("operator", "count", "status"):
        t.add_column(col, justify="right" if col == "count" else "left")
    for r in c["table"]:
        t.add_row(r["op"], str(r["count"]), r["status"])
    console.print(t)
    split = c["split_at"]
    console.print(f"TPU share: {c['tpu_share_ops']:.0%} of ops, {c['tpu_share_macs']:.0%} of MACs"
                  + (f"; the TPU part ends at op {split['index']} ({split['op']}): {split['reason']}" if split else "; no split"))
    for finding in c.get("onnx_findings", []):
        console.print(f"  [yellow]ONNX graph:[/] {finding}")


def render_validation(r: dict[str, Any]) -> None:
    mo = r["measured_on"]
    where = mo.get("label") or mo["kind"]
    console.print(f"[bold]{r['bundle']}[/] · {r['target']} · {r['precision']} · measured on {mo['host']} ({where}), "
                  f"{mo['runtime']} {mo['version']}, threads {mo['threads']}")
    console.print(_parity_table(r["parity"], "Parity against the source model's reference outputs"))
    t = Table(title="Validation" + (f" · latency {where}" if mo["kind"] not in ("host", "device") else ""), title_justify="left")
    t.add_column("check")
    t.add_column("value", justify="right")
    t.add_column("budget", justify="right")
    t.add_column("ok")
    budgets = {b["name"]: b for b in r["budgets"]}
    t.add_row("parity", "all outputs within tolerance" if r["parity"]["ok"] else "FAILED", "",
              "✅" if r["parity"]["ok"] else "❌")
    if "accuracy" in r:
        a = r["accuracy"]
        src = a["source"]
        t.add_row("top-1 (artifact)", f"{a['artifact']['top1']:.2%}", "", "")
        if "top5" in a["artifact"]:
            t.add_row("top-5 (artifact)", f"{a['artifact']['top5']:.2%}", "", "")
        t.add_row("top-1 (source)", "unknown (pass --source)" if src is None else f"{src['top1']:.2%}", "", "")
        b = budgets.get("max_accuracy_drop_points")
        t.add_row("accuracy drop (points)", _fmt(a["drop_points"], ".2f"), "" if b is None else f"≤ {b['limit']}",
                  "" if b is None else ("✅" if b["ok"] else "❌"))
    if "outputs_on_data" in r:
        o = r["outputs_on_data"]
        t.add_row(f"outputs on {Path(o['data']['path']).name} ({o['data']['count']} items)",
                  "finite" if o["finite"] else "NaN or inf", "", "✅" if o["finite"] else "❌")
        if "top1_agreement" in o:
            t.add_row("top-1 agreement with the source", f"{o['top1_agreement']:.2%}", "", "")
        else:
            t.add_row("accuracy", "not measured (no labels)", "", "")
    if r.get("stream"):
        from edgeconv.streaming import stream_rows

        for row in stream_rows(r):
            t.add_row(*row)
    lat = r["latency"]
    b = budgets.get("max_latency_ms_p50")
    t.add_row(f"latency p50 (batch {lat['batch']})", f"{lat['p50_ms']:.3f} ms", "" if b is None else f"≤ {b['limit']} ms",
              "" if b is None else ("✅" if b["ok"] else "❌"))
    t.add_row("latency p90 / p99", f"{lat['p90_ms']:.3f} / {lat['p99_ms']:.3f} ms", "", "")
    t.add_row("mean ± std (min–max)",
              f"{lat['mean_ms']:.3f} ± {lat['std_ms']:.3f} ({lat['min_ms']:.3f}–{lat['max_ms']:.3f}) ms", "", "")
    t.add_row("throughput", f"{lat['throughput_items_s']:.0f} items/s", "", "")
    _stability_rows(t, lat)
    if r.get("throughput_async"):
        ta = r["throughput_async"]
        t.add_row("throughput (async queue)", f"{ta['items_per_s']:.0f} items/s with {ta['requests']} requests", "", "")
    cs = r["cold_start"]
    t.add_row("cold start (load + 1st)", f"{cs['load_ms']:.1f} + {cs['first_inference_ms']:.1f} ms", "", "")
    console.print(t)
    if (r.get("accuracy") or {}).get("output"):
        console.print(f"accuracy on output {escape(r['accuracy']['output'])}, chosen by "
                      f"{escape(r['accuracy'].get('output_chosen_by') or '?')}")
    _conditions_and_memory(r)
    for b in r["budgets"]:
        if b.get("compared"):
            console.print(f"[dim]{b['name']}: {escape(b['compared'])}[/]")
    console.print(f"{'[green]PASS[/]' if r['ok'] else '[red]FAIL[/]'} · {lat['runs']} timed runs after {lat['warmup']} "
                  f"warm-up · report: {r['report_file']}")


def _stability_rows(t: Table, lat: dict[str, Any]) -> None:
    """The latency's stability (edgeconv.core.stats.stability): verdict and reasons, the p50 interval, outliers."""
    st = lat.get("stability")
    if not st:
        return
    ci = st["intervals_ms"]["p50"]
    verdict = "stable" if st["verdict"] == "stable" else f"[red]UNSTABLE[/]: {escape('; '.join(st['reasons']))}"
    t.add_row("latency stability", verdict,
              f"CV ≤ {st['limits']['cv']:.0%}", "✅" if st["verdict"] == "stable" else "⚠")
    t.add_row(f"p50 {ci['confidence']:.0%} interval", "—" if ci["low"] is None or ci["high"] is None else
              f"{ci['low']:.3f}–{ci['high']:.3f} ms", f"± {st['limits']['p50_interval_half_width']:.0%}", "")
    across = (st.get("rounds") or {}).get("p50_interval_ms")
    if across:
        t.add_row("p50 interval across rounds", f"{across['low']:.3f}–{across['high']:.3f} ms",
                  f"{len(st['rounds']['p50_ms'])} rounds", "")
    t.add_row("CV · outliers · first run", f"{st['cv']:.1%} · {st['outliers']} ({st['outlier_fraction']:.1%}) · "
              + ("outlier" if st["first_run_outlier"] else "typical"), "", "")


def _conditions_and_memory(r: dict[str, Any]) -> None:
    """One line each: the conditions of the run (edgeconv.core.conditions) and the peak RSS per phase (core.memory)."""
    from edgeconv.core.conditions import summary

    if r.get("conditions"):
        console.print(f"[dim]conditions: {escape(summary(r['conditions']))}[/]")
    mem = r.get("memory")
    if mem:
        phases = ", ".join(f"{p['phase'].replace('_', ' ')} {p['peak_mb']:.0f}" for p in mem["phases"])
        console.print(f"[dim]peak RSS MB: {phases}; model file {mem['model_file_mb']:.1f} MB ({mem['method']})[/]")
        own = mem.get("runtime_own_figure") or {}
        if own.get("source"):
            console.print(f"[dim]runtime's own figure ({escape(own['source'])}): "
                          f"{escape(', '.join(f'{k} {v}' for k, v in own.items() if k != 'source'))}[/]")
    ld = r.get("load")
    if ld and ld.get("first_load_ms") is not None:
        later = "—" if ld.get("later_load_ms") is None else f"{ld['later_load_ms']:.1f} ms"
        console.print(f"[dim]model load: first {ld['first_load_ms']:.1f} ms"
                      f"{' (fresh process)' if ld['first_load_fresh_process'] else ''}, later {later}; "
                      f"{escape(ld['model_cache'])}[/]")


def render_profile(r: dict[str, Any]) -> None:
    mo = r["measured_on"]
    t = Table(title=f"{r['target']} · {r['precision']} · {mo.get('runtime')} {mo.get('version') or ''} · threads "
                    f"{mo.get('threads')} · {mo.get('label') or mo.get('kind')}", title_justify="left")
    for col in ("batch", "p50 ms", "p90 ms", "p99 ms", "per item ms", "items/s", "RSS Δ MB", "peak RSS MB", "vs batch 1"):
        t.add_column(col, justify="right")
    for row in r["rows"]:
        if "error" in row:
            t.add_row(str(row["batch"]), f"[red]cannot run: {row['error']}[/]", *[""] * 7)
            continue
        unstable = (row.get("stability") or {}).get("verdict") == "unstable"
        peak = "—" if row.get("peak_rss_mb") is None else (
            f"{'❌ ' if row.get('memory_ok') is False else ''}{row['peak_rss_mb']:.0f}")
        agree = "—" if row.get("max_abs_vs_batch1") is None else (
            f"{'⚠ ' if row['diverges'] else ''}max abs {row['max_abs_vs_batch1']:.1e}"
            + (f", top-1 {row['top1_agreement_vs_batch1']:.0%}" if row.get("top1_agreement_vs_batch1") is not None else ""))
        t.add_row(str(row["batch"]), f"{'⚠ ' if unstable else ''}{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}",
                  f"{row['p99_ms']:.3f}", f"{row['per_item_ms']:.3f}", f"{row['throughput_items_s']:.0f}",
                  f"{row['rss_delta_mb']:.1f}", peak, agree)
    console.print(t)
    for note in r["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    if r.get("unstable_batches"):
        console.print(f"[yellow]⚠ latency unstable at batch {r['unstable_batches']}[/] (the report's rows say why)")
    if r.get("over_memory_budget"):
        console.print(f"[red]peak RSS over {r['max_memory_mb']} MB at batch {r['over_memory_budget']}[/]")
    if r["knee"]:
        console.print(f"knee: batch {r['knee']['batch']} — {r['knee']['why']}")
    if r["best_under_budget"]:
        console.print(f"best under {r['budget_ms']} ms: {r['best_under_budget']['why']}")
    if r["divergent_batches"]:
        console.print(f"[red]outputs change with batch size at {r['divergent_batches']}[/] "
                      "(compared with batch 1 on the same items)")
    console.print(f"[dim]{r['method']} · report: {r['report_file']}[/]")


def _middle(text: str, width: int) -> str:
    """``text`` shortened in the middle to ``width`` characters (the start and the end of a layer name say the most)."""
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep - keep // 2] + "…" + text[len(text) - keep // 2:]


def render_profile_layers(r: dict[str, Any], top: int = 20) -> None:
    """``profile --layers``: the slowest layers, their share, the source module, and the sum against the end-to-end p50."""
    mo, lay = r["measured_on"], r["layers"]
    version = str(mo.get("version") or "").split("-")[0]  # OpenVINO's carries its build hash
    title = (f"{r['target']} · {r['precision']} · {mo.get('runtime')} {version} · threads {mo.get('threads')} · "
             f"batch {lay['batch']} · {mo.get('label') or mo.get('kind')}")
    columns = [("#", 0, "right"), ("layer", 0, "left"), ("op", 2, "left"), ("source", 1, "left"), ("p50 ms", 0, "right"),
               ("mean ms", 4, "right"), ("share", 0, "right"), ("cumulative", 3, "right")]
    rows, cum = [], 0.0
    shown = lay["rows"][: max(top, 0)]
    for i, row in enumerate(shown, 1):
        cum += row["share"]
        source = row.get("source") or "—"
        if row.get("source_class"):
            source += f" ({row['source_class']})"
        rows.append([str(i), escape(_middle(row["name"], 48)), escape(row.get("op") or "?"), escape(source),
                     f"{row['p50_ms']:.3f}", f"{row['mean_ms']:.3f}", f"{row['share']:.1%}", f"{cum:.1%}"])
    table, hidden = fitted_table(title, columns, rows)
    console.print(table)
    if hidden:
        console.print(f"[dim]left out to fit {console.width} columns: {', '.join(hidden)} (--json and --csv have all)[/]")
    rest = lay["rows"][len(shown):]
    if rest:
        console.print(f"[dim]{len(rest)} more layers: {sum(x['p50_ms'] for x in rest):.3f} ms, "
                      f"{sum(x['share'] for x in rest):.1%} (--top {lay['count']} shows all; --json and --csv have all)[/]")
    e2e, prof = lay["end_to_end"], lay.get("profiled")
    ratio = lay["sum_vs_end_to_end"]
    console.print(f"sum of layers [bold]{lay['sum_ms']:.3f} ms[/] vs end-to-end p50 [bold]{e2e['p50_ms']:.3f} ms[/]"
                  + (f" ({ratio:.0%} of it)" if ratio is not None else "")
                  + f" · {lay['count']} layers, p50 of each over {lay['runs']} runs after {lay['warmup']} warm-up")
    if prof:
        console.print(f"[dim]with the profiler on, end-to-end p50 {prof['p50_ms']:.3f} ms ({lay['profiler_overhead']:+.0%} "
                      "profiler overhead); the layer times come from those runs[/]")
    for note in r["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[dim]{lay['profiler']} · method and every layer in the report: {r.get('report_file')}[/]")


def fitted_table(title: str, columns: list[tuple[str, int, str]], rows: list[list[str]],
                 wide: bool = False) -> tuple[Table, list[str]]:
    """A table that fits the terminal without cutting a header to "…": columns ``(name, priority, justify)`` are
    dropped from the highest priority number down until every column's narrowest form (its longest word) fits.
    Returns the table and the names of the columns left out (``wide`` keeps them all)."""
    keep = list(range(len(columns)))

    def narrowest(i: int) -> int:
        words = columns[i][0].split() + [w for r in rows for w in str(r[i]).split()]
        return max((console.measure(w).maximum for w in words), default=1)

    def build(cols: list[int]) -> Table:
        t = Table(title=title, title_justify="left")
        for i in cols:
            # a column that wrapping cannot narrow is marked so: rich then narrows only those that can wrap
            widest = max([console.measure(columns[i][0]).maximum] + [console.measure(str(r[i])).maximum for r in rows])
            t.add_column(columns[i][0], justify=columns[i][2], min_width=narrowest(i), no_wrap=widest == narrowest(i))
        for r in rows:
            t.add_row(*[r[i] for i in cols])
        return t

    if not wide:
        for i in sorted(keep, key=lambda i: -columns[i][1]):
            if columns[i][1] == 0 or sum(narrowest(j) for j in keep) + 3 * len(keep) + 1 <= console.width:
                continue
            keep.remove(i)
    return build(keep), [columns[i][0] for i in range(len(columns)) if i not in keep]


def _print_fitted(t: Table, hidden: list[str]) -> None:
    console.print(t)
    if hidden:
        console.print(f"[dim]left out to fit {console.width} columns: {', '.join(hidden)} (--wide shows them; --json has all)[/]")


def render_compare(r: dict[str, Any], wide: bool = False) -> None:
    base = r["source_baseline"]
    title = f"{r['model']} on this machine" + (f" · baseline: {base['framework']} eager {base['p50_ms']:.3f} ms (p50, batch "
                                                f"{base.get('batch', 1)})" if base and base.get("p50_ms") else "")
    columns = [("target", 0, "left"), ("precision", 0, "left"), ("status", 0, "left"), ("size", 4, "right"),
               ("parity max abs", 3, "right"), ("top-1", 2, "right"), ("drop", 2, "right"), ("p50 ms", 1, "right"),
               ("items/s", 6, "right"), ("speed-up", 5, "right"), ("memory MB", 4, "right"), ("measured", 7, "left")]
    icons = {"ok": "✅", "check-failed": "❎", "failed": "❌"}
    rows = []
    for row in r["rows"]:
        status = icons.get(row.get("status"), "?") + (f" {row['reason']}" if row.get("reason") else "")
        if "p50_ms" not in row:
            rows.append([row["target"], row["precision"], status, *[""] * 9])
            continue
        rows.append([row["target"], row["precision"], status, _size(row["bytes"]), f"{row['parity_max_abs']:.1e}",
                     "—" if row["top1"] is None else f"{row['top1']:.2%}",
                     "—" if row["drop_points"] is None else f"{row['drop_points']:+.2f}",
                     f"{'⚠ ' if row.get('latency_stability') == 'unstable' else ''}{row['p50_ms']:.3f}",
                     f"{row['throughput_items_s']:.0f}",
                     f"{row['speedup_vs_source']:.1f}×" if row.get("speedup_vs_source") else "—",
                     "—" if row.get("memory_mb") is None else f"{row['memory_mb']:.0f}",
                     f"{row['runtime']} ({row.get('label') or row['measured']})"])
    _print_fitted(*fitted_table(title, columns, rows, wide))
    if r.get("interrupted"):
        console.print(f"[yellow]interrupted: {r.get('finished')} rows finished (shown)[/]")
    if base and base.get("how"):
        console.print(f"[dim]baseline: {escape(base['how'])}[/]")
    elif base and base.get("error"):
        console.print(f"[yellow]baseline not measured: {escape(base['error'])}[/]")
    console.print(f"[dim]{r['note']}[/]")
    if any(row.get("latency_stability") == "unstable" for row in r["rows"]):
        console.print("[dim]⚠ p50 unstable (the row's latency_unstable_why says why); memory MB: peak RSS above the process "
                      "before the model's load[/]")
    else:
        console.print("[dim]memory MB: peak RSS above the process before the model's load[/]")


def render_remote(r: dict[str, Any]) -> None:
    others = [d for d in r["devices"] if d.get("report") and "latency" not in d["report"]]
    for d in others:  # profile / build reports: the command's own rendering, per device
        rep = d["report"]
        console.print(f"[bold]{d['target']}[/] ({rep['device']['uname']})")
        if "rows" in rep:
            render_profile(rep)
        elif "layers" in rep:
            render_profile_layers(rep)
        else:
            console.print_json(data=rep.get("build", rep))
    if others and all(d.get("report") for d in r["devices"]):
        return
    t = Table(title=f"{r['bundle']} on devices", title_justify="left")
    for col in ("device", "ok", "parity", "top-1", "drop", "p50 ms", "p99 ms", "runtime", "device facts"):
        t.add_column(col, justify="right" if col in ("top-1", "drop", "p50 ms", "p99 ms") else "left")
    emulated: list[str] = []
    for d in r["devices"]:
        if "error" in d:
            t.add_row(d["target"], "❌", "see below", *[""] * 6)
            continue
        rep = d["report"]
        if "latency" not in rep:
            continue
        mo = rep["measured_on"]
        acc = rep.get("accuracy") or {}
        top1 = acc["artifact"]["top1"] if acc else None
        lat = rep["latency"]
        facts = f"{mo.get('host')} {mo.get('machine')} py{mo.get('python', '')} {rep['device'].get('power_mode') or ''}".strip()
        if mo.get("emulation"):  # detected on the device: its timing is this host's, under qemu
            emulated.append(d["target"])
        missed = [b["name"] for b in rep["budgets"] if not b["ok"]]
        verdict = "✅" if d["ok"] else "❎ " + ", ".join(missed or ["parity"])
        t.add_row(d["target"], verdict, "ok" if rep["parity"]["ok"] else "FAILED", "—" if top1 is None else f"{top1:.2%}",
                  "—" if acc.get("drop_points") is None else f"{acc['drop_points']:+.2f}",
                  f"{'⚠ ' if (lat.get('stability') or {}).get('verdict') == 'unstable' else ''}{lat['p50_ms']:.3f}",
                  f"{lat['p99_ms']:.3f}",
                  f"{mo.get('runtime')} {mo.get('version') or ''}", facts)
    if emulated:
        from edgeconv.core.machine import EMULATED_LABEL  # the label the device runner gives measured_on

        t.caption = f"latency of {', '.join(emulated)}: {EMULATED_LABEL}"
    console.print(t)
    for d in r["devices"]:
        if d.get("report"):
            rep = d["report"]
            for b in rep.get("budgets", []):
                if not b["ok"]:
                    why = escape(b["compared"]) if b.get("compared") else f"{b['value']:.4g} > {b['limit']}"
                    console.print(f"[red]❎[/] {d['target']}: budget {b['name']} missed: {why}", soft_wrap=True)
            if "parity" in rep and not rep["parity"]["ok"]:
                console.print(f"[red]❎[/] {d['target']}: parity failed: " + "; ".join(
                    f"{o['name']}: {o['reason']}" for o in rep["parity"]["outputs"] if not o["ok"]), soft_wrap=True)
            mo = rep.get("measured_on") or {}
            if mo.get("emulation"):
                console.print(f"[yellow]⚠[/] {d['target']}: latency {mo['kind']} ({'; '.join(mo['emulation']['evidence'])})",
                              soft_wrap=True, markup=True, highlight=False)
            cross = rep.get("cross_architecture")
            if cross:
                console.print(f"{d['target']}: {cross_architecture_line(cross)}", soft_wrap=True, highlight=False)
            console.print(f"[dim]{d['target']}: report {rep['report_file']} ({rep['device']['ran']})[/]", soft_wrap=True)
        else:
            console.print(f"[red]❌[/] {escape(d['error'])} [dim](exit {d.get('exit_code', 1)})[/]", soft_wrap=True)
            if d.get("details"):
                console.print(d["details"], markup=False, soft_wrap=True)


def cross_architecture_line(c: dict[str, Any]) -> str:
    """One line for a validate report's cross-architecture section (this machine's outputs vs the device's)."""
    if not c.get("compared"):
        return f"cross-architecture comparison not made: {c['reason']}"
    h, d = c["host"], c["device"]
    on = f"{c['samples']} items of {Path(c['data']['path']).name}" if c.get("data") else f"reference.npz ({c['samples']} items)"
    text = f"{d['machine']} vs {h['machine']} ({h['runtime']} {d.get('version') or ''} vs {h.get('version') or ''}) on {on}: "
    text += "max abs difference " + ("—" if c["max_abs"] is None else f"{c['max_abs']:.3g}")
    if c.get("top1_agreement") is not None:
        text += f", top-1 agreement {c['top1_agreement']:.2%}"
    if c.get("top1_points_difference") is not None:
        text += f", top-1 {d['top1']:.2%} there vs {h['top1']:.2%} here ({c['top1_points_difference']:+.2f} points)"
    return text


def render_inspect(info: dict[str, Any]) -> None:
    facts = [info["path"], info["format"]]
    if "opset" in info:
        facts += [f"opset {info['opset']}", f"{info['nodes']} nodes", f"{info['parameters']:,} parameters"]
    facts.append("MACs unknown" if info.get("macs") is None else f"{info['macs']:,} MACs")
    console.print(f"[bold]{facts[0]}[/] · " + " · ".join(facts[1:]))
    if info.get("macs_shapes"):
        console.print("[dim]MACs at " + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in info["macs_shapes"].items()) + "[/]")
    if info.get("macs_note"):
        console.print(f"[yellow]{escape(info['macs_note'])}[/]", soft_wrap=True)
        if info.get("macs_hint"):
            console.print(f"[dim]hint: {escape(info['macs_hint'])}[/]", soft_wrap=True)
    t = Table(title="Inputs and outputs", title_justify="left")
    for col in ("", "name", "shape", "dtype", "layout", "dynamic dims"):
        t.add_column(col)
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            shape = "x".join("?" if d is None else str(d) for d in s["shape"]) or "unknown"
            dyn = s.get("dynamic_dims", [i for i, d in enumerate(s["shape"]) if not isinstance(d, int)])
            t.add_row(kind[:-1], s["name"], shape, s["dtype"] or "unknown", s.get("layout") or "",
                      ", ".join(map(str, dyn)) or "none")
    console.print(t)
    if "ops" not in info:
        return
    ops = Table(title="Operators", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in info["ops"].items():
        ops.add_row(op, str(n))
    console.print(ops)
    if info["macs_uncounted_nodes"]:
        console.print(f"[dim]MACs not counted for {len(info['macs_uncounted_nodes'])} nodes with unknown shapes[/]")


def render_targets(rows: list[dict[str, Any]], wide: bool = False) -> None:
    """The device profiles grouped by family, one line each; where a family's artifacts run (a long note) is said once,
    below the table, with the install hints of what is missing here. ``wide``: every column on every row."""
    if wide:
        _targets_wide(rows)
        return
    t = Table(title="Device profiles (* the family's default: --target FAMILY)", title_justify="left", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, collapse_padding=True)
    for col in ("family", "target", "runtime", "precisions", "convert here", "runs"):  # what is missing: below the table
        t.add_column(col, no_wrap=True, max_width=20 if col == "convert here" else None, overflow="ellipsis")
    notes: dict[str, list[str]] = {}  # note -> the profiles it is about
    hints: dict[str, list[str]] = {}  # what is missing and how to install it -> the profiles
    families = list(dict.fromkeys(r["family"] for r in rows))
    for family in families:
        group = [r for r in rows if r["family"] == family]
        for i, r in enumerate(group):
            part = r.get("device_part") or "here"
            if part != "here":
                notes.setdefault(part, []).append(r["name"])
            if not r["available"] and r.get("install"):
                missing = ", ".join(_missing(r))
                hints.setdefault(f"missing {missing}: {'; '.join(r['install'])}", []).append(r["name"])
            runs = ("native" if r.get("runs_here", "native") == "native" else "emulated") + (
                "" if part == "here" else f" [{list(notes).index(part) + 1}]")
            t.add_row(family if i == 0 else "", r["name"] + (" *" if r["default_for_family"] else ""), r["runner"],
                      " ".join(r["precisions"]), _convert_here(r), runs)
        if family != families[-1]:
            t.add_section()
    console.print(t)
    for i, (note, names) in enumerate(notes.items(), 1):
        console.print(f"[{i}] {escape(_about(rows, names))}: {escape(note)}")
    for hint, names in hints.items():
        console.print(f"to convert for {escape(_about(rows, names))} here: {escape(hint)}")
    console.print("[dim]runs: native = runs here natively; emulated = emulated here (figures say \"host emulation\")[/]")
    console.print("[dim]--wide: backends, descriptions and notes on every row; --json: everything[/]")


def _about(rows: list[dict[str, Any]], names: list[str]) -> str:
    """``jetson, intel-gpu``: the families all of whose profiles are in ``names``, then the other profiles by name."""
    families = {r["family"]: {x["name"] for x in rows if x["family"] == r["family"]} for r in rows}
    whole = [f for f, members in families.items() if members <= set(names)]
    return ", ".join(whole + [n for n in names if not any(n in families[f] for f in whole)])


def _convert_here(r: dict[str, Any]) -> str:
    if r["available"]:
        return "✅"
    if r.get("backend_missing"):
        return f"❌ backend '{r['backend']}' not in this edgeconv"
    return f"❌ missing {', '.join(_missing(r))}"


def _missing(r: dict[str, Any]) -> list[str]:
    """What a profile lacks here: modules, tools, and its toolchain environment (``edgeconv toolchain install``)."""
    tc = r.get("toolchain") or {}
    return r["missing_modules"] + r["missing_tools"] + ([f"the {tc['name']} toolchain"] if tc.get("missing") else [])


def _targets_wide(rows: list[dict[str, Any]]) -> None:
    """Every column on every row, each row on one line however long."""
    t = Table(title="Device profiles", title_justify="left")
    for col in ("target", "family", "backend → runner", "precisions", "convert here", "device part", "description"):
        t.add_column(col, no_wrap=col == "target")
    for r in rows:
        status = _convert_here(r) + (f": {'; '.join(r['install'])}" if r.get("install") and not r["available"] else "")
        name = r["name"] + (" (default)" if r["default_for_family"] else "")
        t.add_row(name, r["family"], f"{r['backend']} → {r['runner']}", ", ".join(r["precisions"]), status,
                  r.get("device_part", ""), r.get("description") or "")
    # long lines, as asked: a console as wide as the table's widest row (Console.print caps the width at the terminal's)
    widest = console.measure(t, options=console.options.update_width(10_000)).maximum
    Console(highlight=False, file=console.file, width=max(console.width, widest)).print(t)


def _compress_figure(v, kind: str = "int") -> str:
    if v is None:
        return "-"
    if kind == "ms":
        return f"{v:.3f} ms"
    if kind == "pct":
        return f"{v * 100:.2f}%"
    if kind == "bytes":
        return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.1f} kB"
    return f"{v:,}"


def _compress_table(report: dict[str, Any]) -> Table:
    b, a, r = report["before"], report["after"], report["ratios"]
    num = _compress_figure
    t = Table(title=f"edgeconv compress · {Path(report['source']['path']).name} → {Path(report['output']['path']).name}",
              title_justify="left")
    for col in ("", "before", "after", "after / before"):
        t.add_column(col, justify="right" if col else "left")
    rows = [("parameters", "parameters", "int"), ("non-zero parameters", "nonzero_parameters", "int"), ("MACs", "macs", "int"),
            ("torch.export .pt2 size", "pt2_bytes", "bytes"), ("int8 ONNX, zipped", "int8_zip_bytes", "bytes"),
            ("ORT fp32 p50", "p50_ms", "ms")]
    for label, key, kind in rows:
        ratio = r.get(key)
        t.add_row(label, num(b.get(key), kind), num(a.get(key), kind), f"{ratio:.3f}×" if ratio is not None else "-")
    if b.get("top1") is not None:
        drop = r["top1_drop_points"]
        t.add_row(f"top-1 on {Path(report['data']['path']).name}", num(b["top1"], "pct"), num(a["top1"], "pct"),
                  (f"{drop:.2f} points lost" if drop > 0 else f"{-drop:.2f} points gained"))
    return t


def _compress_method_line(m: dict[str, Any]) -> str | None:
    if m["method"] == "prune-channels":
        return (f"prune-channels {m['ratio']:g}: {m['groups']} channel groups pruned; layers kept whole (outputs, too narrow): "
                f"{', '.join(m['layers_kept_whole']) or '-'}; widths kept in multiples of {m['round_to'] or 1} "
                f"[dim]({m['library']})[/]")
    if m["method"] == "low-rank":
        return f"low-rank ({m['mode']}): " + ", ".join(f"{d['layer']} {d['shape'][0]}x{d['shape'][1]} → rank {d['rank']} "
                                                       f"({d['energy_kept']:.0%} energy)" for d in m["layers"])
    if m["method"] == "sparsity":
        return f"sparsity: {m['achieved']:.3f} of conv/Linear weights are zero (target {m['target']:g})"
    return None


def render_compress(report: dict[str, Any]) -> None:
    """``edgeconv compress``: the before/after table, what each method did, the notes (``--json`` prints the report)."""
    console.print(_compress_table(report))
    for m in report["methods"]:
        line = _compress_method_line(m)
        if line is not None:
            console.print(line)
    ft = report["finetune"]
    if ft:
        last = ft["history"][-1]
        console.print(f"fine-tuned {ft['epochs']} epochs on {Path(ft['data']['path']).name} (lr {ft['lr']:g}, batch "
                      f"{ft['batch_size']}, seed {ft['seed']}): last loss {last['loss']:.4f}, "
                      f"train top-1 {last['train_top1']:.1%}")
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[dim]latency: {report['latency']['method']}[/]")
    console.print(f"wrote {report['output']['path']} (convert it like any other model: edgeconv convert "
                  f"{report['output']['path']} --target …)")


def _guard_line(label: str, fb: dict[str, Any]) -> str:
    """The int8 guard's (or NNCF's accuracy control's) outcome in one line: its goal, what it kept, the metric before and
    after, and the cost against full int8."""
    cost = fb["cost"]
    goal = fb.get("goal") or "accuracy"
    target = f"--max-accuracy-drop {fb['max_accuracy_drop']}" if goal == "accuracy" else goal
    layers = ", ".join(f"{x['source'] or x['layer']}" + (f" ({x['op']})" if x.get("op") else "") for x in fb["float_layers"])
    parts = [f"kept {fb['kept']['label']}"] if fb.get("kept") else []
    if layers or not parts:
        parts.append(f"{len(fb['float_layers'])} layer(s) kept in float — {layers}")
    score = fb.get("score") or {"metric": "drop_points", "before": fb["drop_before"], "after": fb["drop_after"]}
    unit = "points" if score["metric"] == "drop_points" else "× the tolerance"
    return (f"[bold]{label}[/] ({'met' if fb['ok'] else '[red]missed[/]'} {target}): {escape('; '.join(parts))}; "
            f"{'drop' if score['metric'] == 'drop_points' else 'worst error'} {score['before']:.2f} → {score['after']:.2f} "
            f"{unit}; cost vs full int8: {cost['bytes']['delta']:+,} bytes, p50 {cost['p50_ms']['full_int8']:.3f} → "
            f"{cost['p50_ms']['with_float_layers']:.3f} ms (x{cost['p50_ms']['ratio']:.2f}, {cost['method']})")
