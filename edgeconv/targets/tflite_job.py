"""ONNX → TFLite in one child process: onnx2tf writes the SavedModel, then TFLiteConverter builds the precision asked
for. Run by the TFLite target as ``python -m edgeconv.targets.tflite_job JOB.json`` in onnx2tf's working directory.

The TFLite target imports ``tflite_from_saved_model`` from here for Keras sources (never the other way round).
One process for both steps imports TensorFlow once, and never into edgeconv's own process; onnx2tf's
process-wide settings (TF_USE_LEGACY_KERAS=1) stay in the child.

JOB.json: ``onnx2tf_args`` (onnx2tf's command line), ``saved_model``, ``precision``, ``io_dtype``, ``calibration``
(an .npz of stacked samples, one key per input, or null), ``output`` (the .tflite to write), ``error`` (where a
TFLiteConverter failure's message goes); ``check_only``: run onnx2tf alone (for its -cotof log);
``denylisted_nodes`` / ``float_ops_report``: the int8 guard's float layers, and where what became of them goes. Exit 0: done;
TFLITE_FAILED: onnx2tf worked and TFLiteConverter did not; anything else: onnx2tf failed (its own exit code).

The job dies with the conversion that started it, SIGKILL included (``die_with_parent``): a killed ``convert``
leaves no onnx2tf running on (docs/architecture.md, "Faults").
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import ConversionFailed
from edgeconv.toolchains.jobs._common import die_with_parent  # one copy, shared with the toolchains' jobs

TFLITE_FAILED = 70


def channel_last_perm(rank: int) -> list[int]:
    """The permutation onnx2tf applies to rank ≥ 3 tensors: channels (axis 1) move last."""
    return [0, *range(2, rank), 1]


def tflite_from_saved_model(tf, saved: Path, precision: str, samples: list[dict[str, np.ndarray]] | None, io_dtype: str,
                            moved: bool, denylisted_nodes: list[str] | None = None, from_signature: bool = False,
                            activations: str = "int8", report: dict[str, Any] | None = None) -> bytes:
    """TFLiteConverter for exactly one precision. ``moved``: onnx2tf made the graph channel-last, so the (source
    layout) calibration samples are transposed the same way. ``denylisted_nodes`` (int8): ops, by output tensor name,
    kept in float, through TensorFlow's QuantizationDebugger (the public route to the quantizer's denylist); ``report``
    receives what became of those names (``_with_float_ops``).
    ``activations="int16"`` (int8): TFLite's 16x8 mode, 16-bit activations with int8 weights (the int8 guard's lever;
    float I/O only). ``from_signature``: convert the loaded SavedModel's serving signature as a concrete function (the
    Keras route).
    ``from_saved_model`` on a Keras 3 export can keep a variable unfrozen: a Conv1D stack then gave NaN in LiteRT
    (READ_VARIABLE on an uninitialised variable without XNNPACK), where its concrete function converts correctly."""
    if from_signature:
        loaded = tf.saved_model.load(str(saved))
        conv = tf.lite.TFLiteConverter.from_concrete_functions([loaded.signatures["serving_default"]], loaded)
    else:
        conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if precision == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif precision == "int8-dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        names = list(samples[0])

        def representative():
            for s in samples:
                yield [np.transpose(s[n], channel_last_perm(s[n].ndim)) if moved and s[n].ndim >= 3 else s[n] for n in names]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if activations == "int16":
            if io_dtype != "float":
                raise ConversionFailed(f"16-bit activations keep float I/O; this conversion asks for {io_dtype} I/O")
            conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        elif io_dtype != "float":
            conv.inference_input_type = conv.inference_output_type = {"int8": tf.int8, "uint8": tf.uint8}[io_dtype]
    try:
        if precision == "int8" and denylisted_nodes:
            return _with_float_ops(tf, conv, representative, list(denylisted_nodes), io_dtype,
                                   report if report is not None else {})
        return conv.convert()
    except Exception as exc:
        raise ConversionFailed(f"TFLiteConverter failed for {precision}: {type(exc).__name__}: "
                               f"{first_line(str(exc), 400)}") from exc


def _with_float_ops(tf, conv, representative, names: list[str], io_dtype: str, report: dict[str, Any]) -> bytes:
    """The int8 model with the ops named ``names`` (their output tensors) in float, through the QuantizationDebugger's
    denylist. The quantizer matches a name against an op of the calibrated model whose one output carries it, and
    ignores any other name without a word: each name is looked up there first (the name the full-int8 model gives an
    op's QUANTIZE/DEQUANTIZE copy, the op's own with a digit appended, stands for the op), and the result is read
    back. ``report``
    receives ``denylisted`` (what was asked of the quantizer), ``renamed``, ``unmatched``, ``multi_output`` and
    ``not_float`` (matched ops that still compute in integers)."""
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=names, fully_quantize=io_dtype != "float")
    debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=representative, debug_options=options)
    calibrated = op_outputs(tf, debugger.calibrated_model)
    resolved = {n: resolve_float_op(n, calibrated) for n in names}
    # the debugger reads its options' denylist when it quantizes: the names as the calibrated graph spells them
    options.denylisted_nodes = list(dict.fromkeys(r for r in resolved.values() if r))
    data = debugger.get_nondebug_quantized_model()
    result = op_outputs(tf, data)
    report.update(
        denylisted=options.denylisted_nodes,
        renamed={n: r for n, r in resolved.items() if r and r != n},
        unmatched=[n for n, r in resolved.items() if r is None and n not in calibrated],
        multi_output={n: calibrated[n]["op"] for n, r in resolved.items() if r is None and n in calibrated},
        not_float=[r for r in options.denylisted_nodes if result.get(r, {}).get("dtype") not in ("float32", "float16")])
    return data


def op_outputs(tf, model: bytes) -> dict[str, dict[str, Any]]:
    """Every op output of a TFLite flatbuffer by tensor name: ``{op, dtype, outputs}`` (``outputs``: how many the op
    has)."""
    interp = tf.lite.Interpreter(model_content=model)
    tensors = {int(t["index"]): t for t in interp.get_tensor_details()}
    found = {}
    for op in interp._get_ops_details():  # the interpreter's own op listing; it has no public twin
        outs = [int(i) for i in op["outputs"] if i >= 0]
        for i in outs:
            found[tensors[i]["name"]] = {"op": op["op_name"], "dtype": np.dtype(tensors[i]["dtype"]).name, "outputs": len(outs)}
    return found


def resolve_float_op(name: str, calibrated: dict[str, dict[str, Any]]) -> str | None:
    """The calibrated graph's name of the op whose output ``name`` is, or None: the name itself, else (a full-int8
    model's QUANTIZE/DEQUANTIZE copy, ``X1``) the name without its last digit. Only single-output ops: the quantizer
    names an op with several outputs by all of them fused, which no denylist entry matches."""
    for candidate in (name, name[:-1] if name[-1:].isdigit() else None):
        if candidate and calibrated.get(candidate, {}).get("outputs") == 1:
            return candidate
    return None


def float_ops_notes(report: dict[str, Any], asked: int) -> list[str]:
    """The manifest's notes on an int8 conversion with float layers: which of the ``asked`` names TFLite's quantizer
    could not keep in float, and why."""
    notes = []
    if report.get("unmatched"):
        notes.append(f"float layers: {len(report['unmatched'])} of {asked} TFLite name(s) match no op of the converter's "
                     f"graph, so those ops stayed int8: {', '.join(report['unmatched'][:8])}")
    if report.get("multi_output"):
        named = ", ".join(f"{n} ({op})" for n, op in list(report["multi_output"].items())[:8])
        notes.append(f"float layers: {named}: an output of an op with several outputs, which TFLite's denylist cannot "
                     "name (that op stayed int8)")
    if report.get("not_float"):
        notes.append(f"float layers: {', '.join(report['not_float'][:8])} denylisted but still computed in int8 by "
                     "TFLiteConverter")
    if asked and not report.get("denylisted"):
        notes.append("float layers: none of the names matched: this model is the full-int8 one")
    kept = report.get("fp32_weights")
    if kept is not None:  # fp16 --fallback auto (edgeconv/targets/half.py)
        notes.append(f"fp16: {len(kept['ops'])} op(s) read their weights in fp32 ({len(kept['weights'])} weight tensor(s)) "
                     f"for ONNX node(s) {', '.join(kept['asked'][:8])}: {', '.join(kept['ops'][:4])}" if kept["ops"] else
                     f"fp16: no op with fp16 weights computes ONNX node(s) {', '.join(kept['asked'][:8])}: nothing kept in fp32")
    return notes


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    # skip_onnx2tf: the SavedModel (and the names map) came from convert --cache, already in place
    if not job.get("skip_onnx2tf"):
        code = _onnx2tf(job)
        if code:
            return code
    if job.get("check_only"):  # onnx2tf's own per-op check (-cotof): its log is the result
        return 0
    saved = Path(job["saved_model"])
    if not (saved / "saved_model.pb").exists():
        return 1

    import tensorflow as tf

    samples = None
    if job["calibration"]:
        with np.load(job["calibration"]) as z:
            stacked = {k: z[k] for k in z.files}
        samples = [{k: v[i] for k, v in stacked.items()} for i in range(len(next(iter(stacked.values()))))]
    report: dict[str, Any] = {}
    try:
        data = tflite_from_saved_model(tf, saved, job["precision"], samples, job["io_dtype"], moved=True,
                                       denylisted_nodes=job.get("denylisted_nodes"), activations=job.get("activations", "int8"),
                                       report=report)
        if job["precision"] == "fp16" and job.get("fp32_nodes"):
            data = _fp32_ops(tf, saved, data, job, report)
    except ConversionFailed as exc:
        Path(job["error"]).write_text(exc.message)
        return TFLITE_FAILED
    Path(job["output"]).write_bytes(data)
    if job.get("float_ops_report"):  # what became of the denylisted names
        Path(job["float_ops_report"]).write_text(json.dumps(report))
    return 0


def _fp32_ops(tf, saved: Path, data: bytes, job: dict[str, Any], report: dict[str, Any]) -> bytes:
    """fp16 ``--fallback auto``: the ops of ``fp32_nodes`` (ONNX nodes, through onnx2tf's recorded layer map) read their
    weights in fp32, from the same SavedModel converted without optimizations (edgeconv/targets/half.py)."""
    from edgeconv.targets.half import tflite_with_fp32_ops

    names = Path(job["names"]) if job.get("names") else None
    layer_node = json.loads(names.read_text()).get("layers", {}) if names and names.is_file() else {}
    fp32 = tflite_from_saved_model(tf, saved, "fp32", None, job["io_dtype"], moved=True)
    data, report["fp32_weights"] = tflite_with_fp32_ops(data, fp32, set(job["fp32_nodes"]), layer_node)
    report["fp32_weights"]["asked"] = list(job["fp32_nodes"])
    return data


def _onnx2tf(job: dict[str, Any]) -> int:
    """onnx2tf itself (the SavedModel), and which ONNX node each TensorFlow layer (and so each TFLite tensor) comes
    from, for edgeconv debug; its exit code (0: done)."""
    from onnx2tf import main as onnx2tf_main

    from edgeconv.debug.capture import record_onnx2tf_names

    names = record_onnx2tf_names() if job.get("names") else None  # before any layer
    sys.argv = ["onnx2tf", *job["onnx2tf_args"]]
    try:
        onnx2tf_main()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return exc.code if isinstance(exc.code, int) else 1
    if names is not None:
        Path(job["names"]).write_text(json.dumps(names))
    return 0


if __name__ == "__main__":
    die_with_parent(os.getppid())
    sys.exit(main(sys.argv[1:]))
