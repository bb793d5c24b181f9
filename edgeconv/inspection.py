"""``edgeconv inspect``: what is in a model, read through the same frontends as ``convert``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgeconv.frontends import LoadOptions, load_source
from edgeconv.onnx_tools import summarize
from edgeconv.specs import Dim, sha256_of


def inspect_model(path: Path, *, input_shapes: dict[str | None, list[Dim]] | None = None,
                  load: LoadOptions | None = None) -> dict[str, Any]:
    source = load_source(path, load)
    info: dict[str, Any] = {"path": str(path), "format": source.format, "framework": source.framework,
                            "sha256": sha256_of(path)}
    if source.framework == "onnx":
        return info | summarize(source.proto, source.layout_default)
    from edgeconv.convert import ConvertRequest, resolve_inputs

    inputs = resolve_inputs(source, ConvertRequest(model=path, input_shapes=input_shapes or {}))
    with tempfile.TemporaryDirectory(prefix="edgeconv-inspect-") as tmp:
        dest = Path(tmp) / "model.onnx"
        record = source.export_onnx(dest, inputs=inputs, opset=None, dynamic_batch=False)
        from edgeconv.onnx_tools import load_onnx

        summary = summarize(load_onnx(dest), source.layout_default)
    layouts = {s.name: s.layout for s in inputs}
    for d in summary["inputs"]:
        d["layout"] = layouts.get(d["name"], d["layout"])
    return info | {"exported_with": record.exporter} | summary
