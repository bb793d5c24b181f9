"""``edgeconv debug BUNDLE --data DATA``: which layer of a (quantized) artifact loses the accuracy.

The bundle's artifact and its fp32 canonical ONNX graph run side by side on the same real inputs; their intermediate
tensors are captured by each runtime's own mechanism (edgeconv/debug/capture.py), matched by the canonical graph's
tensor names, grouped into layers (edgeconv/debug/graph.py) and mapped to the source's names (PyTorch module path,
Keras layer). Per layer:

- ``snr_db``: channel-balanced signal-to-quantization-noise ratio, −10·log10(mean over channels of noise/signal, each
  capped at 1: a channel int8 loses entirely counts once; near-dead channels are left out).
  Plain SNR over a whole tensor is ruled by its largest channels: when a few channels' range dwarfs the rest,
  per-tensor int8 loses every other channel and the plain figure still looks fine. (``snr_tensor_db`` is the plain one.)
- ``cosine``, ``max_abs_error`` over the whole tensor; the tensor reported is the layer's worst.
- ``inherited_snr_db``: the worst SNR among the layers it reads; ``added_snr_db``: the SNR its own error alone would
  leave (noise ratio out minus noise ratio in). Ranking is by ``added_snr_db``, worst first.
- the **first diverging layer**: the first layer, in graph order, whose SNR and own added SNR are both below the
  threshold (default 20 dB): where the error starts, not where it shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.bundle import Bundle
from edgeconv.data import data_record, load_inputs
from edgeconv.errors import BadInput, IntermediatesUnavailable
from edgeconv.progress import Steps

DEFAULT_SAMPLES = 32
DEFAULT_THRESHOLD_DB = 20.0
# a float conversion diverges far above int8's noise: fp16 rounding leaves ~70 dB per op, fp32 converters ~120 dB; a layer
# below these is where the converter went wrong (a transpose or pad on the wrong axis, an overflow)
FLOAT_THRESHOLD_DB = {"fp16": 40.0, "fp32": 60.0}
SNR_CAP_DB = 150.0  # an exact match
RKNN_ANALYSIS = "rknn/accuracy_analysis.json"  # an int8 rknn build's record (edgeconv/targets/rknn.py)
DEAD_CHANNEL = 1e-6  # a channel with less energy than this share of the median channel's is left out of the SNR


@dataclass
class DebugRequest:
    bundle: Path
    data: Path
    samples: int = DEFAULT_SAMPLES
    threshold_db: float | None = None  # None: by the bundle's precision (FLOAT_THRESHOLD_DB, else DEFAULT_THRESHOLD_DB)


def _db(nsr: float) -> float:
    return SNR_CAP_DB if nsr <= 10 ** (-SNR_CAP_DB / 10) else float(-10 * math.log10(nsr))


def tensor_metrics(ref: np.ndarray, art: np.ndarray, channel_axis: int = 1) -> dict[str, Any]:
    ref = ref.astype(np.float64)
    art = art.astype(np.float64)
    broken = ~np.isfinite(art)  # an fp16 overflow (inf) or what it turned into (NaN): a value entirely lost
    if broken.any():
        art = np.where(broken, -ref if np.any(ref) else 1.0, art)
    err = ref - art
    sig_all, noise_all = float((ref**2).sum()), float((err**2).sum())
    if ref.ndim >= 2:
        axes = tuple(i for i in range(ref.ndim) if i != channel_axis % ref.ndim)
        sig_c, noise_c = (ref**2).sum(axis=axes), (err**2).sum(axis=axes)
        # a channel counts unless it is (all but) dead: a millionth of the median channel's energy. Small live channels
        # count fully — they are what per-tensor int8 loses — and one lost channel costs at most its share (NSR ≤ 1).
        live = sig_c > max(float(np.median(sig_c)) * DEAD_CHANNEL, 0.0)
        nsr = (float(np.minimum(noise_c[live] / sig_c[live], 1.0).mean()) if live.any()
               else (0.0 if noise_all == 0 else 1.0))
        dead_noise = bool((noise_c[~live] > 0).any())
    else:
        nsr = noise_all / sig_all if sig_all > 0 else (0.0 if noise_all == 0 else 1.0)
        dead_noise = False
    a, b = ref.reshape(-1), art.reshape(-1)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    cosine = float(a @ b / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    return {"nsr": nsr, "snr_db": _db(nsr),
            "snr_tensor_db": _db(noise_all / sig_all if sig_all > 0 else (0.0 if noise_all == 0 else 1.0)),
            "cosine": cosine, "max_abs_error": float(np.abs(err).max()) if err.size else 0.0,
            "reference_max_abs": float(np.abs(ref).max()) if ref.size else 0.0, "noise_in_silent_channels": dead_noise,
            "non_finite": int(broken.sum())}


def _feeds(bundle: Bundle, data: Path, samples: int) -> tuple[list[dict[str, np.ndarray]], int]:
    specs = bundle.inputs
    feed, _ = load_inputs(data, specs, need_labels=False)
    n_all = len(next(iter(feed.values())))
    fixed = specs[0].shape[0] if specs and isinstance(specs[0].shape[0], int) else 1
    n = min(samples, n_all) // fixed * fixed
    if n == 0:
        raise BadInput(f"{data} has {n_all} samples; the model's fixed batch is {fixed}")
    return [{k: v[i : i + fixed] for k, v in feed.items()} for i in range(0, n, fixed)], n


def _capturable(art_path: Path, runner: str | None, where: str) -> None:
    if (runner == "onnxruntime" and art_path.suffix == ".onnx") or runner in ("openvino", "litert"):
        return
    if runner == "rknn" and (art_path.parent / RKNN_ANALYSIS).exists():
        return
    raise IntermediatesUnavailable(
        f"{where}: the {runner or 'device'} runtime of {art_path.name} exposes no intermediate tensors to edgeconv, so its "
        "layers cannot be compared",
        hint="debug works on ONNX Runtime (onnx, jetson), OpenVINO and LiteRT (tflite, coral, ethos-u) bundles, and on "
             "int8 rknn bundles (their build records rknn-toolkit2's accuracy_analysis)")


def _rknn_recorded(art_path: Path):
    """What an int8 rknn build recorded (edgeconv/targets/rknn.py): rknn-toolkit2's accuracy_analysis on the first
    reference sample, the fp32 and simulator values of each tensor it measured, by ONNX tensor name. The simulator
    runs a .rknn only in the process that built it, so these are compared instead of a fresh capture."""
    import json

    from edgeconv.debug.capture import Captured

    doc_path = art_path.parent / RKNN_ANALYSIS
    doc = json.loads(doc_path.read_text())
    golden: dict[str, np.ndarray] = {}
    got = Captured({}, "rknn-toolkit2 accuracy_analysis recorded by the int8 build (the simulator against the toolkit's "
                       "fp32 run, on the first reference sample)")
    with np.load(doc_path.parent / doc["arrays"]) as f:
        for row in doc["rows"]:
            if row.get("arrays") is None:
                continue
            t, i = row["onnx_tensor"], row["arrays"]
            golden[t], got.tensors[t] = f[f"golden_{i}"], f[f"simulator_{i}"]
            got.names[t], got.matched_by[t] = row["tensor"], "name"
    got.notes.append("rknn: the layer figures are on the reference sample the build analysed, not on --data (a .rknn runs "
                     "on the simulator only in the process that built it)")
    return golden, got


def _capture(art_path: Path, runner: str | None, runner_options: dict[str, Any], feeds, reference, order, where: str,
             keras=None):
    from edgeconv.debug import capture

    _capturable(art_path, runner, where)
    if runner == "onnxruntime":
        return capture.qdq_onnx(art_path, feeds, reference, order)
    if runner == "openvino":
        return capture.openvino_ir(art_path, feeds, reference, order)
    return capture.litert(art_path, runner_options, feeds, reference, order, keras)


def compare_layers(canon_path: Path, art_path: Path, runner: str | None, runner_options: dict[str, Any], framework: str,
                   feeds: list[dict[str, np.ndarray]], threshold_db: float = DEFAULT_THRESHOLD_DB, steps: Steps | None = None,
                   where: str = "", layer_names: list[str] | None = None) -> dict[str, Any]:
    """The layer table of ``art_path`` against the fp32 graph ``canon_path`` on ``feeds`` (one feed per run)."""
    import onnx

    from edgeconv.debug import capture
    from edgeconv.debug.graph import keras_layer_nodes, layers_of

    steps = steps or Steps()
    _capturable(art_path, runner, where or str(art_path.parent))
    n = sum(len(next(iter(f.values()))) for f in feeds)
    with steps.step(f"Running the fp32 canonical graph ({canon_path.name}) with every tensor kept, {n} samples"):
        reference = capture.onnx_reference(canon_path, feeds)
    canon = onnx.load(str(canon_path))
    layers = layers_of(canon, framework, set(reference), layer_names)
    order = [t for layer in layers for t in layer.tensors]
    keras = None
    if framework == "keras" and layer_names:
        keras = (keras_layer_nodes(canon, layer_names), {n.name: list(n.output) for n in canon.graph.node}, layer_names)
    if runner == "rknn":
        golden, got = _rknn_recorded(art_path)
        reference = {**reference, **golden}
    else:
        with steps.step(f"Running {art_path.name} ({runner}) with its intermediates exposed"):
            got = _capture(art_path, runner, runner_options, feeds, reference, order, where or str(art_path.parent), keras)
    axis = -1 if framework == "keras" else 1
    rows = _rows(layers, reference, got, axis)
    _rank_and_mark(rows, threshold_db)
    outputs = []
    for name in [o for o in onnx.load(str(canon_path), load_external_data=False).graph.output]:
        if name.name in reference and name.name in got.tensors:
            mt = tensor_metrics(reference[name.name], got.tensors[name.name], axis)
            mt.pop("nsr")
            outputs.append({"name": name.name, **mt})
    for r in rows:  # the artifact's own names for the layer's tensors (what a backend's denylist takes)
        tensors = r.pop("_tensors")
        r["artifact_names"] = [n for t in tensors for n in ([got.names[t]] if t in got.names else []) + got.derived.get(t, [])]
    return {"rows": rows, "capture": got.how, "notes": got.notes, "outputs": outputs}


def _model_artifact(bundle: Bundle) -> dict[str, Any]:
    """The artifact debug compares: the model (for Coral/Ethos-U, the int8 .tflite their compilers start from)."""
    return bundle.model_artifact


def debug(req: DebugRequest, steps: Steps | None = None) -> dict[str, Any]:
    steps = steps or Steps()
    bundle = Bundle.open(req.bundle)
    m = bundle.manifest
    canon = next((a for a in m["artifacts"] if a["role"] in ("canonical-onnx",)), None)
    art = _model_artifact(bundle)
    if canon is None and art["file"] == "model.onnx":
        canon = art
    if canon is None:
        raise IntermediatesUnavailable(f"{req.bundle} holds no fp32 canonical ONNX graph to compare with",
                                       hint="a bare model file is compared with its float ONNX graph: pass --source "
                                            "MODEL.onnx" if m.get("given") else None)
    if req.samples < 1:
        raise BadInput("--samples must be at least 1")
    feeds, n = _feeds(bundle, req.data, req.samples)
    framework = m["source"]["framework"]
    threshold = req.threshold_db if req.threshold_db is not None else FLOAT_THRESHOLD_DB.get(m["precision"],
                                                                                             DEFAULT_THRESHOLD_DB)
    table = compare_layers(bundle.path / canon["file"], bundle.path / art["file"], art.get("runner"),
                           art.get("runner_options") or {}, framework, feeds, threshold, steps,
                           where=m["target"]["profile"], layer_names=m["source"].get("layer_names"))
    rows, outputs = table["rows"], table["outputs"]
    sensitivity = _guard_sensitivity(m, rows)
    first = next((r for r in rows if r.get("first_diverging")), None)
    matched = sum(1 for r in rows if r["snr_db"] is not None)
    return {
        "sensitivity": sensitivity,
        "ok": True,
        "bundle": str(req.bundle),
        "status": m.get("status"),
        "target": m["target"]["profile"],
        "precision": m["precision"],
        "artifact": art["file"],
        "runtime": art.get("runner"),
        "reference": f"{canon['file']} (fp32 canonical ONNX graph) on onnxruntime",
        "source": {"framework": framework, "path": m["source"]["path"]},
        "capture": table["capture"],
        "data": data_record(req.data, n),
        "threshold_db": threshold,
        "metric": "snr_db: channel-balanced SNR, -10*log10(mean over channels of noise/signal); added_snr_db: the SNR "
                  "this layer's own error alone would leave",
        "layers": rows,
        "matched_layers": matched,
        "unmatched_layers": len(rows) - matched,
        "first_diverging": first,
        "worst": [r["layer"] for r in sorted((r for r in rows if r["rank"] is not None), key=lambda r: r["rank"])[:10]],
        "outputs": outputs,
        "notes": table["notes"],
        "measured_on": "this host",
    }


def _guard_sensitivity(manifest: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The int8 guard's other ranking, when convert --fallback auto made this bundle: what each layer alone in float did
    to the guard's metric (measured by converting again). Each such row gets ``alone_in_float``."""
    fb = manifest.get("fallback") or {}
    measured = {c["layer"]: c.get("alone_in_float") for c in fb.get("candidates") or [] if c.get("alone_in_float") is not None}
    if not measured:
        return None
    for r in rows:
        if r["layer"] in measured:
            r["alone_in_float"] = measured[r["layer"]]
    return {"metric": (fb.get("score") or {}).get("metric"), "before": (fb.get("score") or {}).get("before"),
            "measured_by": "convert --fallback auto: each layer alone in float, converted and measured again",
            "layers": measured}


def _rows(layers, reference, got, axis) -> list[dict[str, Any]]:
    through: dict[str, float | None] = {}
    # tensor -> the layers without values of their own (fused away in the artifact) whose error flows on in it
    absorbed: dict[str, list[str]] = {}
    rows = []
    for layer in layers:
        worst = None
        for t in layer.tensors:
            if t not in got.tensors:
                continue
            ref, art = reference[t], got.tensors[t]
            if ref.shape != art.shape:
                if ref.size != art.size:
                    continue
                art = art.reshape(ref.shape)
            mt = tensor_metrics(ref, art, axis)
            mt["tensor"] = t
            mt["artifact_tensor"] = got.names.get(t, t)
            mt["matched_by"] = got.matched_by.get(t)
            if worst is None or mt["nsr"] > worst["nsr"]:
                worst = mt
        row: dict[str, Any] = {"index": layer.index, "layer": layer.name, "source": layer.source,
                               "source_class": layer.source_class, "op": layer.op, "nodes": layer.nodes,
                               "inputs": layer.inputs, "_tensors": layer.tensors}
        if worst is None:
            row.update({"snr_db": None, "nsr": None, "tensor": layer.tensors[-1], "artifact_tensor": None, "matched_by": None})
        else:
            row.update(worst)
        # what a layer passes on: its own error, or, where it has no tensor of its own (fused away in the artifact),
        # the error it received, so the layer after it does not take the inherited error for its own
        parents = [through[i] for i in layer.inputs if through.get(i) is not None]
        nsr_in = max(parents, default=0.0)
        row["inherited_snr_db"] = _db(nsr_in) if parents else None
        if row["nsr"] is not None:
            row["added_nsr"] = max(row["nsr"] - nsr_in, 0.0)
            row["added_snr_db"] = _db(row["added_nsr"])
        else:
            row["added_nsr"] = row["added_snr_db"] = None
        pending = list(dict.fromkeys(x for i in layer.inputs for x in absorbed.get(i, [])))
        # the layers fused into this one in the artifact: their own error is in what this layer adds
        row["carries"] = pending if row["nsr"] is not None else []
        for t in layer.tensors:
            through[t] = row["nsr"] if row["nsr"] is not None else (nsr_in if parents else None)
            absorbed[t] = [] if row["nsr"] is not None else [*pending, layer.source or layer.name]
        rows.append(row)
    return rows


def _rank_and_mark(rows: list[dict[str, Any]], threshold_db: float) -> None:
    measured = sorted((r for r in rows if r["added_nsr"] is not None), key=lambda r: (-r["added_nsr"], r["index"]))
    for r in rows:
        r["rank"] = None
        r["first_diverging"] = False
    for i, r in enumerate(measured, 1):
        r["rank"] = i
    for r in rows:
        if r["snr_db"] is not None and r["snr_db"] < threshold_db and r["added_snr_db"] < threshold_db:
            r["first_diverging"] = True
            break
