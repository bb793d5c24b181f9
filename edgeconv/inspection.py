"""``edgeconv inspect``: what is in a model, read through the same frontends as ``convert``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeconv.errors import BadInput
from edgeconv.frontends import LoadOptions, load_source
from edgeconv.onnx_tools import summarize
from edgeconv.shapes import ShapeRequest, resolve
from edgeconv.specs import Dim, sha256_of


def inspect_model(path: Path, *, input_shapes: dict[str | None, list[Dim]] | None = None,
                  input_dtypes: dict[str | None, str] | None = None, sample: Path | None = None,
                  load: LoadOptions | None = None) -> dict[str, Any]:
    """Inputs, outputs, opset, ops, parameters and MACs. MACs are counted at the shapes the model records, with its
    open dimensions resolved as ``convert`` resolves them (``--input-shape``, ``--sample``); when some stay open,
    the MACs are None and ``macs_note`` says why."""
    source = load_source(path, load)
    info: dict[str, Any] = {"path": str(path), "format": source.format, "framework": source.framework,
                            "sha256": sha256_of(path)}
    shape_req = ShapeRequest(input_shapes or {}, input_dtypes or {}, False, [("--sample", sample)] if sample else [])
    if source.framework == "onnx":
        summary = summarize(source.proto, source.layout_default)
        try:
            resolved = resolve(source, shape_req)
        except BadInput as exc:
            if input_shapes or sample:
                raise
            return info | summary | _unresolved(summary, exc)
        if any(s.dynamic_dims for s in source.inputs):
            import onnx

            from edgeconv.onnx_tools import set_input_shapes

            proto = onnx.ModelProto()
            proto.CopyFrom(source.proto)
            set_input_shapes(proto, resolved.specs, False)
            fixed = summarize(proto, source.layout_default)
            summary |= {k: fixed[k] for k in ("macs", "macs_uncounted_nodes")}
            summary["macs_shapes"] = {s.name: s.shape for s in resolved.specs}
            summary["input_origins"] = resolved.origins
        return info | summary
    try:
        resolved = resolve(source, shape_req)
    except BadInput as exc:
        if input_shapes or sample:
            raise
        return info | {"inputs": [s.to_dict() for s in source.inputs], "outputs": [], "macs": None,
                       "macs_note": f"not exported: {exc.message}", "macs_hint": exc.hint}
    inputs = resolved.specs
    with tempfile.TemporaryDirectory(prefix="edgeconv-inspect-") as tmp:
        dest = Path(tmp) / "model.onnx"
        record = source.export_onnx(dest, inputs=inputs, opset=None, dynamic_batch=False)
        from edgeconv.onnx_tools import load_onnx

        summary = summarize(load_onnx(dest), source.layout_default)
    layouts = {s.name: s.layout for s in inputs}
    for d in summary["inputs"]:
        d["layout"] = layouts.get(d["name"], d["layout"])
    return info | {"exported_with": record.exporter, "input_origins": resolved.origins} | summary


def _unresolved(summary: dict[str, Any], exc: BadInput) -> dict[str, Any]:
    """MACs of a graph with open dimensions are not a number: say why instead of counting them as 1."""
    return {"macs": None, "macs_note": f"the graph has dynamic dimensions: {exc.message}", "macs_hint": exc.hint}
