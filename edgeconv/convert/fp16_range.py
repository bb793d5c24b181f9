"""The fp16 range check, one convert step for every fp16 conversion, before anything is built: the fp32 canonical graph
runs on the reference inputs, the calibration samples and ``--data`` (up to RANGE_SAMPLES of it) with every tensor kept
(edgeconv/debug/capture.py), and each tensor's absolute maximum and share of non-zero values below fp16's smallest
normal are recorded, weights included. A layer (edgeconv/debug/graph.py: a computing node and the value-preserving nodes
after it, named by the source's module path or Keras layer) whose values pass 65504 would overflow to inf in fp16; one
whose values are mostly below 2**-14 would underflow away (subnormals, then zero).

The findings are printed before the build and recorded as the ``fp16-range`` check of the manifest. An overflow left in
fp16 fails the check: the host may compute an fp16 artifact in fp32 (OpenVINO's CPU plugin here, TFLite's fp16 weights,
the Jetson host preview), the device will not.

With ``--fallback auto`` the flagged layers, and the layers that read an overflowing tensor, are kept in fp32 by each
backend's own mechanism (``TargetContext.float_layers``); edgeconv/convert/fp16_fallback.py then adds the layers
``edgeconv debug`` ranks worst while parity still misses. See docs/architecture.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.convert.state import ConvertState
from edgeconv.errors import PreflightError
from edgeconv.export_cache import layer_names

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14
UNDERFLOW_SHARE = 0.5  # a tensor with at least this share of its non-zero values below the smallest normal underflows
RANGE_SAMPLES = 64  # of the calibration samples and of --data each; the reference samples are all used
CHUNK = 8  # feeds run at a time (every tensor of the graph is kept for them): ranges merge across chunks
FLAGGED_KEYS = ("layer", "source", "source_class", "op", "tensor", "abs_max", "below_normal_share", "problem")
# why a backend without ``Target.fp16_float_layers`` cannot keep one layer in fp32 (every fp16 target here can)
NO_FP16_FALLBACK: dict[str, str] = {}


def value_range(a: np.ndarray, into: dict[str, float] | None = None) -> dict[str, float]:
    """Absolute maximum (NaN counts as overflow) and the share of non-zero values below fp16's smallest normal, merged
    into ``into`` (the same tensor's range on earlier samples) when given."""
    a = np.abs(np.asarray(a, dtype=np.float64)).reshape(-1)
    top = (float("inf") if np.isnan(a).any() else float(a.max())) if a.size else 0.0
    nonzero, below = int((a > 0).sum()), int(((a > 0) & (a < FP16_MIN_NORMAL)).sum())
    if into is not None:
        top, nonzero, below = max(top, into["abs_max"]), nonzero + into["nonzero"], below + into["below_normal"]
    return {"abs_max": top, "below_normal_share": below / nonzero if nonzero else 0.0, "nonzero": nonzero,
            "below_normal": below}


def problem_of(r: dict[str, float]) -> str | None:
    if not r["abs_max"] <= FP16_MAX:
        return "overflow"
    if r["below_normal_share"] >= UNDERFLOW_SHARE:
        return "underflow"
    return None


def _feeds(st: ConvertState) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """The inputs the check runs on, one feed per batch of the model's batch size, and where they came from."""
    step = st.batch or 1
    sources = [(st.feed, f"reference ({st.feed_origin})")]
    if st.calib_samples:
        calib = st.calib_samples[:RANGE_SAMPLES]
        sources.append(({k: np.concatenate([c[k] for c in calib]) for k in calib[0]}, "calibration"))
    if st.data is not None:
        sources.append(({k: v[:RANGE_SAMPLES] for k, v in st.data.feed.items()}, f"--data {st.data.path.name}"))
    feeds, origins = [], []
    for feed, origin in sources:
        n = len(next(iter(feed.values()))) // step * step
        feeds += [{k: v[i: i + step] for k, v in feed.items()} for i in range(0, n, step)]
        origins.append(f"{origin}: {n}")
    return feeds, origins


def _weights(model, layer) -> dict[str, dict[str, Any]]:
    """The float initializers the layer's nodes read, by name, with their range."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    nodes = {n.name: n for n in model.graph.node}
    out = {}
    for name in layer.nodes:
        for i in nodes[name].input if name in nodes else []:
            if i in inits and i not in out:
                out[i] = value_range(numpy_helper.to_array(inits[i]))
    return out


def scan(onnx_path: Path, framework: str, feeds: list[dict[str, np.ndarray]], names: list[str] | None = None) -> list[dict]:
    """Every layer of the canonical graph with its worst tensor's range, weights included, in graph order: rows of
    ``{layer, source, source_class, op, nodes, tensors, inputs, tensor, abs_max, below_normal_share, problem}``."""
    import onnx

    from edgeconv.debug import capture
    from edgeconv.debug.graph import layers_of

    seen: dict[str, dict[str, float]] = {}
    for i in range(0, len(feeds), CHUNK):
        for t, v in capture.onnx_reference(onnx_path, feeds[i: i + CHUNK]).items():
            seen[t] = value_range(v, seen.get(t))
    model = onnx.load(str(onnx_path))
    rows = []
    for layer in layers_of(model, framework, set(seen), names):
        ranges = {t: seen[t] for t in layer.tensors}
        ranges |= {f"{w} (weight)": r for w, r in _weights(model, layer).items()}
        tensor = max(ranges, key=lambda t: (problem_of(ranges[t]) == "overflow", problem_of(ranges[t]) is not None,
                                            ranges[t]["abs_max"]))
        rows.append({"layer": layer.name, "source": layer.source, "source_class": layer.source_class, "op": layer.op,
                     "nodes": layer.nodes, "tensors": layer.tensors, "inputs": layer.inputs, "tensor": tensor,
                     "abs_max": ranges[tensor]["abs_max"], "below_normal_share": ranges[tensor]["below_normal_share"],
                     "problem": problem_of(ranges[tensor])})
    return rows


def keep_in_fp32(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """The layers ``--fallback auto`` keeps in fp32, in graph order, at most ``limit``: every flagged layer and every
    layer that reads an overflowing tensor (in fp16 it would read inf)."""
    overflowing = {t for r in rows if r["problem"] == "overflow" for t in r["tensors"]}
    wanted = [r for r in rows if r["problem"] or overflowing & set(r["inputs"])]
    return [{"layer": r["layer"], "source": r["source"], "op": r["op"], "nodes": r["nodes"], "tensors": r["tensors"],
             "artifact_names": [], "why": r["problem"] or "reads an overflowing tensor"} for r in wanted[:limit]]


def describe(r: dict[str, Any]) -> str:
    who = (r["source"] or r["layer"]) + (f" ({r['source_class']})" if r.get("source_class") else "")
    where = f"ONNX node {r['layer']} ({r['op']}), tensor {r['tensor']}"
    if r["problem"] == "overflow":
        return f"{who}: values reach {r['abs_max']:.3g}, past fp16's {FP16_MAX:g}: they overflow to inf in fp16 — {where}"
    return (f"{who}: {100 * r['below_normal_share']:.0f}% of its non-zero values are below fp16's smallest normal "
            f"({FP16_MIN_NORMAL:.3g}): they underflow away in fp16 — {where}")


def range_step(st: ConvertState) -> None:
    """The convert step (fp16 only): scan, print, record as a check; with --fallback auto, the layers to keep in fp32."""
    if st.req.precision != "fp16":
        return
    feeds, origins = _feeds(st)
    with st.steps.step(f"fp16 range check: the fp32 graph's tensors on {', '.join(origins)} samples"):
        rows = scan(st.onnx_path, st.source.framework, feeds, layer_names(st.source))
    flagged = [r for r in rows if r["problem"]]
    auto = st.req.fallback == "auto"
    kept = keep_in_fp32(rows, st.req.max_float_layers) if auto else []
    kept_names = {k["layer"] for k in kept}
    left = [r for r in flagged if r["problem"] == "overflow" and r["layer"] not in kept_names]
    for r in flagged:
        st.steps.note("fp16 range: " + describe(r) + (" · kept in fp32 (--fallback auto)" if r["layer"] in kept_names else ""))
    if kept and not getattr(st.target, "fp16_float_layers", False):
        raise PreflightError(f"--fallback auto: {st.profile.name} ({st.profile.backend}) cannot keep "
                             f"{', '.join(k['source'] or k['layer'] for k in kept)} in fp32 in an fp16 conversion",
                             hint=NO_FP16_FALLBACK.get(st.profile.backend, "this backend has no per-layer fp32 in fp16"))
    st.fp16_float_layers = kept
    reason = (f"{len(left)} layer(s) overflow fp16 and stay in fp16: {', '.join(r['source'] or r['layer'] for r in left)}"
              + ("" if auto else " (--fallback auto keeps them in fp32)")) if left else ""
    st.fp16_range = ({"kind": "fp16-range", "ok": not left, "reason": reason, "samples": origins,
                      "fp16_max": FP16_MAX, "fp16_min_normal": FP16_MIN_NORMAL, "underflow_share": UNDERFLOW_SHARE,
                      "layers_checked": len(rows),
                      "flagged": [{**{k: r[k] for k in FLAGGED_KEYS}, "message": describe(r),
                                   "kept_in_fp32": r["layer"] in kept_names} for r in flagged],
                      "kept_in_fp32": [k["source"] or k["layer"] for k in kept],
                      "method": "the fp32 canonical ONNX graph on onnxruntime with every float tensor kept "
                                "(onnxruntime.quantization.qdq_loss_debug), weights read from the graph"})


def range_record(st: ConvertState) -> None:
    """The convert step after the artifact's own checks: the fp16 range check joins the manifest's checks (after the
    artifact's parity, which stays second)."""
    if st.fp16_range is not None:
        st.checks.append(st.fp16_range)
