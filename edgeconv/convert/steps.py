"""The convert pipeline's steps, in order, each over the one ``ConvertState`` (see docs/architecture.md):

plan → load → load_data → (in the bundle being written) export → check_graph → check_onnx → build → check_artifact →
check_data → guard (edgeconv/convert/guard.py) → write (edgeconv/convert/manifest.py) → verdict.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edgeconv import quiet
from edgeconv.calibration import load_calibration
from edgeconv.canonical import CanonicalRecord, canonicalize_file, upgrade_ceiling
from edgeconv.convert.checks import EvalData, Evaluator, failure_reason
from edgeconv.convert.failures import converter_step, source_failure, tolerance_hint
from edgeconv.convert.request import ConvertRequest, ConvertResult, check_request, default_output
from edgeconv.convert.state import ConvertState
from edgeconv.core.accuracy import score_output
from edgeconv.data import classifier_output, feed_count, fixed_batch, load_inputs, run_batched
from edgeconv.errors import BadInput, CheckFailed, ConversionFailed, EdgeconvError
from edgeconv.export_cache import ExportCache, ExportSlot
from edgeconv.frontends import SourceModel, load_source
from edgeconv.frontends.base import ExportRecord
from edgeconv.onnx_tools import check_and_infer, io_specs
from edgeconv.parity import Tolerance
from edgeconv.profiles import resolve_profile
from edgeconv.progress import Steps
from edgeconv.shapes import ResolvedInputs, ShapeRequest, check_graph_memory, data_files, resolve
from edgeconv.specs import TensorSpec, random_inputs
from edgeconv.streaming import refuse_sequence
from edgeconv.target_options import check_for
from edgeconv.targets import TargetContext, TargetOptions, backend

REFERENCE_BATCHES = 4  # reference.npz holds this many batches of the model's batch size
# The canonical ONNX graph is fp32 whatever the device runs; this is its check when a profile has no fp32 entry.
CANONICAL_FP32 = Tolerance(atol=1e-4, min_cosine=0.99999)


def plan(req: ConvertRequest, steps: Steps) -> ConvertState:
    """The device profile, its backend and the options it accepts: everything refused before any work."""
    quiet.reset()  # the bundle's convert.log holds what the libraries print from here on
    profile = resolve_profile(req.target)
    if req.precision is None:
        req.precision = profile.default_precision
    target = backend(profile.backend)
    topts = TargetOptions(precision=req.precision, dynamic_batch=req.dynamic_batch,
                          extra=check_for(profile.backend, profile.name, req.target_extra))
    target.check_options(profile, topts)
    needs_calib = check_request(req, target, profile)
    return ConvertState(req, steps, profile, target, topts, needs_calib, req.output or default_output(req, profile),
                        ExportCache.from_request(req.cache_dir, req.model, req.load))


def resolve_inputs(source: SourceModel, req: ConvertRequest) -> ResolvedInputs:
    """The source's inputs with ``--input-shape`` applied, open dimensions and dtypes filled from ``--sample``,
    ``--data`` or ``--calib``, and the batch fixed (1) or made dynamic."""
    return resolve(source, ShapeRequest(req.input_shapes, req.input_dtypes, req.dynamic_batch,
                                        data_files(req.sample, req.data, req.calib.source if req.calib else None)))


def reference_feed(req: ConvertRequest, inputs: list[TensorSpec],
                   calib: list[dict[str, np.ndarray]] | None) -> tuple[dict[str, np.ndarray], str]:
    """Reference inputs and where they came from: ``--sample``; else real calibration samples (a quantized
    artifact is only meaningful on inputs from the distribution it was calibrated on); else seeded random."""
    batch = fixed_batch(inputs) or 2
    n_ref = batch * REFERENCE_BATCHES
    if req.sample is None and calib:
        take = calib[:n_ref] if len(calib) >= n_ref else calib[: len(calib) // batch * batch]
        if take:
            return ({k: np.concatenate([c[k] for c in take]) for k in take[0]},
                    f"{len(take)} calibration samples ({req.calib.source})")
    if req.sample is None:
        return random_inputs(inputs, batch=n_ref, seed=0), "random (seed 0)"
    feed, _ = load_inputs(req.sample, inputs, need_labels=False)
    n = feed_count(feed)
    if fixed_batch(inputs) and n % batch:
        raise BadInput(f"--sample {req.sample} has {n} samples; the model's fixed batch is {batch}: give a multiple")
    return feed, str(req.sample)


def _source_outputs(st: ConvertState, what: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The source's outputs on ``feed``: from the export cache when it has them, else run (and stored)."""
    def compute():
        return run_source(st.source, feed, st.batch)

    return st.cache.outputs(what, feed, st.batch, compute) if st.cache else compute()


def load(st: ConvertState) -> None:
    """The source model, its inputs resolved, calibration loaded, the reference feed and the source's outputs on it."""
    req = st.req
    with st.steps.step(f"Loading {req.model.name}"):
        st.source = (st.cache.source(req.model, lambda: load_source(req.model, req.load)) if st.cache
                     else load_source(req.model, req.load))
        st.target.check_source(st.source)
        for flag, path in (("--sample", req.sample), ("--data", req.data)):
            refuse_sequence(flag, path, st.source.inputs)
        st.resolved = resolve_inputs(st.source, req)
        st.notes = list(st.resolved.notes)
        if st.source.framework == "onnx":
            unchecked = check_graph_memory(st.source.proto, st.inputs)
            if unchecked:
                st.notes.append(unchecked)
        if st.needs_calib:
            st.calib_samples, st.calib_record = load_calibration(req.calib, st.inputs)
        real_calib = None if st.calib_record and st.calib_record["random"] else st.calib_samples
        st.feed, st.feed_origin = reference_feed(req, st.inputs, real_calib)
        if not st.feed or not feed_count(st.feed):  # never run: every check would pass on nothing
            raise BadInput(f"the reference inputs ({st.feed_origin}) hold no samples: there is nothing to check the "
                           "conversion on", hint="give data with at least one sample (first axis = samples)")
        st.expected = _source_outputs(st, "reference_outputs", st.feed)
        if st.source.framework == "onnx" and st.source.reference_note:  # ONNX Runtime refused the original graph
            st.notes.append(st.source.reference_note)
            st.steps.note(st.source.reference_note)
        load_data(st)


def load_data(st: ConvertState) -> None:
    """``--data``: its inputs and labels, and the source's own outputs on it, once (the accuracy check, accuracy-controlled
    quantization and the int8 guard share them)."""
    req = st.req
    if req.data is None:
        return
    feed, labels = load_inputs(req.data, st.inputs, need_labels=req.max_accuracy_drop is not None)
    scores = _source_outputs(st, "data_outputs", feed)
    index = classifier_output(scores)
    if index is None and labels is not None:
        raise BadInput(f"{req.data} has labels 'y', which need a classifier output of shape (N, classes); this model "
                       "has none", hint="leave 'y' out: unlabelled --data measures the artifact's agreement with the source")
    st.data = EvalData(req.data, feed, labels, scores, index)
    if req.finetune is not None:
        st.train = _train_set(st)


def _train_set(st: ConvertState):
    """``--finetune TRAIN.npz`` read and checked before any work: it fine-tunes a PyTorch classifier."""
    from edgeconv.convert.qat import load_train_set

    req, data = st.req, st.data
    if st.source.framework != "torch":
        raise BadInput(f"--finetune fine-tunes a PyTorch source with quantization in the loop; {req.model.name} is a "
                       f"{st.source.framework} model", hint="leave --finetune out: the guard's other levers apply")
    classes = int(data.source_outputs[data.score_index].shape[1]) if data and data.score_index is not None else None
    return load_train_set(req.finetune, st.inputs, classes, req.epochs, req.lr)


def _export_opset(st: ConvertState) -> int | None:
    """The opset to export at: --opset; else the device's ceiling when the exporter's default is above it; else the
    target's preferred opset when the exporter can write it."""
    req, profile, source, target = st.req, st.profile, st.source, st.target
    if req.opset is not None:
        return req.opset
    if profile.max_opset and source.default_opset and source.default_opset > profile.max_opset:
        st.notes.append(f"exported at opset {profile.max_opset}, the highest {profile.name} accepts "
                        f"(default {source.default_opset})")
        return profile.max_opset  # the device's parser is the limit; an explicit --opset above it fails preflight
    if (target.preferred_opset and source.default_opset and source.max_export_opset
            and source.default_opset < target.preferred_opset <= min(source.max_export_opset, profile.max_opset or 10**6)):
        st.notes.append(f"exported at opset {target.preferred_opset} (default {source.default_opset}): "
                        f"{target.preferred_opset_why}")
        return target.preferred_opset
    return None


def export(st: ConvertState) -> None:
    """The source → ONNX export and the canonical step (old opsets upgraded, constants folded), or both from the cache."""
    req, profile = st.req, st.profile
    st.export_opset = _export_opset(st)
    settings = {"inputs": [s.to_dict() for s in st.inputs], "opset": st.export_opset, "dynamic_batch": req.dynamic_batch,
                "upgrade_ceiling": upgrade_ceiling(req.opset or profile.max_opset)}  # the lowering follows from "opset"
    with st.cache.export(settings, st.onnx_path) if st.cache else contextlib.nullcontext(ExportSlot()) as slot:
        if slot.hit:
            st.record, st.canon = slot.hit
            st.steps.note(f"ONNX export and canonical graph from the cache ({st.cache.dir})")
            return
        st.record, st.canon = export_graph(st, st.source, st.onnx_path)
        slot.keep(st.record, st.canon)


def export_graph(st: ConvertState, source: SourceModel, onnx_path: Path) -> tuple[ExportRecord, CanonicalRecord]:
    """``source`` exported to ONNX at ``onnx_path`` at this conversion's opset and inputs, then the canonical step (the
    source itself, or the int8 guard's fine-tuned model)."""
    with st.steps.step(f"Exporting ONNX ({source.frontend})"), \
            converter_step(f"{source.framework} → ONNX export", st.failed_dir):
        record = source.export_onnx(onnx_path, inputs=st.inputs, opset=st.export_opset, dynamic_batch=st.req.dynamic_batch)
    with st.steps.step("Canonical ONNX graph (old opsets upgraded, constants folded)"):
        canon = canonicalize_file(onnx_path, max_opset=st.req.opset or st.profile.max_opset,
                                  keep_inputs=[s.name for s in st.inputs], constant_inputs=record.constant_inputs,
                                  lower_to=st.req.opset or st.profile.max_opset)
    return record, canon


def check_graph(st: ConvertState) -> None:
    """onnx.checker and shape inference on the canonical graph; its inputs must be the source's."""
    with st.steps.step("Checking the ONNX graph (onnx.checker, shape inference)"):
        st.proto = check_and_infer(st.onnx_path)
        onnx_inputs, st.outputs = io_specs(st.proto)
        layouts = {s.name: s.layout for s in st.inputs}
        st.onnx_inputs = [TensorSpec(s.name, s.shape, s.dtype, layouts.get(s.name)) for s in onnx_inputs]
        if [s.name for s in st.onnx_inputs] != [s.name for s in st.inputs]:
            raise ConversionFailed(f"the exported graph's inputs {[s.name for s in st.onnx_inputs]} differ from the "
                                   f"source's {[s.name for s in st.inputs]}")
    if st.data is not None:  # the scored output, by --score-output, its name, the labels' range (the graph's names now)
        st.data.score_index, st.data.score_by = score_output(st.names, st.data.source_outputs, st.data.labels,
                                                             st.req.score_output)
    st.evaluator = Evaluator(st.source.framework, st.names, st.expected, st.feed, st.batch,
                             st.profile.tolerance(st.req.precision), st.req.atol, st.data, st.req.max_accuracy_drop)


def check_onnx(st: ConvertState) -> None:
    """The canonical ONNX graph on ONNX Runtime against the source, on the reference feed (fp32 tolerance)."""
    framework = st.source.framework
    with st.steps.step(f"Checking ONNX against {framework} on {feed_count(st.feed)} reference samples"), \
            converter_step("running the exported ONNX graph on onnxruntime", st.failed_dir):
        rep = st.evaluator.parity(f"onnx (onnxruntime) vs {framework}", st.onnx_path, "onnxruntime",
                                  st.profile.tolerances.get("fp32", CANONICAL_FP32))
        st.checks.append({"kind": "parity", **rep.to_dict()})
        if not rep.ok:
            raise ConversionFailed(f"the exported ONNX graph does not compute what the {framework} model computes",
                                   details=rep.failure_text(), hint=tolerance_hint(st.profile))


def build(st: ConvertState) -> None:
    """Preflight for the device, then the target's conversion of the canonical graph into the bundle."""
    req, profile = st.req, st.profile
    with st.steps.step(f"Preflight for {profile.name}"):
        st.target.preflight(st.proto, profile, st.topts)
    # accuracy-aware quantization by the target itself (NNCF's accuracy control), unless the int8 guard does it
    data = st.data
    accuracy_aware = data is not None and data.labels is not None and req.max_accuracy_drop is not None and req.fallback != "auto"
    st.ctx = TargetContext(
        source_model=st.source, reference_inputs=st.feed, input_shapes={s.name: s.shape for s in st.onnx_inputs},
        output_shapes={s.name: s.shape for s in st.outputs}, layouts={s.name: s.layout for s in st.onnx_inputs},
        failed_build_dir=st.failed_dir, calibration=st.calib_samples,
        accuracy_data=(data.feed, data.labels, data.score_index) if accuracy_aware else None,
        max_accuracy_drop=req.max_accuracy_drop if accuracy_aware else None, cache=st.cache,
        float_layers=list(st.fp16_float_layers))
    st.check_overrides = st.target.check_runner_options(req.precision, profile)
    with st.steps.step(f"Converting for {profile.name} ({req.precision})"), converter_step(
            f"the {profile.backend} conversion ({req.precision})", st.failed_dir):
        st.conversion = st.target.convert(st.onnx_path, st.work, profile, st.topts, st.ctx)


def check_artifact(st: ConvertState) -> None:
    """The artifact on its runtime against the source. An artifact that misses parity is kept, marked failed, so
    ``edgeconv debug`` can open it; the conversion still fails (``verdict``)."""
    if st.is_onnx_itself:
        return
    req, art = st.req, st.model_art
    with st.steps.step(f"Checking the {req.precision} artifact against {st.source.framework}"), converter_step(
            f"running the {req.precision} artifact {art.file} on {art.runner}", st.failed_dir):
        rep = st.evaluator.artifact_parity(st.work, art, st.check_options)
    st.artifact_parity = rep
    st.checks.append({"kind": "parity", **rep.to_dict()})
    st.parity_miss = None if rep.ok else rep


def check_data(st: ConvertState) -> None:
    """The target's own checks (e.g. the Edge TPU mapping), then accuracy on labelled --data or agreement on unlabelled."""
    st.checks += st.conversion.checks
    data, art = st.data, st.model_art
    if data is None:
        return
    if data.labels is not None:
        with st.steps.step(f"Measuring accuracy on {data.path.name}"), converter_step(
                f"running {art.file} on {art.runner}", st.failed_dir):
            st.source_accuracy, st.accuracy_check = st.evaluator.accuracy(st.work, art, st.check_options)
        return
    with st.steps.step(f"Checking agreement with {st.source.framework} on {data.path.name} (no labels)"), converter_step(
            f"running {art.file} on {art.runner}", st.failed_dir):
        st.checks.append(st.evaluator.agreement(st.work, art, st.check_options))


def verdict(st: ConvertState) -> ConvertResult:
    """The bundle is written; a check it failed is reported now, as the error the CLI maps to an exit code."""
    req, out = st.req, st.out
    result = ConvertResult(out, st.manifest)
    # the int8 guard's miss is reported as the budget it missed
    guard_missed = st.fallback_record is not None and not st.fallback_record["ok"] and req.precision.startswith("int8")
    kept = f"the bundle at {out} is kept and marked failed in its manifest"
    # a target's check that names where its converter went wrong (TFLite: onnx2tf's translation) is the error to report
    wrong = next((c for c in st.checks if not c["ok"] and c.get("conversion_error")), None)
    if wrong is not None:
        raise ConversionFailed(f"{wrong['reason']}; {kept}", details=wrong["details"],
                               hint=f"`edgeconv debug {out} --data DATA` names the first diverging layer; " + wrong["hint"])
    if not st.is_onnx_itself and st.parity_miss is not None and not guard_missed:
        raise ConversionFailed(
            f"the {req.precision} artifact for {st.profile.name} does not compute what the source computes; {kept}",
            details=st.parity_miss.failure_text(),
            hint=f"`edgeconv debug {out} --data DATA` shows which layer loses the accuracy; " + tolerance_hint(st.profile))
    if not result.ok:
        reasons = [failure_reason(c, st.fallback_record if req.fallback == "auto" else None, req.max_accuracy_drop)
                   for c in st.checks if not c["ok"]]
        raise CheckFailed("; ".join(reasons) + f"; {kept}")
    return result


def run_source(source: SourceModel, feed: dict[str, np.ndarray], batch: int | None) -> list[np.ndarray]:
    """The source model's own outputs on ``feed``; its failure on such inputs is the user's bad input, explained."""
    try:
        return run_batched(source.run, feed, batch)
    except EdgeconvError:
        raise
    except Exception as exc:
        raise source_failure(source.framework, feed, exc) from exc
