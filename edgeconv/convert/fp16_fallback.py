"""``convert --precision fp16 --fallback auto``, the step right after the build: the build already kept the fp16 range
check's layers in fp32 (edgeconv/convert/fp16_range.py). While the fp16 artifact still misses parity on the reference
samples, the layer ``edgeconv debug`` ranks worst (the error it adds on its own, fp16 artifact against the fp32 canonical
graph) joins them and the target builds again, up to ``--max-float-layers``. The record is the manifest's ``fallback``.

Each backend keeps a layer in fp32 by its own mechanism (``Target.fp16_float_layers``; ``FP16_MECHANISM`` says which).
See docs/architecture.md.
"""

from __future__ import annotations

from typing import Any

from edgeconv.convert.failures import converter_step
from edgeconv.convert.state import ConvertState
from edgeconv.export_cache import layer_names
from edgeconv.progress import Steps

RANK_SAMPLES = 8
FP16_MECHANISM = {
    "onnx": "onnxruntime.transformers.float16.convert_float_to_float16 node_block_list, keep_io_types (Cast to fp32 "
            "before those nodes and back to fp16 after them)",
    "openvino": "rt_info disable_fp16_compression on those ops and their weights (ov.save_model keeps their weights in "
                "fp32; a plugin computing in f16 keeps them in f32)",
    "tflite": "the fp16 flatbuffer rewritten so those ops read their weights in fp32 (taken from the same SavedModel "
              "converted without optimizations) instead of through DEQUANTIZE from fp16; LiteRT's CPU path (XNNPACK) "
              "computes an fp16-weight model's activations in fp32, so weights are what fp16 changes there (a runtime "
              "computing in fp16 - XNNPACK's FORCE_FP16, the GPU delegate's fp16 - has no per-op exemption)",
    "jetson": "TensorRT layer precision constraints: build.sh trtexec --layerPrecisions/--layerOutputTypes ...:fp32 "
              "--precisionConstraints=obey, and edgeconv build sets ILayer.precision and OBEY_PRECISION_CONSTRAINTS; the "
              "strongly typed path builds model_trt_fp16.onnx, where those layers are cast to fp32 in the graph",
}


def _parity(st: ConvertState):
    art = st.model_art
    with converter_step(f"running the fp16 artifact {art.file} on {art.runner}", st.failed_dir):
        return st.evaluator.artifact_parity(st.work, art, st.check_options)


def _worst(st: ConvertState, kept: set[str]) -> dict[str, Any] | None:
    """The layer ``edgeconv debug`` ranks worst by the error it adds, among those not yet in fp32."""
    from edgeconv.debug import compare_layers

    art = st.model_art
    step = st.batch or 1
    total = max(min(RANK_SAMPLES, len(next(iter(st.feed.values())))) // step * step, step)
    feeds = [{k: v[i: i + step] for k, v in st.feed.items()} for i in range(0, total, step)]
    table = compare_layers(st.onnx_path, st.work / art.file, art.runner, st.check_options, st.source.framework, feeds,
                           steps=Steps(), layer_names=layer_names(st.source))
    ranked = sorted((r for r in table["rows"] if r["rank"] is not None and r["layer"] not in kept), key=lambda r: r["rank"])
    if not ranked:
        return None
    r = ranked[0]
    return {"layer": r["layer"], "source": r["source"], "op": r["op"], "nodes": r["nodes"], "tensors": [r["tensor"]],
            "artifact_names": r["artifact_names"], "why": f"edgeconv debug ranks it worst (adds {r['added_snr_db']:.1f} dB)"}


def fallback_step(st: ConvertState) -> None:
    """Rebuild with one more fp32 layer while the fp16 artifact misses parity; record what was kept."""
    if st.req.precision != "fp16" or st.req.fallback != "auto" or st.is_onnx_itself:
        return
    layers = list(st.ctx.float_layers)
    attempts = []
    while True:
        rep = _parity(st)
        attempts.append({"float_layers": [x["source"] or x["layer"] for x in layers], "ok": rep.ok,
                         "outputs": rep.to_dict()["outputs"]})
        if rep.ok or len(layers) >= st.req.max_float_layers:
            break
        with st.steps.step("fp16 fallback: ranking the layers by the error each adds (edgeconv debug)"):
            worst = _worst(st, {x["layer"] for x in layers})
        if worst is None:
            break
        layers.append(worst)
        st.ctx.float_layers = layers
        with st.steps.step(f"fp16 fallback: rebuilding with {worst['source'] or worst['layer']} in fp32"), converter_step(
                f"the {st.profile.backend} conversion (fp16, {len(layers)} layer(s) in fp32)", st.failed_dir):
            st.conversion = st.target.convert(st.onnx_path, st.work, st.profile, st.topts, st.ctx)
    st.fallback_record = {
        "mode": "auto", "precision": "fp16", "ok": attempts[-1]["ok"], "goal": "parity",
        "max_float_layers": st.req.max_float_layers,
        "float_layers": [{k: x[k] for k in ("layer", "source", "op", "nodes", "why")} for x in layers],
        "ranked_by": "the fp16 range check (overflow, underflow, and the layers reading an overflow), then edgeconv "
                     "debug's added SNR while parity misses",
        "mechanism": FP16_MECHANISM.get(st.profile.backend), "attempts": attempts,
    }
