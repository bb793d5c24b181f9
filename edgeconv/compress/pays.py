"""Low-rank factorisation kept only where it pays on ONNX Runtime (docs/architecture.md, "compress").

Two thin layers hold fewer weights than one, but they are two kernel calls: at batch 1 a small layer split in two
often runs slower, while its MAC count falls. Each factorised layer is timed against the layer it replaced, both
as one-layer ONNX graphs at the input shape the model gives it (fp32, interleaved, a fresh session per round,
:func:`edgeconv.compress.measure.latency`); the split is undone when it is slower beyond the measurement's noise
(the larger of the p50's 95% interval half-width and :data:`NOISE_FLOOR`), and the record says which layers were
kept and which undone, with both p50s. Then the whole model with the splits kept is timed against the model
without them (both exported as compress exports them), and every split is undone if it is slower beyond noise.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.compress.measure import latency
from edgeconv.compress.methods import layer_inputs, set_submodule

NOISE_FLOOR = 0.05  # a split up to 5% slower is within run-to-run noise on a shared machine, and is kept
LAYER_RUNS = 200  # timed runs per layer and model (one-layer graphs run in microseconds; many runs narrow the p50)


def _input_shapes(torch, model, args, names: list[str]) -> dict[str, list[int]]:
    return {n: list(ts[0].shape) for n, ts in layer_inputs(torch, model, args, names).items() if ts}


def _layer_nodes(helper, numpy_helper, layer, x: str, y: str, prefix: str, torch) -> tuple[list, list]:
    """ONNX nodes and initializers computing ``layer`` (a Linear or a 1x1 Conv2d) from ``x`` into ``y``."""
    w = layer.weight.detach().numpy().astype(np.float32)
    inits, inputs = [], [x]
    if isinstance(layer, torch.nn.Linear):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"{prefix}_w"))
        mid = f"{prefix}_mm" if layer.bias is not None else y
        nodes = [helper.make_node("MatMul", [x, f"{prefix}_w"], [mid])]
        if layer.bias is not None:
            inits.append(numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), f"{prefix}_b"))
            nodes.append(helper.make_node("Add", [mid, f"{prefix}_b"], [y]))
        return nodes, inits
    inits.append(numpy_helper.from_array(w, f"{prefix}_w"))
    inputs.append(f"{prefix}_w")
    if layer.bias is not None:
        inits.append(numpy_helper.from_array(layer.bias.detach().numpy().astype(np.float32), f"{prefix}_b"))
        inputs.append(f"{prefix}_b")
    pads = [int(p) for p in layer.padding] * 2
    return [helper.make_node("Conv", inputs, [y], strides=[int(s) for s in layer.stride], pads=pads)], inits


def _one_layer_onnx(torch, layers: list, shape: list[int], dest: Path) -> Path:
    """``layers`` (one layer, or the factorised pair) in sequence as an ONNX graph with input ``x`` of ``shape``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "x"
    for i, layer in enumerate(layers):
        y = "y" if i == len(layers) - 1 else f"h{i}"
        more, weights = _layer_nodes(helper, numpy_helper, layer, x, y, f"l{i}", torch)
        nodes += more
        inits += weights
        x = y
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(dest))
    return dest


def _time_pair(paths: dict[str, Path], feed: dict[str, np.ndarray], runs: int, warmup: int,
               threads: int | None) -> tuple[float, float, float]:
    """p50 of "original" and "factorised" timed interleaved, and the noise: the larger of their p50 intervals'
    relative half-widths, at least :data:`NOISE_FLOOR`."""
    stats = latency(paths, feed, runs=runs, warmup=warmup, threads=threads)["stats"]
    widths = [stats[k]["stability"].get("p50_interval_half_width") or 0.0 for k in paths]
    return stats["original"]["p50_ms"], stats["factorised"]["p50_ms"], max([NOISE_FLOOR, *widths])


def _per_layer(torch, model, args, record: dict[str, Any], originals: dict[str, Any], tmp: Path, warmup: int,
               threads: int | None, keep_slower: bool) -> None:
    """Each factorised layer timed against its original as one-layer graphs; put back where slower beyond noise."""
    shapes = _input_shapes(torch, model, args, list(originals))
    rng = np.random.default_rng(0)
    for i, rec in enumerate(record["layers"]):
        name, shape = rec["layer"], shapes.get(rec["layer"])
        if shape is None:  # the layer did not run on the example: nothing to time, so nothing to gain
            rec["kept"], rec["reason"] = False, "not run on the example input"
        else:
            paths = {"original": _one_layer_onnx(torch, [originals[name]], shape, tmp / f"{i}-o.onnx"),
                     "factorised": _one_layer_onnx(torch, list(model.get_submodule(name)), shape, tmp / f"{i}-f.onnx")}
            o, f, noise = _time_pair(paths, {"x": rng.standard_normal(shape).astype(np.float32)}, LAYER_RUNS, warmup,
                                     threads)
            pays = f <= o * (1 + noise)
            rec["p50_ms"], rec["noise"], rec["pays"], rec["kept"] = [o, f], noise, pays, pays or keep_slower
            rec["reason"] = (f"factorised p50 {f * 1e3:.1f} us vs {o * 1e3:.1f} us: " + (
                "not slower beyond noise" if pays else f"{f / o:.2f}x, slower beyond {noise:.0%} noise"
                + ("; kept (--keep-slower)" if keep_slower else "")))
        if not rec["kept"]:
            set_submodule(model, rec["layer"], originals[name])


def _whole_model(torch, model, loaded, record: dict[str, Any], originals: dict[str, Any], tmp: Path, runs: int,
                 warmup: int, threads: int | None, keep_slower: bool) -> None:
    """The model with the splits kept timed against the model without them; all put back when it is slower beyond
    noise (one-layer timings miss what the graph around a layer does to it)."""
    kept = [r for r in record["layers"] if r["kept"]]
    if not kept:
        return
    without = copy.deepcopy(model)
    for r in kept:
        set_submodule(without, r["layer"], copy.deepcopy(originals[r["layer"]]))
    paths = {"original": _model_onnx(torch, without, loaded, tmp / "without"),
             "factorised": _model_onnx(torch, model, loaded, tmp / "with")}
    o, f, noise = _time_pair(paths, loaded.example, runs, warmup, threads)
    record["whole_model"] = {"p50_ms": [o, f], "noise": noise, "pays": f <= o * (1 + noise),
                             "kept": f <= o * (1 + noise) or keep_slower}
    if not record["whole_model"]["kept"]:
        for r in kept:
            set_submodule(model, r["layer"], originals[r["layer"]])
            r["kept"] = False
            r["reason"] += f"; but the whole model with the splits ran {f / o:.2f}x the p50 without them (noise {noise:.0%})"


def _model_onnx(torch, module, loaded, stem: Path) -> Path:
    """``module`` exported (torch.export, then the frontend's ONNX export, as compress measures everything)."""
    from edgeconv.frontends import load_source
    from edgeconv.frontends.base import LoadOptions

    with torch.no_grad():
        torch.export.save(torch.export.export(module.eval(), loaded.args), str(stem.with_suffix(".pt2")))
    load_source(stem.with_suffix(".pt2"), LoadOptions()).export_onnx(stem.with_suffix(".onnx"), inputs=loaded.specs,
                                                                      opset=None, dynamic_batch=False)
    return stem.with_suffix(".onnx")


def keep_where_it_pays(torch, model, loaded, record: dict[str, Any], originals: dict[str, Any], tmp: Path, *, runs: int,
                       warmup: int, threads: int | None, keep_slower: bool = False) -> None:
    """Each factorised layer of ``record`` timed against its original, then the model with the splits kept against the
    model without them; a split is undone where it is slower beyond noise. ``record`` gains per layer ``p50_ms``
    (original, factorised), ``noise``, ``kept`` and ``reason``, the ``whole_model`` timing, and the ``kept``/``undone``
    layer names. ``keep_slower`` (--keep-slower): time and report, undo nothing (``pays`` says what would have been)."""
    _per_layer(torch, model, loaded.args, record, originals, tmp, warmup, threads, keep_slower)
    _whole_model(torch, model, loaded, record, originals, tmp, runs, warmup, threads, keep_slower)
    record["kept"] = [r["layer"] for r in record["layers"] if r["kept"]]
    record["undone"] = [r["layer"] for r in record["layers"] if not r["kept"]]
    record["timing"] = (f"each factorised layer against its original as one-layer ONNX graphs at its input shape ({LAYER_RUNS} "
                        f"timed runs each), then the whole model with the splits kept against it without them ({runs} runs); "
                        "ONNX Runtime fp32, interleaved; undone when slower beyond the larger p50 95% interval half-width "
                        f"(at least {NOISE_FLOOR:.0%})")
