"""``edgeconv profile BUNDLE``: latency and throughput per batch size, the knee, the best batch under a latency
budget, and whether outputs change with the batch. Same statistics as ``validate``; talks only to runners. The
measuring, and which batch sizes an artifact can be swept over, are the core's ``execute_profile`` (the device runner's
too); the knee and the best batch are worked out here from its rows, wherever they were measured.

``edgeconv profile BUNDLE --layers``: time per layer from the runtime's own profiler (ONNX Runtime's profiling trace,
OpenVINO's performance counters), each layer's share, the PyTorch module it came from where the ONNX graph says, and
the sum of the layers against the end-to-end p50 measured with the profiler off. The measuring is the core's
``execute_layers`` (the same code on a device); naming the layers after the source is done here, from the ONNX graph.
See docs/architecture.md."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.bundle import Bundle, write_json
from edgeconv.core.artifact import artifact_to_run, runner_options
from edgeconv.core.layers import execute_layers
from edgeconv.core.request import complete_request
from edgeconv.core.sweep import default_batch_sizes, execute_profile
from edgeconv.errors import BadInput
from edgeconv.progress import Steps
from edgeconv.runners import open_runner

KNEE_GAIN = 0.10  # a doubling that adds less throughput than this is past the knee
LAYERS_AGREE = 0.15  # --layers: a sum of the layers further than this from the end-to-end p50 gets a note saying why

__all__ = ["ProfileRequest", "best_under_budget", "default_batch_sizes", "device_profile_report", "knee", "layers_report",
           "plot", "profile", "sweep_report"]


@dataclass
class ProfileRequest:
    bundle: Path
    batch_sizes: list[int] | None = None
    threads: int | None = None
    runs: int = 50
    warmup: int = 5
    min_time_s: float | None = None
    budget_ms: float | None = None
    plot: Path | None = None
    csv: Path | None = None
    report: Path | None = None
    layers: bool = False  # per-layer times from the runtime's profiler (one batch size) instead of the sweep
    where: str = "host"  # the request's "where": "device" when edgeconv runs it on a device for a host
    max_memory_mb: float | None = None  # budget: each batch size's peak RSS (exit 1 when one exceeds it)


def knee(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest batch from which no larger batch gains KNEE_GAIN or more throughput per doubling.

    Comparing with every larger batch, not just the next one, keeps one noisy point from ending the sweep early;
    the gain is per doubling so that batches 1, 2, 4 … and uneven lists are judged alike.
    """
    ok = [r for r in rows if r.get("throughput_items_s")]
    if not ok:
        return None
    for i, a in enumerate(ok):
        later = ok[i + 1 :]
        if not later:
            return {"batch": a["batch"], "why": f"throughput grows ≥ {KNEE_GAIN:.0%} per doubling up to batch {a['batch']}, "
                                                "the largest measured"}
        gains = [((b["throughput_items_s"] / a["throughput_items_s"]) ** (1 / np.log2(b["batch"] / a["batch"])) - 1, b)
                 for b in later]
        gain, top = max(gains, key=lambda g: g[0])
        if gain < KNEE_GAIN:
            return {"batch": a["batch"], "why": f"no larger batch gains {KNEE_GAIN:.0%} throughput per doubling (at most "
                                              f"{gain:+.0%}, batch {top['batch']})"}
    return None


def best_under_budget(rows: list[dict[str, Any]], budget_ms: float | None) -> dict[str, Any] | None:
    if budget_ms is None:
        return None
    fits = [r for r in rows if r.get("p99_ms") is not None and r["p99_ms"] <= budget_ms]
    if not fits:
        fastest = min((r for r in rows if r.get("p99_ms") is not None), key=lambda r: r["p99_ms"], default=None)
        return {"batch": None, "why": f"no batch size keeps p99 within {budget_ms} ms"
                + (f" (batch {fastest['batch']} is closest at {fastest['p99_ms']:.2f} ms)" if fastest else "")}
    best = max(fits, key=lambda r: r["throughput_items_s"])
    return {"batch": best["batch"], "why": f"batch {best['batch']} gives the most throughput "
                                           f"({best['throughput_items_s']:.0f} items/s) "
                                           f"with p99 {best['p99_ms']:.2f} ms ≤ {budget_ms} ms"}


def _open(req: ProfileRequest, request: dict[str, Any]) -> tuple[Bundle, dict[str, Any], Any]:
    """The bundle, the artifact this machine runs (the core's choice, as validate's and the device's) and its runner."""
    bundle = Bundle.open(req.bundle)
    art, options = artifact_to_run(bundle.manifest)
    options = runner_options(art, options, request)
    return bundle, art, open_runner(art["runner"], bundle.path / art["file"], threads=req.threads, options=options)


def _request(req: ProfileRequest) -> dict[str, Any]:
    return complete_request({"command": "profile", "batch_sizes": req.batch_sizes, "runs": req.runs, "warmup": req.warmup,
                             "threads": req.threads, "min_time_s": req.min_time_s, "budget_ms": req.budget_ms,
                             "layers": req.layers, "where": req.where, "max_memory_mb": req.max_memory_mb})


def profile(req: ProfileRequest, steps: Steps | None = None) -> dict[str, Any]:
    """The core's sweep (``execute_profile``, the device runner's too) on edgeconv's runner, and the knee and the best
    batch under the budget worked out from its rows."""
    steps = steps or Steps()
    if req.runs < 1:
        raise BadInput("--runs must be ≥ 1")
    if req.layers:
        return profile_layers(req, steps)
    request = _request(req)
    bundle, art, runner = _open(req, request)
    with runner:
        result = execute_profile(request, str(bundle.path), bundle.manifest, art, runner, steps.step)
    report = sweep_report(bundle, result, "")
    dest = req.report or bundle.path / "profile.json"
    write_json(dest, report)
    report["report_file"] = str(dest)
    if req.csv:
        _write_csv(req.csv, report["rows"])
    if req.plot:
        plot(report, req.plot)
    return report


def sweep_report(bundle: Bundle, result: dict[str, Any], where: str) -> dict[str, Any]:
    """The profile report from the core's sweep result (``execute_profile``), measured here or on a device (``where``
    says so in the method): the knee and the best batch under the budget are worked out where the report is made."""
    m, r = bundle.manifest, result["request"]
    rows = result["sweep"]["rows"]
    method = (f"per batch: {r['warmup']} warm-up, ≥ {r['runs']} timed runs"
              + (f" and ≥ {r['min_time_s']} s" if r.get("min_time_s") else "") + f"; {result['sweep']['method']}{where}")
    return {
        "bundle": str(bundle.path), "target": m["target"]["profile"], "precision": m["precision"], "artifact": result["artifact"],
        "measured_on": result["measured_on"], "method": method, "rows": rows, "knee": knee(rows), "budget_ms": r.get("budget_ms"),
        "best_under_budget": best_under_budget(rows, r.get("budget_ms")), "notes": result["sweep"]["notes"],
        "divergent_batches": [row["batch"] for row in rows if row.get("diverges")],
        **memory_budget_rows(rows, r.get("max_memory_mb")),
    }


def memory_budget_rows(rows: list[dict[str, Any]], limit_mb: float | None) -> dict[str, Any]:
    """``--max-memory-mb`` over a sweep: each batch size's peak RSS against the limit (the row's ``memory_ok``); the
    report's ``ok`` is false when one exceeds it, and ``unstable_batches`` lists the rows whose latency is unstable."""
    over = []
    for row in rows:
        if limit_mb is not None and row.get("peak_rss_mb") is not None:
            row["memory_ok"] = row["peak_rss_mb"] <= limit_mb
            if not row["memory_ok"]:
                over.append(row["batch"])
    return {"max_memory_mb": limit_mb, "over_memory_budget": over, "ok": not over,
            "unstable_batches": [row["batch"] for row in rows if (row.get("stability") or {}).get("verdict") == "unstable"]}


def device_profile_report(bundle: Bundle, report: dict[str, Any]) -> dict[str, Any]:
    """A profile report as the bundle's device runner returns it (a sweep's rows, or per-layer times), finished here: the
    knee and the best batch under the budget, or the layers' source names."""
    if "layers" in report:
        art = next((a for a in bundle.manifest["artifacts"] if a["file"] == report["artifact"]),
                   {"file": report["artifact"], "runner": report["runner"]})
        return layers_report(bundle, art, report, "; measured by the bundle's device runner")
    return sweep_report(bundle, report, "; measured by the bundle's device runner")


# -- per-layer times ---------------------------------------------------------------------------------------------------
def profile_layers(req: ProfileRequest, steps: Steps) -> dict[str, Any]:
    """``profile --layers`` here: the core's ``execute_layers`` on edgeconv's runner for the bundle, then the layers named
    after the source. A runtime without a per-layer profiler is refused (exit 2) with the reason."""
    options = (("--min-time", req.min_time_s), ("--budget-ms", req.budget_ms), ("--plot", req.plot))
    given = [flag for flag, v in options if v is not None]
    if given:
        raise BadInput(f"--layers times the layers of one batch size; it does not take {', '.join(given)}")
    if req.batch_sizes and len(req.batch_sizes) != 1:
        raise BadInput(f"--layers profiles one batch size; --batch-sizes gave {','.join(map(str, req.batch_sizes))}")
    request = _request(req)
    bundle, art, runner = _open(req, request)
    with runner:
        result = execute_layers(request, str(bundle.path), bundle.manifest, art, runner, steps.step)
    report = layers_report(bundle, art, result, "")
    dest = req.report or bundle.path / "profile_layers.json"
    write_json(dest, report)
    report["report_file"] = str(dest)
    if req.csv:
        _write_layers_csv(req.csv, report["layers"]["rows"])
    return report


def layers_report(bundle: Bundle, art: dict[str, Any], result: dict[str, Any], where: str) -> dict[str, Any]:
    """The per-layer report from ``execute_layers``' result, measured here or on a device: each row gets the ONNX node
    it maps to and, where the graph records it, the PyTorch module path it came from."""
    m = bundle.manifest
    layers = result["layers"]
    names = SourceNames.for_bundle(bundle, art)
    mapped = 0
    for row in layers["rows"]:
        row.update(names.lookup(row["name"], row["op"]) if names else {"onnx_node": None, "source": None})
        mapped += row["source"] is not None
    notes = list(result.get("notes") or [])
    if names is None:
        notes.append("no ONNX graph in the bundle to map the runtime's layer names to source names")
    elif not mapped:
        notes.append(f"the ONNX graph records no source module for these layers ({names.why_none})")
    if layers.get("not_executed"):
        notes.append(f"{layers['not_executed']} more nodes of the compiled graph did not run on their own (fused into a "
                     "neighbour or optimised out): their time is inside the layers listed")
    over = layers.get("counters_over_wall") or {}
    if over.get("runs"):
        notes.append(f"in {over['runs']} of {over['of']} profiled runs the runtime's node times add up to more than the wall "
                     f"time of that same inference (up to {over['worst_ratio']:.1f}x, most in {over['worst_layer']}): its "
                     "counters are not a breakdown of those runs, so do not read the layer times, that layer's above all, "
                     "as where the time goes; rerun on a quiet machine")
    ratio = layers.get("sum_vs_end_to_end")
    if ratio is not None and abs(ratio - 1) > LAYERS_AGREE:
        notes.append(f"the layers add up to {ratio:.0%} of the end-to-end p50: " + (
            "each layer's time carries the profiler's own cost per node and its microsecond timestamps, which weigh on "
            "layers this short" if ratio > 1 else
            "time outside the layers (copying inputs and outputs, the runtime's work between nodes) is in no layer"))
    if art.get("host_emulation"):
        notes.append("host emulation: these are ONNX Runtime's layer times on this machine, not the device runtime's "
                     "(TensorRT's per-layer profile needs the device)")
    mo = result["measured_on"]
    return {"bundle": str(bundle.path), "target": m["target"]["profile"], "precision": m["precision"],
            "artifact": result["artifact"],
            "runner": result.get("runner", art.get("runner")), "measured_on": mo, "layers": layers,
            "method": f"{layers['method']}; {layers['profiler']}{where}", "notes": notes, "request": result.get("request")}


# Runtime op types that stand for an ONNX op (after the runtime's fusions), to find the ONNX node a layer is.
_OP_ALIASES = {"FusedConv": "Conv", "NchwcConv": "Conv", "Convolution": "Conv", "GroupConvolution": "Conv", "FusedGemm": "Gemm",
               "FullyConnected": "Gemm", "QLinearConv": "Conv", "ConvolutionBackpropData": "ConvTranspose",
               "FusedMatMul": "MatMul", "QLinearMatMul": "MatMul", "Pooling": "MaxPool", "NchwcMaxPool": "MaxPool"}
_RUNTIME_SUFFIXES = re.compile(r"(_nchwc|/WithoutBiases|/fq_weights_\d+|_token_\d+)+$")


class SourceNames:
    """Runtime layer names → the ONNX node they come from → the name the user wrote, as ``edgeconv debug`` names it.

    A runtime names a layer after an ONNX node (``/features/0/0/Conv``), after the tensor it writes (ONNX Runtime's
    NCHWc convolutions: ``/features/0/2/Clip_output_0_nchwc``), with a prefix or suffix (``fused node_linear``,
    ``Conv__235/WithoutBiases``), or after a fused activation. The node is found by name, then by the tensor it writes,
    then by shortening an OpenVINO-style ``a/b/c`` name; when its op is not the layer's (a Conv+Clip named after the
    Clip), the producer chain is followed up to the node of the layer's own op. The source name is the debugger's
    (:func:`edgeconv.debug.graph.source_name`: the torch exporter's ``pkg.torch.onnx.name_scopes``, the weight's
    parameter name, a TorchScript-exporter scope, a Keras layer)."""

    def __init__(self, graph, framework: str | None):
        self.nodes = {n.name: n for n in graph.node if n.name}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.initializers = {i.name for i in graph.initializer}
        self.framework = framework or ""
        self.why_none = f"the {self.framework or 'source'} exporter recorded no module or layer names in the graph"

    @classmethod
    def for_bundle(cls, bundle: Bundle, art: dict[str, Any]) -> SourceNames | None:
        path = bundle.path / art["file"] if art["file"].endswith(".onnx") else None
        if path is None:
            canonical = bundle.artifact("canonical-onnx")
            path = bundle.path / canonical["file"] if canonical else None
        if path is None or not path.exists():
            return None
        try:
            import onnx
        except ImportError:
            return None
        model = onnx.load(str(path), load_external_data=False)
        return cls(model.graph, bundle.manifest.get("source", {}).get("framework"))

    def _find(self, name: str):
        bare = re.sub(r"^fused ", "", name)
        candidates = [name, bare, _RUNTIME_SUFFIXES.sub("", bare)]
        parts = candidates[-1].split("/")
        candidates += ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
        for c in candidates:
            for table, key in ((self.nodes, c), (self.producer, c), (self.producer, c + ":0")):
                if key in table:
                    return table[key]
        return None

    def _anchor(self, node, op: str | None):
        want = _OP_ALIASES.get(op or "", op)
        cur = node
        for _ in range(4):
            if cur.op_type == want or not want:
                return cur
            up = self.producer.get(cur.input[0]) if cur.input else None
            if up is None:
                break
            cur = up
        return node

    def lookup(self, name: str, op: str | None) -> dict[str, Any]:
        from edgeconv.debug.graph import source_name

        node = self._find(name)
        if node is None:
            return {"onnx_node": None, "source": None}
        found, node = node, self._anchor(node, op)
        source, cls = source_name(node, self.framework, self.initializers)
        if source is None and found is not node:  # e.g. tf2onnx's Conv__235 is nameless; its fused Relu6 names the layer
            source, cls = source_name(found, self.framework, self.initializers)
        out: dict[str, Any] = {"onnx_node": node.name, "source": source}
        if cls:
            out["source_class"] = cls
        return out


def _write_layers_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["name", "op", "exec_type", "onnx_node", "source", "p50_ms", "mean_ms", "min_ms", "max_ms", "share", "runs", "order"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["batch", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "per_item_ms", "throughput_items_s", "rss_delta_mb",
            "peak_rss_mb", "memory_ok",
            "max_abs_vs_batch1", "top1_agreement_vs_batch1", "diverges", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def plot(report: dict[str, Any], path: Path) -> None:
    from edgeconv.lazy import require

    matplotlib = require("matplotlib", why="to draw --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "p50_ms" in r]
    b = [r["batch"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.plot(b, [r["throughput_items_s"] for r in rows], "o-", color="tab:blue", label="throughput (items/s)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(b, [str(x) for x in b])
    ax.set_xlabel("batch size")
    ax.set_ylabel("throughput (items/s)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(b, [r["p50_ms"] for r in rows], "s--", color="tab:orange", label="p50 latency per batch (ms)")
    ax2.plot(b, [r["p99_ms"] for r in rows], "^:", color="tab:red", label="p99 latency per batch (ms)")
    ax2.set_ylabel("latency per batch (ms)", color="tab:red")
    if report["knee"]:
        kb = report["knee"]["batch"]
        ax.axvline(kb, color="gray", linestyle="--", linewidth=1)
        lo, hi = ax.get_ylim()
        ax.annotate(f"knee: batch {kb} ", (kb, lo + 0.5 * (hi - lo)), ha="right" if kb == b[-1] else "left", fontsize=8,
                    color="gray")
    if report["budget_ms"] is not None:
        ax2.axhline(report["budget_ms"], color="tab:red", linewidth=0.8, alpha=0.6)
        ax2.annotate(f"budget {report['budget_ms']} ms (p99)", (b[-1], report["budget_ms"]), fontsize=8, va="bottom", ha="right",
                     color="tab:red")
    mo = report["measured_on"]
    ax.set_title(f"{Path(report['bundle']).name}: {report['target']} {report['precision']} · {mo.get('runtime')} "
                 f"{mo.get('version') or ''} · threads {mo.get('threads')} · {mo.get('kind')}", fontsize=9)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(lines, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
