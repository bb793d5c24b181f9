"""The compress report: the source and the result side by side, the ratios, and what each figure means."""

from __future__ import annotations

from typing import Any

from edgeconv.compress.load import Loaded
from edgeconv.compress.methods import DENSE_NOTE
from edgeconv.compress.request import CompressRequest
from edgeconv.specs import sha256_of

# pt2_bytes, not file_bytes: both sides written by torch.export.save (a state_dict or pickled source file is another format)
RATIO_KEYS = ("parameters", "nonzero_parameters", "macs", "pt2_bytes", "int8_zip_bytes", "p50_ms")


def _speed_note(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """Latency next to MACs: fewer MACs that do not run faster are said so, not left to read as a speed-up."""
    macs = after["macs"] / before["macs"] if before.get("macs") and after.get("macs") is not None else None
    p50 = after["p50_ms"] / before["p50_ms"] if before.get("p50_ms") and after.get("p50_ms") is not None else None
    if macs is None or p50 is None or macs >= 1 or p50 <= 1:
        return None
    return (f"MACs {macs:.2f}x but ONNX Runtime fp32 p50 {p50:.2f}x: fewer MACs did not make this model faster here "
            "(more, thinner layers cost kernel calls); the latency, not the MAC count, is the speed")


def _notes(methods: list[dict[str, Any]], history, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    notes = [n for n in (_speed_note(before, after),) if n]
    for m in methods:
        whole = [d for d in m.get("kept_whole", []) if d["reason"] != "its channels are the model's outputs"]
        if whole:
            notes.append("prune-channels kept these layers whole (the rest pruned): "
                         + "; ".join(f"{d['layer']}: {d['reason']}" for d in whole[:12])
                         + (f"; and {len(whole) - 12} more" if len(whole) > 12 else ""))
        if m["method"] == "low-rank" and m.get("undone"):
            notes.append(f"low-rank: {len(m['undone'])} of {len(m['layers'])} factorised layers undone, slower on ONNX Runtime "
                         f"than the layer they replaced ({', '.join(m['undone'][:8])}); kept: {len(m['kept'])}")
    if any(m["method"] == "sparsity" for m in methods):
        notes.append(DENSE_NOTE)
    if history is None:
        notes.append("no fine-tuning was done (no --finetune): accuracy is that of the compressed weights as they are")
    if before.get("int8_zip_bytes") is None:
        notes.append(f"int8 size: {before.get('int8_note')}")
    if before.get("pt2_note"):
        notes.append(f".pt2 size of the source: {before['pt2_note']}")
    return notes


def _finetune_record(req: CompressRequest, history, loaded: Loaded) -> dict[str, Any] | None:
    if history is None:
        return None
    return {"data": {"path": str(req.finetune), "sha256": sha256_of(req.finetune), "count": len(loaded.train[1])},
            "epochs": req.epochs_or_default, "lr": req.lr_or_default, "batch_size": req.batch_size_or_default,
            "seed": req.seed, "loss": "cross-entropy", "optimizer": "Adam", "history": history}


def build_report(req: CompressRequest, loaded: Loaded, methods: list[dict[str, Any]], history, before: dict[str, Any],
                 after: dict[str, Any], lat: dict[str, Any]) -> dict[str, Any]:
    ratios = {k: (after[k] / before[k]) if before.get(k) and after.get(k) is not None else None for k in RATIO_KEYS}
    if before.get("top1") is not None:
        ratios["top1_drop_points"] = (before["top1"] - after["top1"]) * 100
    val = loaded.val
    return {
        "ok": True,
        "source": {"path": str(req.model), "format": loaded.source.format, "sha256": sha256_of(req.model)},
        "output": {"path": str(req.output), "format": "torch.export", "sha256": sha256_of(req.output),
                   "inputs": [s.to_dict() for s in loaded.specs]},
        "methods": methods,
        "finetune": _finetune_record(req, history, loaded),
        "data": None if val is None else {"path": str(req.data), "sha256": sha256_of(req.data), "count": len(val[1])},
        "before": before, "after": after, "ratios": ratios,
        "latency": {"method": lat["method"], "runtime": lat["runtime"], "before": lat["stats"]["before"],
                    "after": lat["stats"]["after"], "precision": "fp32"},
        "int8_method": "ONNX Runtime quantize_dynamic (int8 weights, symmetric per channel) of the exported ONNX graph, "
                       "zipped with deflate level 9",
        "macs_method": "Conv/ConvTranspose/Gemm/MatMul of the exported ONNX graph at batch 1",
        "notes": _notes(methods, history, before, after),
        "command_line": req.command_line,
    }
