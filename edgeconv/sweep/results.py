"""A sweep's results: ``results.json`` (one record per cell, rewritten atomically after every cell, so an interrupted
or killed sweep leaves a file that parses), each cell's reports under ``cells/``, and the generated ``matrix.md``
and ``results.html``. See docs/architecture.md, "Sweeps"."""

from __future__ import annotations

import html
import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

from edgeconv.atomic import write_text_atomic
from edgeconv.errors import BadInput

SCHEMA = 1
MARK = {"passed": "✅", "failed": "❌", "refused": "⛔", "unavailable": "➖", "conversion-failed": "💥",
        "internal-error": "🐞", "timeout": "⏱", "crashed": "💥", "lost": "❓"}


def machine() -> dict[str, Any]:
    """What the latency figures were measured on: the CPU (model name, or family/model where a VM hides it)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            info.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    ident = " ".join(f"{k} {info[k]}" for k in ("cpu family", "model") if k in info)
    return {"cpu": f"{cpu} ({ident})" if ident else cpu, "arch": platform.machine(), "cores": os.cpu_count(),
            "system": platform.system()}


def slug(cell_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", cell_id)


class Results:
    """``RUN_DIR/results.json``: the records by cell, kept in plan order."""

    def __init__(self, run_dir: Path, code: str) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "results.json"
        self.code = code
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self.records = {r["cell_id"]: r for r in read_results(self.path)["cells"]}

    def done(self, cell_id: str, key: str) -> bool:
        """The cell ran to an end at the same inputs, options and edgeconv code."""
        r = self.records.get(cell_id)
        return bool(r and r.get("key") == key and r.get("status") not in (None, "lost", "interrupted"))

    def add(self, rec: dict[str, Any]) -> None:
        reports = rec.pop("reports", {}) or {}
        folder = self.run_dir / "cells" / slug(rec["cell_id"])
        folder.mkdir(parents=True, exist_ok=True)
        rec["report_files"] = {}
        for name, doc in reports.items():
            if doc is not None:
                write_text_atomic(folder / f"{name}.json", json.dumps(doc, indent=2, default=str) + "\n")
                rec["report_files"][name] = str((folder / f"{name}.json").relative_to(self.run_dir))
        self.records[rec["cell_id"]] = rec

    def save(self, order: list[str]) -> None:
        ranked = {cid: i for i, cid in enumerate(order)}
        cells = sorted(self.records.values(), key=lambda r: ranked.get(r["cell_id"], len(ranked)))
        from edgeconv import __version__

        doc = {"schema": SCHEMA, "edgeconv": {"version": __version__, "code": self.code}, "machine": machine(),
               "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cells": cells}
        write_text_atomic(self.path, json.dumps(doc, indent=2, default=str) + "\n")
        write_text_atomic(self.run_dir / "matrix.md", matrix_md(cells))
        write_text_atomic(self.run_dir / "results.html", results_html(doc))


def read_results(path: Path) -> dict[str, Any]:
    """A results.json, checked: it parses, its schema is this one, its cells have ids."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} is not a sweep's results.json: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("cells"), list) \
            or not all(isinstance(c, dict) and "cell_id" in c for c in doc["cells"]):
        raise BadInput(f"{path} is not a results.json of this edgeconv (schema {SCHEMA})")
    return doc


def _column(rec: dict[str, Any]) -> str:
    at = f"@{rec['device']}" if rec.get("device") else ""
    return f"{rec['target']}{at} {rec.get('requested_precision') or ''}".strip()  # the plan's columns, not the outcomes


def _cell_text(rec: dict[str, Any]) -> str:
    mark = MARK.get(rec.get("status") or "", "?")
    if rec.get("status") != "passed":
        return f"{mark} {rec.get('status')}"
    p50 = (rec.get("latency") or {}).get("p50_ms")
    return f"{mark} {p50:.3g} ms" if isinstance(p50, int | float) else mark


def matrix_md(cells: list[dict[str, Any]]) -> str:
    """Models as rows, target/precision as columns; every cell that did not pass has its one-line reason below."""
    columns = list(dict.fromkeys(_column(r) for r in cells))
    models = list(dict.fromkeys(r["model"] for r in cells))
    by = {(r["model"], _column(r)): r for r in cells}
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for m in models:
        row = [_cell_text(by[(m, c)]) if (m, c) in by else "" for c in columns]
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    notes = [f"- {r['cell_id']}: {r.get('status')} at {r.get('stage')}: {r.get('reason')}" for r in cells
             if r.get("status") != "passed"]
    legend = ", ".join(f"{v} {k}" for k, v in MARK.items())
    out = lines + ["", f"Passed cells show validate's p50 latency. {legend}."]
    return "\n".join(out + ([""] + notes if notes else [])) + "\n"


def results_html(doc: dict[str, Any]) -> str:
    """The matrix and, per cell, its record, on one page."""
    cells = doc["cells"]
    rows = "".join(f"<tr><td>{html.escape(r['cell_id'])}</td><td>{html.escape(_cell_text(r))}</td>"
                   f"<td>{html.escape(str(r.get('reason') or ''))}</td><td><details><summary>record</summary><pre>"
                   f"{html.escape(json.dumps(r, indent=2, default=str))}</pre></details></td></tr>" for r in cells)
    head = html.escape(f"edgeconv {doc['edgeconv']['version']} on {doc['machine']['cpu']}, {doc['updated_utc']}")
    return (f"<!doctype html><meta charset=utf-8><title>edgeconv sweep</title><h1>edgeconv sweep</h1><p>{head}</p>"
            f"<table border=1 cellpadding=4><tr><th>cell</th><th>result</th><th>reason</th><th>details</th></tr>{rows}"
            "</table>\n")
