"""The int8 guard (``convert --fallback auto``), one convert step: when the full-int8 artifact misses its goal
(``--max-accuracy-drop`` on labelled ``--data``; else agreement with the source on unlabelled ``--data``; else parity on
the reference samples, so detectors and regressors are guarded too), it pulls the levers the backend has, in order,
each through the backend's own mechanism, and keeps the first artifact within budget (else the best it found):

1. calibration: the backend's other calibration methods (``Target.calibration_methods``);
2. packed outputs: an output packing quantities of very different ranges, written in float at its last layer;
3. float layers: layers kept in float (``TargetContext.float_layers``), one more at a time up to ``--max-float-layers``,
   ranked by what keeping each one in float does to the goal's metric (measured, with a time cap), the
   debugger's SNR ranking (``edgeconv debug``) choosing which layers are measured;
4. 16-bit activations where the backend has them (``Target.int16_activations``);
5. quantization-aware fine-tuning on ``--finetune`` (a PyTorch source), then the backend's int8 of the fine-tuned graph
   (edgeconv/convert/qat.py); when it is kept, the bundle carries ``finetuned.pt2`` and its reference outputs.

``--levers`` picks and orders them.

The record lists every attempt with its drop and p50 latency. A target's own accuracy control (OpenVINO: NNCF) gets the
same record from edgeconv/convert/accuracy_control.py. See docs/architecture.md.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeconv.convert.accuracy_control import accuracy_control_record
from edgeconv.convert.attempts import Attempt, Guard, GuardJob, Tuned, cost, p50_ms, size_of
from edgeconv.convert.levers import LEVERS
from edgeconv.convert.state import ConvertState
from edgeconv.convert.steps import CANONICAL_FP32, export_graph, run_source
from edgeconv.data import accuracy
from edgeconv.errors import ConversionFailed, PreflightError
from edgeconv.export_cache import layer_names
from edgeconv.frontends import LoadOptions, load_source


def _goal(st: ConvertState) -> tuple[str, dict[str, Any]] | None:
    """What the full-int8 artifact missed, as the guard's goal: the accuracy budget on labelled --data; else agreement
    with the source on unlabelled --data; else parity on the reference samples. None: nothing was missed."""
    if st.accuracy_check is not None and st.req.max_accuracy_drop is not None:
        return None if st.accuracy_check["ok"] else ("accuracy", st.accuracy_check)
    agreement = next((c for c in st.checks if c["kind"] == "agreement"), None)
    if agreement is not None:
        return None if agreement["ok"] else ("agreement", agreement)
    if st.parity_miss is not None:
        return "parity", {"kind": "parity", **st.parity_miss.to_dict()}
    return None


def guard_step(st: ConvertState) -> None:
    """The convert step: the guard when ``--fallback auto`` and the full-int8 artifact missed its goal; the record of
    the target's own accuracy control when it kept layers in float."""
    if st.req.fallback != "auto":
        if st.accuracy_check is not None and st.conversion.accuracy_control is not None:
            st.fallback_record = accuracy_control_record(st)
        return
    if st.req.precision == "fp16":  # the fp16 fallback ran at the build (edgeconv/convert/fp16_fallback.py)
        return
    goal = _goal(st)
    if goal is None:
        return
    kind, missed = goal
    job = GuardJob(st.target, st.profile, st.topts, st.ctx, st.onnx_path, st.work, st.evaluator, st.check_overrides,
                   st.failed_dir, st.req.max_float_layers, layer_names(st.source) or [], st.steps, kind, st.req.model,
                   st.req.load, st.req.levers, (lambda dest: _tune(st, dest)) if st.train is not None else None)
    first = Attempt("int8", "full int8", st.ctx.quant, st.work, st.conversion, st.artifact_parity,
                    {"kind": "parity", **st.artifact_parity.to_dict()}, missed)
    kept, st.fallback_record = guard(job, first)
    if kept.tuned is not None:
        _keep_tuned(st, kept.tuned)
    st.conversion = kept.conversion
    st.parity_miss = None if kept.parity.ok else kept.parity
    # the full-int8 figures are in the fallback record
    st.checks = [st.checks[0], kept.parity_check, *kept.conversion.checks]
    if kind == "accuracy":
        st.accuracy_check = kept.goal_check
    elif kind == "agreement":
        st.checks.append(kept.goal_check)


def guard(job: GuardJob, first: Attempt) -> tuple[Attempt, dict[str, Any]]:
    """Pull the levers in order until the budget holds; keep the best attempt's files in ``job.work``. Returns it with
    the fallback record."""
    if not getattr(job.target, "float_fallback", False):
        raise PreflightError(f"--fallback auto: target {job.profile.name} ({job.profile.backend}) has no way to keep layers "
                             "in float")
    g = Guard(job, first)
    try:
        levers_tried = []
        for name in job.levers or LEVERS:
            if g.within_budget():
                break
            note = LEVERS[name](g)
            if note:
                levers_tried.append(note)
        best = g.best
        if best is first and not g.attempts:
            raise PreflightError("--fallback auto: the guard found no lever to pull on this artifact",
                                 hint="; ".join(n["name"] + ": " + (n.get("skipped") or "") for n in levers_tried))
        record = _record(g, best, levers_tried)
        if best is not first:
            shutil.copytree(best.dir, job.work, dirs_exist_ok=True)
        if best.tuned is not None:  # the graph and the model it was built from
            shutil.copyfile(best.tuned.onnx_path, job.onnx_path)
            shutil.copyfile(best.tuned.pt2, job.work / best.tuned.pt2.name)
    finally:
        g.close()
    return best, record


def _tune(st: ConvertState, dest: Path) -> Tuned:
    """The qat lever's fine-tuning (edgeconv/convert/qat.py), its ONNX graph through the same export and canonical step
    as the source's and checked against it, its outputs on the reference feed, and its float top-1 on --data."""
    from edgeconv.convert.qat import finetune_source

    train, data = st.train, st.data
    with st.steps.step(f"int8 guard: quantization-aware fine-tuning on {train.path.name} ({train.epochs} epochs)"):
        pt2, history = finetune_source(st.source, st.inputs, train, data.score_index, dest)
    source = load_source(pt2, LoadOptions())
    onnx_path = dest / "model.onnx"
    export_graph(st, source, onnx_path)
    expected = run_source(source, st.feed, st.batch)
    with st.steps.step("int8 guard: checking the fine-tuned ONNX graph against the fine-tuned model"):
        rep = replace(st.evaluator, expected=expected).parity("fine-tuned onnx (onnxruntime) vs torch", onnx_path,
                                                              "onnxruntime", st.profile.tolerances.get("fp32", CANONICAL_FP32))
    if not rep.ok:
        raise ConversionFailed("the fine-tuned model's ONNX graph does not compute what it computes", details=rep.failure_text())
    tuned_top1 = accuracy(run_source(source, data.feed, st.batch)[data.score_index], data.labels)["top1"]
    record = {"finetune": train.to_dict(), "history": history,
              "float_top1": {"source": accuracy(data.source_outputs[data.score_index], data.labels)["top1"],
                             "finetuned": tuned_top1, "data": str(data.path)},
              "mechanism": "torchao PT2E prepare_qat_pt2e (X86InductorQuantizer, QAT config: weights per channel, "
                           "activations per tensor), Adam, cross-entropy; the backend then quantizes the fine-tuned graph"}
    return Tuned(source, pt2, onnx_path, expected, record, {"kind": "parity", **rep.to_dict()})


def _keep_tuned(st: ConvertState, tuned: Tuned) -> None:
    """The fine-tuned artifact is kept (``guard`` copied its graph and its model into the bundle): the reference outputs
    are the fine-tuned model's too (validate then checks the artifact against what it was built from), and the bundle
    says so."""
    st.expected = tuned.expected
    st.checks[0] = tuned.onnx_parity
    st.notes.append(f"the int8 guard fine-tuned the model with quantization in the loop on {st.train.path.name}: the "
                    f"artifact, model.onnx and reference.npz are those of {tuned.pt2.name} (in the bundle); accuracy drops "
                    "are against the source")
    st.fallback_record["finetuned"] = {"file": tuned.pt2.name, **tuned.record}


def _record(g: Guard, best: Attempt, levers: list[dict[str, Any]]) -> dict[str, Any]:
    job, first = g.job, g.first
    with job.steps.step("int8 guard: p50 latency of the full-int8 artifact and of the artifact kept"):
        first.p50_ms = p50_ms(first.dir, first.model, first.options(job.runner_options), g.sample)
        if best is not first:
            best.p50_ms = p50_ms(best.dir, best.model, best.options(job.runner_options), g.sample)
    ranking = next((n for n in levers if n.get("ranking")), {}).get("ranking")
    accuracy = job.goal == "accuracy"
    return {
        "mode": "auto",
        "ok": best.ok,
        "goal": job.goal,
        "score": {"metric": first.score_name, "before": first.score, "after": best.score},
        "max_float_layers": job.max_float_layers,
        "max_accuracy_drop": first.goal_check.get("max_drop_points"),
        "ranked_by": next((n["ranked_by"] for n in levers if n.get("ranked_by")), None),
        "mechanism": _mechanism(job.profile.backend),
        "kept": {"lever": best.lever, "label": best.label, "settings": best.settings.to_dict()},
        "float_layers": best.float_layers,
        "candidates": ranking,
        "levers": levers,
        "drop_before": first.score if accuracy else None,
        "drop_after": best.score if accuracy else None,
        "accuracy_before": first.goal_check["artifact"] if accuracy else None,
        "accuracy_after": best.goal_check["artifact"] if accuracy else None,
        "attempts": [a.row() for a in g.attempts],
        "cost": cost(size_of(first.dir, first.conversion), size_of(best.dir, best.conversion), first.p50_ms, best.p50_ms,
                     best.model.runner, job.evaluator.batch),
    }


def _mechanism(backend: str) -> str:
    return {"jetson": "onnxruntime.quantization.quantize_static nodes_to_exclude (no Q/DQ around those nodes)",
            "onnx": "onnxruntime.quantization.quantize_static nodes_to_exclude (no Q/DQ around those nodes)",
            "openvino": "nncf.quantize ignored_scope (no FakeQuantize on those ops)",
            "rknn": "rknn-toolkit2 hybrid_quantization_step1/2 (those layers' tensors float16 in custom_quantize_layers, "
                    "int16 where the calibrated range would overflow fp16)",
            "tflite": "tf.lite.experimental.QuantizationDebugger denylisted_nodes (those ops stay float, between "
                      "DEQUANTIZE/QUANTIZE)"}.get(backend, "tf.lite.experimental.QuantizationDebugger denylisted_nodes (those "
                                                          "ops run on the CPU in float)")
