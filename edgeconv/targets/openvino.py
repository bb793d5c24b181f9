"""OpenVINO IR target: the checked ONNX graph → IR (fp32, fp16 weights, or int8 by NNCF) for Intel CPU/GPU/NPU.

int8 with ``--data`` and ``--max-accuracy-drop`` uses NNCF's accuracy-controlled quantization, which keeps the
layers that cost accuracy in higher precision. The conversion hands back what NNCF reverted and the full-int8 IR NNCF
measured first (``Conversion.accuracy_control``), so the manifest's ``fallback`` record says which layers stay in float,
the drop before and after, and what that costs, like the int8 guard's (edgeconv/convert/guard.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.accuracy import BUDGET_TOLERANCE_POINTS
from edgeconv.core.text import first_line
from edgeconv.errors import ConversionFailed
from edgeconv.lazy import require
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions

QUANTIZABLE = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}
FULL_INT8_DIR = ".nncf-full-int8"  # in the bundle being built; the fallback record measures it, then removes it
ACCURACY_CONTROL = {
    "mechanism": "nncf.quantize_with_accuracy_control: reverts ops to float (no FakeQuantize on them, float weights)",
    "ranked_by": "NNCF's ranker: each quantizer group's effect on the per-item top-1 over --data, worst reverted first, "
                 "re-ranked when a step does not help, until the drop is within budget",
}


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


# The int8 guard's calibration lever (QuantSettings.calibration) → nncf.quantize's own settings, the default first:
# asymmetric activations (the MIXED preset), full bias correction, and activation ranges from the mean of per-sample
# quantiles instead of min/max (outliers clipped). NNCF's own advice for an accuracy drop, in that order.
NNCF_CALIBRATION = {
    "default": {},
    "mixed": {"preset": "mixed"},
    "mixed-bias-correction": {"preset": "mixed", "fast_bias_correction": False},
    "mixed-quantile-ranges": {"preset": "mixed", "activations_range": "MEAN_QUANTILE"},
}


def nncf_settings(nncf, method: str | None, user_preset: str) -> dict[str, Any]:
    """``nncf.quantize`` keyword arguments for a calibration method of NNCF_CALIBRATION (None: the default)."""
    chosen = NNCF_CALIBRATION.get(method or "default")
    if chosen is None:
        raise ConversionFailed(f"unknown NNCF calibration method {method!r} (known: {', '.join(NNCF_CALIBRATION)})")
    kwargs: dict[str, Any] = {"preset": getattr(nncf.QuantizationPreset, chosen.get("preset", user_preset).upper())}
    if "fast_bias_correction" in chosen:
        kwargs["fast_bias_correction"] = chosen["fast_bias_correction"]
    if "activations_range" in chosen:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, chosen["activations_range"]))
    return kwargs


def keep_in_fp32(model, nodes: list[str]) -> list[str]:
    """fp16: the ops the ONNX frontend made of ``nodes`` (``node`` or ``node/...``) and the constants they read marked
    ``precise`` (OpenVINO's disable_fp16_compression, saved in the IR as DisablePrecisionConversion): save_model keeps
    those weights in fp32 and a plugin computing in f16 keeps those ops in f32. Returns the marked ops' names."""
    marked = []
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if not any(name == n or name.startswith(n + "/") for n in nodes):
            continue
        for node in [op, *(op.input_value(i).get_node() for i in range(op.get_input_size()))]:
            if node is op or node.get_type_name() == "Constant":
                node.get_rt_info()["precise_0"] = ""
        marked.append(name)
    return marked


class OpenVinoTarget(Target):
    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    dynamic_batch = True
    needs_calibration = ("int8",)
    float_fallback = True  # NNCF's ignored scope
    fp16_float_layers = True  # fp16: keep_in_fp32 (rt_info disable_fp16_compression, edgeconv/convert/fp16_fallback.py)
    calibration_methods = tuple(NNCF_CALIBRATION)

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
        full_int8 = None
        if opts.precision == "int8":
            model, qinfo, full_int8 = self._quantize(model, opts, ctx, workdir)
            extra["quantization"] = qinfo
        compress = opts.precision == "fp16"
        extra["compress_to_fp16"] = compress
        if compress and ctx.float_layers:
            extra["kept_in_fp32"] = keep_in_fp32(model, [n for layer in ctx.float_layers for n in layer["nodes"]])
        conversion = Conversion([
            Artifact(onnx_path.name, "canonical-onnx", "fp32"),
            *self._save(ov, model, workdir, profile, opts, ctx, extra),
        ])
        if full_int8 is not None:
            full, reverted, nncf_record = full_int8
            full_extra = {**{k: v for k, v in extra.items() if k != "quantization"}, "quantization": {
                **{k: v for k, v in extra["quantization"].items() if k != "accuracy_control"},
                "method": "nncf.quantize (post-training, min-max on calibration data): the model NNCF's accuracy control "
                          "started from", "kept_in_float": float_ops(full)}}
            conversion.accuracy_control = {
                "float_ops": reverted, **ACCURACY_CONTROL, "nncf": nncf_record,
                "full_int8": Conversion(self._save(ov, full, workdir / FULL_INT8_DIR, profile, opts, ctx, full_extra))
                if reverted else None,
                "full_int8_dir": workdir / FULL_INT8_DIR if reverted else None}
        return conversion

    def _save(self, ov, model, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext, extra) -> list[Artifact]:
        for key, value in {"target": profile.name, "precision": opts.precision, "layouts": json.dumps(ctx.layouts),
                           "source": json.dumps(ctx.source)}.items():
            model.set_rt_info(str(value), ["edgeconv", key])
        workdir.mkdir(parents=True, exist_ok=True)
        dest = workdir / "model.xml"
        ov.save_model(model, str(dest), compress_to_fp16=extra["compress_to_fp16"])
        return [Artifact(dest.name, "model", opts.precision, profile.runner, extra),
                Artifact("model.bin", "weights", opts.precision)]

    def _quantize(self, model, opts: TargetOptions, ctx: TargetContext, workdir: Path):
        """The int8 model, its quantization record and, after NNCF's accuracy control, ``(the full-int8 model NNCF
        measured first, the ops it reverted to float, NNCF's own measurements)`` (else None)."""
        nncf = require("nncf", why="for OpenVINO int8")
        calib = ctx.calibration
        names = [i.get_any_name() for i in model.inputs]
        items = [[s[n] for n in names] if len(names) > 1 else s[names[0]] for s in calib]
        dataset = nncf.Dataset(items)
        settings = nncf_settings(nncf, ctx.quant.calibration, opts.extra.get("quant_preset", "performance"))
        preset = settings["preset"]
        ignored = opts.extra.get("ignored_nodes") or []
        # the int8 guard's float layers: the OpenVINO ops the ONNX frontend made of those nodes (named after the node,
        # ``node`` or ``node/WithoutBiases``) go into NNCF's ignored scope
        guard_ops = [op.get_friendly_name() for op in model.get_ordered_ops()
                     if any(op.get_friendly_name() == n or op.get_friendly_name().startswith(n + "/")
                            for layer in ctx.float_layers for n in layer["nodes"])]
        kwargs = {**settings, "subset_size": len(items)}
        if ignored or guard_ops:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored + guard_ops, validate=not guard_ops)
        data = ctx.accuracy_data
        max_drop = ctx.max_accuracy_drop
        info: dict[str, Any] = {"tool": f"nncf {nncf.__version__}", "preset": preset.name.lower(), "ignored_nodes": ignored,
                                "samples": len(items), "calibration": ctx.quant.calibration or "default"}
        if guard_ops:
            info["ignored_for_float_layers"] = guard_ops
        full_int8 = None
        try:
            if data is not None and max_drop is not None and not ctx.float_layers:
                feed, labels, out_index = data
                val_items = [([feed[n][i : i + 1] for n in names] if len(names) > 1 else feed[names[0]][i : i + 1],
                              int(labels[i]))
                             for i in range(len(labels))]
                metrics: list[float] = []  # NNCF's validations on all of --data, in order: fp32, full int8, each step

                def validate_fn(compiled, items) -> float:
                    hits = seen = 0
                    for x, y in items:  # an iterable without len()
                        hits += int(np.argmax(compiled(x)[out_index]) == y)
                        seen += 1
                    if seen == len(val_items) > 1:  # NNCF also calls it on single items to rank its quantizers
                        metrics.append(hits / seen)
                    return hits / max(seen, 1)

                scratch = Path(tempfile.mkdtemp(prefix=".nncf-", dir=workdir))
                log = _NncfLog()
                logging.getLogger("nncf").addHandler(log)
                try:
                    qmodel = nncf.quantize_with_accuracy_control(
                        model, dataset, nncf.Dataset(val_items, lambda item: item[0]), validation_fn=validate_fn,
                        max_drop=max_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, **kwargs,
                        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(
                            intermediate_model_dir=str(scratch)),
                    )
                    full = _ov().Core().read_model(str(scratch / "intermediate_model.xml"))
                finally:
                    logging.getLogger("nncf").removeHandler(log)
                    shutil.rmtree(scratch, ignore_errors=True)
                # NNCF compresses the weights of the model it returns (int8 constants); the full-int8 model it saved
                # before its accuracy control holds them in float behind FakeQuantize: the same pass makes them comparable
                from openvino._offline_transformations import compress_quantize_weights_transformation

                compress_quantize_weights_transformation(full)
                info["method"] = f"nncf.quantize_with_accuracy_control (max drop {max_drop} points, absolute, top-1)"
                full_int8 = (full, *_reverted(full, qmodel, log, metrics, max_drop))
                info["accuracy_control"] = {"reverted_to_float": full_int8[1], "nncf": full_int8[2]}
            else:
                qmodel = nncf.quantize(model, dataset, **kwargs)
                info["method"] = "nncf.quantize (post-training, min-max on calibration data)"
        except Exception as exc:
            raise ConversionFailed(f"NNCF int8 quantization failed: {type(exc).__name__}: "
                                   f"{first_line(str(exc), 400)}") from exc
        info["fake_quantize_ops"] = sum(1 for op in qmodel.get_ops() if op.get_type_name() == "FakeQuantize")
        info["kept_in_float"] = float_ops(qmodel)
        if info["fake_quantize_ops"] == 0:
            raise ConversionFailed("NNCF inserted no quantizers: the int8 IR would run entirely in float",
                                   hint="check --ignore-node and the model's ops (`edgeconv inspect`)")
        return qmodel, info, full_int8


class _NncfLog(logging.Handler):
    """NNCF's accuracy control tells what it reverted only in its log: ``Reverted N operations to the floating-point
    precision: <names, one a line>`` per step and ``K out of M were reverted back ...: <names>`` at the end."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.steps: list[list[str]] = []
        self.final: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a malformed log record is never worth failing the conversion
            return
        head, _, rest = text.partition("\n")
        names = [n.strip() for n in rest.splitlines() if n.strip()]
        if head.startswith("Reverted ") and "floating-point precision" in head:
            self.steps.append(names)
        elif "were reverted back to the floating-point precision" in head:
            self.final = names


def _reverted(full, final, log: _NncfLog, metrics: list[float], max_drop: float) -> tuple[list[str], dict[str, Any]]:
    """The OpenVINO ops NNCF reverted to float — what its log says, checked against the IRs: quantizable ops that
    read a FakeQuantize in the full-int8 model and none in the final one — and NNCF's own figures."""
    in_ir = [op for op in float_ops(final) if op not in set(float_ops(full))]
    logged = log.final if log.final is not None else [n for step in log.steps for n in step]
    reverted = list(dict.fromkeys(logged + in_ir))
    points = [100 * m for m in metrics]
    steps = [{"reverted": names, "drop_points": points[0] - points[2 + i] if 2 + i < len(points) else None}
             for i, names in enumerate(log.steps)]
    for step in steps:
        step["ok"] = step["drop_points"] is not None and step["drop_points"] <= max_drop + BUDGET_TOLERANCE_POINTS
    record = {"measured_with": "NNCF's own validation: top-1 on all of --data, OpenVINO fp32 IR vs the candidate, "
                               "OpenVINO CPU plugin's default precision",
              "top1_fp32": points[0] if points else None, "top1_full_int8": points[1] if len(points) > 1 else None,
              "drop_full_int8_points": points[0] - points[1] if len(points) > 1 else None,
              "steps": steps, "reverted_in_log": logged, "float_in_ir_not_in_full_int8": in_ir}
    return reverted, record
