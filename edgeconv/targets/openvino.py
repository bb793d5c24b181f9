"""OpenVINO IR target: the checked ONNX graph → IR (fp32, fp16 weights, or int8 by NNCF) for Intel CPU/GPU/NPU.

int8 with ``--data`` and ``--max-accuracy-drop`` uses NNCF's accuracy-controlled quantization, which keeps the
layers that cost accuracy in higher precision; the manifest lists them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import ConversionFailed
from edgeconv.lazy import require
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions

QUANTIZABLE = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}


def _ov():
    from edgeconv.runners.openvino import load_openvino

    return load_openvino()


def float_ops(model) -> list[str]:
    """Quantizable ops whose inputs do not come from a FakeQuantize: they run in float."""
    kept = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in QUANTIZABLE:
            continue
        producers = [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())]
        # weights may pass through Convert/Multiply before the FakeQuantize; activations feed input 0
        if "FakeQuantize" not in producers and not any(
            p == "FakeQuantize" for i in range(op.get_input_size()) for p in _upstream_types(op.input_value(i).get_node())
        ):
            kept.append(op.get_friendly_name())
    return kept


def _upstream_types(node, depth: int = 3) -> list[str]:
    types = []
    frontier = [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            types.append(n.get_type_name())
            nxt += [n.input_value(i).get_node() for i in range(n.get_input_size())]
        frontier = nxt
    return types


class OpenVinoTarget(Target):
    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    dynamic_batch = True
    needs_calibration = ("int8",)
    float_fallback = True  # NNCF's ignored scope

    def check_runner_options(self, precision: str, profile) -> dict[str, Any]:
        # Convert-time checks run on this host's CPU with f32 math, so they measure the artifact, not bf16.
        return {"device": "CPU", "inference_precision": "f32"}

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        ov = _ov()
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise ConversionFailed(f"openvino.convert_model failed on the ONNX graph: {type(exc).__name__}: {exc}") from exc
        extra: dict[str, Any] = {"runner_options": {"device": profile.raw.get("runtime", {}).get("device", "CPU")},
                                 "openvino": ov.__version__}
        if opts.precision == "int8":
            model, qinfo = self._quantize(model, opts, ctx)
            extra["quantization"] = qinfo
        for key, value in {"target": profile.name, "precision": opts.precision, "layouts": json.dumps(ctx.layouts),
                           "source": json.dumps(ctx.source)}.items():
            model.set_rt_info(str(value), ["edgeconv", key])
        dest = workdir / "model.xml"
        compress = opts.precision == "fp16"
        ov.save_model(model, str(dest), compress_to_fp16=compress)
        extra["compress_to_fp16"] = compress
        return Conversion([
            Artifact(onnx_path.name, "canonical-onnx", "fp32"),
            Artifact(dest.name, "model", opts.precision, profile.runner, extra),
            Artifact("model.bin", "weights", opts.precision),
        ])

    def _quantize(self, model, opts: TargetOptions, ctx: TargetContext):
        nncf = require("nncf", why="for OpenVINO int8")
        calib = ctx.calibration
        names = [i.get_any_name() for i in model.inputs]
        items = [[s[n] for n in names] if len(names) > 1 else s[names[0]] for s in calib]
        dataset = nncf.Dataset(items)
        preset = getattr(nncf.QuantizationPreset, opts.extra.get("quant_preset", "performance").upper())
        ignored = opts.extra.get("ignored_nodes") or []
        # the int8 guard's float layers: the OpenVINO ops the ONNX frontend made of those nodes (named after the node,
        # ``node`` or ``node/WithoutBiases``) go into NNCF's ignored scope
        guard_ops = [op.get_friendly_name() for op in model.get_ordered_ops()
                     if any(op.get_friendly_name() == n or op.get_friendly_name().startswith(n + "/")
                            for layer in ctx.float_layers for n in layer["nodes"])]
        kwargs = {"preset": preset, "subset_size": len(items)}
        if ignored or guard_ops:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored + guard_ops, validate=not guard_ops)
        data = ctx.accuracy_data
        max_drop = ctx.max_accuracy_drop
        info: dict[str, Any] = {"tool": f"nncf {nncf.__version__}", "preset": preset.name.lower(), "ignored_nodes": ignored,
                                "samples": len(items)}
        if guard_ops:
            info["ignored_for_float_layers"] = guard_ops
        try:
            if data is not None and max_drop is not None and not ctx.float_layers:
                feed, labels, out_index = data
                val_items = [([feed[n][i : i + 1] for n in names] if len(names) > 1 else feed[names[0]][i : i + 1], int(labels[i]))
                             for i in range(len(labels))]

                def validate_fn(compiled, items) -> float:
                    hits = seen = 0
                    for x, y in items:  # an iterable without len()
                        hits += int(np.argmax(compiled(x)[out_index]) == y)
                        seen += 1
                    return hits / max(seen, 1)

                qmodel = nncf.quantize_with_accuracy_control(
                    model, dataset, nncf.Dataset(val_items, lambda item: item[0]), validation_fn=validate_fn,
                    max_drop=max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, **kwargs,
                )
                info["method"] = f"nncf.quantize_with_accuracy_control (max drop {max_drop} points, absolute, top-1)"
            else:
                qmodel = nncf.quantize(model, dataset, **kwargs)
                info["method"] = "nncf.quantize (post-training, min-max on calibration data)"
        except Exception as exc:
            raise ConversionFailed(f"NNCF int8 quantization failed: {type(exc).__name__}: {str(exc).splitlines()[0][:400]}") from exc
        info["fake_quantize_ops"] = sum(1 for op in qmodel.get_ops() if op.get_type_name() == "FakeQuantize")
        info["kept_in_float"] = float_ops(qmodel)
        if info["fake_quantize_ops"] == 0:
            raise ConversionFailed("NNCF inserted no quantizers: the int8 IR would run entirely in float",
                                   hint="check --ignore-node and the model's ops (`edgeconv inspect`)")
        return qmodel, info
