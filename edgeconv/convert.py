"""``edgeconv convert``: source → checked ONNX → target artifact(s) → bundle, with every check recorded."""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv import __version__
from edgeconv.bundle import MANIFEST, REFERENCE, SCHEMA_VERSION, BundleWriter, save_reference, write_json
from edgeconv.calibration import CalibrationRequest, load_calibration
from edgeconv.canonical import canonicalize_file, upgrade_ceiling
from edgeconv.data import accuracy, classifier_output, data_record, load_inputs, run_batched
from edgeconv.errors import ArtifactRefused, BadInput, CheckFailed, ConversionFailed, EdgeconvError, converter_of
from edgeconv.export_cache import ExportCache, ExportSlot, layer_names
from edgeconv.frontends import LoadOptions, SourceModel, load_source
from edgeconv.lazy import version_of
from edgeconv.onnx_tools import check_and_infer, io_specs
from edgeconv.parity import ParityReport, Tolerance, compare
from edgeconv.profiles import Profile, resolve_profile
from edgeconv.progress import Steps
from edgeconv.runners import open_runner
from edgeconv.shapes import ResolvedInputs, ShapeRequest, check_graph_memory, data_files, resolve
from edgeconv.specs import Dim, TensorSpec, random_inputs, sha256_of
from edgeconv.target_options import check_for
from edgeconv.targets import Artifact, TargetContext, TargetOptions, backend

REFERENCE_BATCHES = 4
DEVICE_RUNNER = Path(__file__).resolve().parent / "device" / "edgeconv_runner.py"
# The canonical ONNX graph is fp32 whatever the device runs; this is its check when a profile has no fp32 entry.
CANONICAL_FP32 = Tolerance(atol=1e-4, min_cosine=0.99999)  # reference.npz holds this many batches of the model's batch size


@dataclass
class ConvertRequest:
    model: Path
    target: str = "onnx"
    precision: str | None = None  # None: the profile's default_precision (fp32 unless the device says otherwise)
    output: Path | None = None
    force: bool = False
    input_shapes: dict[str | None, list[Dim]] = field(default_factory=dict)
    input_dtypes: dict[str | None, str] = field(default_factory=dict)  # for sources that keep none (TorchScript)
    dynamic_batch: bool = False
    opset: int | None = None
    load: LoadOptions = field(default_factory=LoadOptions)
    sample: Path | None = None
    atol: dict[str | None, float] = field(default_factory=dict)
    data: Path | None = None
    max_accuracy_drop: float | None = None
    calib: CalibrationRequest | None = None
    fallback: str = "none"  # "auto": the int8 guard keeps the most harmful layers in float until --max-accuracy-drop holds
    max_float_layers: int = 3
    target_extra: dict[str, Any] = field(default_factory=dict)  # the target's own options (edgeconv/target_options.py)
    cache_dir: Path | None = None  # --cache (else $EDGECONV_CACHE_DIR): edgeconv/export_cache.py
    command_line: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class ConvertResult:
    bundle: Path
    manifest: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.manifest["status"] == "ok"


def default_output(req: ConvertRequest, profile: Profile) -> Path:
    return Path(f"{req.model.stem}-{profile.name}-{req.precision}")


def resolve_inputs(source: SourceModel, req: ConvertRequest) -> ResolvedInputs:
    """The source's inputs with ``--input-shape`` applied, open dimensions and dtypes filled from ``--sample``,
    ``--data`` or ``--calib``, and the batch fixed (1) or made dynamic."""
    return resolve(source, ShapeRequest(req.input_shapes, req.input_dtypes, req.dynamic_batch,
                                        data_files(req.sample, req.data, req.calib.source if req.calib else None)))


def reference_feed(req: ConvertRequest, inputs: list[TensorSpec],
                   calib: list[dict[str, np.ndarray]] | None) -> tuple[dict[str, np.ndarray], str]:
    """Reference inputs and where they came from: ``--sample``; else real calibration samples (a quantized
    artifact is only meaningful on inputs from the distribution it was calibrated on); else seeded random."""
    batch = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else 2
    n_ref = batch * REFERENCE_BATCHES
    if req.sample is None and calib:
        take = calib[:n_ref] if len(calib) >= n_ref else calib[: len(calib) // batch * batch]
        if take:
            return {k: np.concatenate([c[k] for c in take]) for k in take[0]}, f"{len(take)} calibration samples ({req.calib.source})"
    if req.sample is None:
        return random_inputs(inputs, batch=n_ref, seed=0), "random (seed 0)"
    feed, _ = load_inputs(req.sample, inputs, need_labels=False)
    n = len(next(iter(feed.values())))
    if isinstance(inputs[0].shape[0], int) and n % batch:
        raise BadInput(f"--sample {req.sample} has {n} samples; the model's fixed batch is {batch}: give a multiple")
    return feed, str(req.sample)


@contextlib.contextmanager
def converter_step(what: str, failed_dir: Path):
    """An exception that a converter library raises becomes a ConversionFailed naming the library, with the
    traceback kept in the failed-build directory; one raised by edgeconv's own code stays what it is (a bug)."""
    try:
        yield
    except ArtifactRefused as exc:  # the file was written by this conversion: its runtime refusing it is this conversion's failure
        raise ConversionFailed(f"{what}: {exc.message}",
                               hint="the converter produced a file its runtime refuses; another --precision or target may "
                                    "avoid it (please report the model)") from exc
    except EdgeconvError:
        raise
    except Exception as exc:
        lib = converter_of(exc)
        if lib is None:
            raise
        import traceback

        failed_dir.mkdir(parents=True, exist_ok=True)
        log = failed_dir / "converter-traceback.txt"
        log.write_text("".join(traceback.format_exception(exc)))
        first = (str(exc).strip().splitlines() or [""])[0][:400]
        raise ConversionFailed(f"{what} failed inside {lib}: {type(exc).__name__}: {first}",
                               hint=f"the converter's traceback is in {log}; another target or --opset may avoid it") from exc


def _host() -> dict[str, str]:
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def _parity(label, names, expected, artifact: Path, runner: str, batch: int | None, feed, tol, atol,
            options: dict[str, Any] | None = None) -> ParityReport:
    with open_runner(runner, artifact, options=options) as r:
        actual = run_batched(r.infer, feed, batch)
    return compare(label, names, expected, actual, tol, atol)


def convert(req: ConvertRequest, steps: Steps | None = None) -> ConvertResult:
    steps = steps or Steps()
    profile = resolve_profile(req.target)
    if req.precision is None:
        req.precision = profile.raw.get("default_precision", "fp32")
    target = backend(profile.backend)
    topts = TargetOptions(precision=req.precision, dynamic_batch=req.dynamic_batch,
                          extra=check_for(profile.backend, profile.name, req.target_extra))
    target.check_options(profile, topts)
    needs_calib = req.precision in getattr(target, "needs_calibration", ())
    if needs_calib and req.calib is None:
        raise BadInput(
            f"--precision {req.precision} for {profile.name} needs calibration data: pass --calib FILE.npz (or a folder of images)",
            hint="--calib random exists to try the pipeline; the result is then flagged as uncalibrated everywhere",
        )
    if req.calib is not None and not needs_calib:
        raise BadInput(f"--calib applies to int8 conversions; {profile.name} {req.precision} does not calibrate")
    if req.max_accuracy_drop is not None and req.data is None:
        raise BadInput("--max-accuracy-drop needs --data (a labelled .npz) to measure accuracy on")
    _check_fallback(req, target, profile)
    out = req.output or default_output(req, profile)

    cache = ExportCache.from_request(req.cache_dir, req.model, req.load)
    cached = (lambda what, feed, compute: cache.outputs(what, feed, batch, compute)) if cache else (lambda what, feed, compute: compute())
    with steps.step(f"Loading {req.model.name}"):
        source = cache.source(req.model, lambda: load_source(req.model, req.load)) if cache else load_source(req.model, req.load)
        target.check_source(source)
        resolved = resolve_inputs(source, req)
        inputs, shape_notes = resolved.specs, list(resolved.notes)
        if source.framework == "onnx":
            check_graph_memory(source.proto, inputs)
        calib_samples = calib_record = None
        if needs_calib:
            calib_samples, calib_record = load_calibration(req.calib, inputs)
        feed, feed_origin = reference_feed(req, inputs, None if calib_record and calib_record["random"] else calib_samples)
        batch = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else None
        expected = cached("reference_outputs", feed, lambda: _run_source(source, feed, batch))
        data_feed = labels = None
        if req.data is not None:
            data_feed, labels = load_inputs(req.data, inputs, need_labels=req.max_accuracy_drop is not None)
            # the source's own outputs on --data, once: the accuracy check and accuracy-controlled quantization share them
            data_scores = cached("data_outputs", data_feed, lambda: _run_source(source, data_feed, batch))
            score_index = classifier_output(data_scores)
            if score_index is None and labels is not None:
                raise BadInput(f"{req.data} has labels 'y', which need a classifier output of shape (N, classes); this model "
                               "has none", hint="leave 'y' out: unlabelled --data measures the artifact's agreement with the source")

    with BundleWriter(out, req.force) as work:
        onnx_path = work / "model.onnx"
        opset = req.opset
        if opset is None and profile.max_opset and source.default_opset and source.default_opset > profile.max_opset:
            opset = profile.max_opset  # the device's parser is the limit; an explicit --opset above it fails preflight
            shape_notes.append(f"exported at opset {opset}, the highest {profile.name} accepts (default {source.default_opset})")
        elif (opset is None and target.preferred_opset and source.default_opset and source.max_export_opset
              and source.default_opset < target.preferred_opset <= min(source.max_export_opset, profile.max_opset or 10**6)):
            opset = target.preferred_opset
            shape_notes.append(f"exported at opset {opset} (default {source.default_opset}): {target.preferred_opset_why}")
        failed_dir = out.with_name(out.name + ".failed-build")
        settings = {"inputs": [s.to_dict() for s in inputs], "opset": opset, "dynamic_batch": req.dynamic_batch,
                    "upgrade_ceiling": upgrade_ceiling(req.opset or profile.max_opset)}
        with cache.export(settings, onnx_path) if cache else contextlib.nullcontext(ExportSlot()) as slot:
            if slot.hit:
                record, canon = slot.hit
                steps.note(f"ONNX export and canonical graph from the cache ({cache.dir})")
            else:
                with steps.step(f"Exporting ONNX ({source.frontend})"), converter_step(f"{source.framework} → ONNX export", failed_dir):
                    record = source.export_onnx(onnx_path, inputs=inputs, opset=opset, dynamic_batch=req.dynamic_batch)
                with steps.step("Canonical ONNX graph (old opsets upgraded, constants folded)"):
                    canon = canonicalize_file(onnx_path, max_opset=req.opset or profile.max_opset,
                                              keep_inputs=[s.name for s in inputs], constant_inputs=record.constant_inputs)
                slot.keep(record, canon)
        with steps.step("Checking the ONNX graph (onnx.checker, shape inference)"):
            proto = check_and_infer(onnx_path)
            onnx_inputs, outputs = io_specs(proto)
            layouts = {s.name: s.layout for s in inputs}
            onnx_inputs = [TensorSpec(s.name, s.shape, s.dtype, layouts.get(s.name)) for s in onnx_inputs]
            if [s.name for s in onnx_inputs] != [s.name for s in inputs]:
                raise ConversionFailed(f"the exported graph's inputs {[s.name for s in onnx_inputs]} differ from the source's {[s.name for s in inputs]}")
            names = [s.name for s in outputs]
        checks: list[dict[str, Any]] = []
        with steps.step(f"Checking ONNX against {source.framework} on {len(next(iter(feed.values())))} reference samples"), \
                converter_step("running the exported ONNX graph on onnxruntime", failed_dir):
            rep = _parity(f"onnx (onnxruntime) vs {source.framework}", names, expected, onnx_path, "onnxruntime",
                          batch, feed, profile.tolerances.get("fp32", CANONICAL_FP32), req.atol)
            checks.append({"kind": "parity", **rep.to_dict()})
            if not rep.ok:
                raise ConversionFailed(f"the exported ONNX graph does not compute what the {source.framework} model computes",
                                       details=rep.failure_text(), hint=_tolerance_hint(profile))
        with steps.step(f"Preflight for {profile.name}"):
            target.preflight(proto, profile, topts)
        # accuracy-aware quantization by the target itself (NNCF's accuracy control), unless the int8 guard does it
        accuracy_aware = labels is not None and req.max_accuracy_drop is not None and req.fallback != "auto"
        ctx = TargetContext(
            source_model=source, reference_inputs=feed, input_shapes={s.name: s.shape for s in onnx_inputs},
            output_shapes={s.name: s.shape for s in outputs}, layouts={s.name: s.layout for s in onnx_inputs},
            failed_build_dir=failed_dir, calibration=calib_samples,
            accuracy_data=(data_feed, labels, score_index) if accuracy_aware else None,
            max_accuracy_drop=req.max_accuracy_drop if accuracy_aware else None, cache=cache)
        check_overrides = target.check_runner_options(req.precision, profile)
        with steps.step(f"Converting for {profile.name} ({req.precision})"), converter_step(
                f"the {profile.backend} conversion ({req.precision})", failed_dir):
            conversion = target.convert(onnx_path, work, profile, topts, ctx)
        artifacts = conversion.artifacts
        model_art = next(a for a in artifacts if a.role == "model")
        check_options = {**model_art.extra.get("runner_options", {}), **check_overrides}
        if model_art.file != onnx_path.name:
            with steps.step(f"Checking the {req.precision} artifact against {source.framework}"), converter_step(
                    f"running the {req.precision} artifact {model_art.file} on {model_art.runner}", failed_dir):
                rep = _parity(f"{model_art.file} ({model_art.runner}) vs {source.framework}", names, expected,
                              work / model_art.file, model_art.runner, batch, feed, profile.tolerance(req.precision), req.atol,
                              check_options)
                checks.append({"kind": "parity", **rep.to_dict()})
                if not rep.ok and not req.precision.startswith("int8"):
                    raise ConversionFailed(f"the {req.precision} artifact for {profile.name} does not compute what the source computes",
                                           details=rep.failure_text(), hint=_tolerance_hint(profile))
                # an int8 artifact that misses parity is kept, marked failed, so `edgeconv debug` can open it
                parity_miss = None if rep.ok else rep
        source_accuracy = None
        fallback_record = None
        checks += conversion.checks  # the target's own checks (e.g. the Edge TPU mapping)
        if labels is not None:
            with steps.step(f"Measuring accuracy on {req.data.name}"), converter_step(
                    f"running {model_art.file} on {model_art.runner}", failed_dir):
                source_accuracy, acc_check = _accuracy_check(source, data_scores[score_index], score_index, data_feed, labels,
                                                             batch, work, model_art, req, check_options)
            if req.fallback == "auto" and not acc_check["ok"]:  # the int8 guard: keep the most harmful layers in float
                from edgeconv.debug.fallback import GuardJob, guard

                def measure(wdir, conv):
                    art = next(a for a in conv.artifacts if a.role == "model")
                    opts = {**art.extra.get("runner_options", {}), **check_overrides}
                    with converter_step(f"running {art.file} on {art.runner}", failed_dir):
                        rep = _parity(f"{art.file} ({art.runner}) vs {source.framework}", names, expected, wdir / art.file,
                                      art.runner, batch, feed, profile.tolerance(req.precision), req.atol, opts)
                        acc = _accuracy_check(source, data_scores[score_index], score_index, data_feed, labels, batch, wdir,
                                              art, req, opts)[1]
                    return rep, {"kind": "parity", **rep.to_dict()}, acc

                kept = guard(GuardJob(target, profile, topts, ctx, onnx_path, work, conversion, source.framework, data_feed,
                                      batch, req.max_float_layers, measure, check_options, failed_dir,
                                      layer_names(source) or []),
                             acc_check, steps)
                conversion, artifacts, fallback_record = kept["conversion"], kept["conversion"].artifacts, kept["record"]
                model_art = next(a for a in artifacts if a.role == "model")
                parity_miss = None if kept["parity"].ok else kept["parity"]
                checks = [checks[0], kept["parity_check"], *conversion.checks]  # the full-int8 figures are in fallback_record
                acc_check = kept["accuracy_check"]
            elif conversion.accuracy_control is not None:  # the target's own accuracy control (NNCF) kept layers in float
                from edgeconv.debug.fallback import accuracy_control_record

                def measure_full_int8(wdir, art):
                    with converter_step(f"running {art.file} on {art.runner}", failed_dir):
                        return _accuracy_check(source, data_scores[score_index], score_index, data_feed, labels, batch, wdir,
                                               art, req, {**art.extra.get("runner_options", {}), **check_overrides})[1]

                fallback_record = accuracy_control_record(
                    conversion, work, onnx_path, source.framework, acc_check, measure_full_int8, check_options, data_feed,
                    batch, layer_names(source), steps)
            checks.append(acc_check)
        elif data_feed is not None:
            with steps.step(f"Checking agreement with {source.framework} on {req.data.name} (no labels)"), converter_step(
                    f"running {model_art.file} on {model_art.runner}", failed_dir):
                checks.append(_agreement_check(source, data_scores, score_index, data_feed, batch, work, model_art, names,
                                               profile.tolerance(req.precision), req, check_options))
        failed = [c for c in checks if not c["ok"]]
        status = "failed-check" if failed else "ok"
        save_reference(work / REFERENCE, feed, expected, names)
        runner_file = work / DEVICE_RUNNER.name
        shutil.copyfile(DEVICE_RUNNER, runner_file)
        artifacts.append(Artifact(runner_file.name, "device-runner", req.precision))
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "edgeconv_version": __version__,
            "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command_line": req.command_line,
            "status": status,
            "source": {
                "path": str(req.model), "format": source.format, "framework": source.framework,
                "sha256": sha256_of(req.model), "frontend": source.frontend,
                "load_options": {"model_class": req.load.model_class, "model_kwargs": req.load.model_kwargs},
                # Keras layer names, in order: TensorFlow's scopes in the ONNX graph carry uniquified copies of them
                # (layer conv2d under conv2d_1), which edgeconv debug maps back
                "layer_names": layer_names(source),
            },
            "export": {"exporter": record.exporter, "opset": canon.opset_after, "exported_opset": record.opset,
                       "fallback_reason": record.fallback_reason, "notes": source.notes + shape_notes + record.notes + conversion.notes,
                       "canonical": canon.to_dict(), "cache": cache.record() if cache else None},
            "target": {"profile": profile.name, "family": profile.family, "backend": profile.backend,
                       "profile_file": profile.path.name if profile.path else None, "profile_data": profile.raw},
            "precision": req.precision,
            "runner": model_art.runner,
            "dynamic_batch": req.dynamic_batch,
            "inputs": [s.to_dict() for s in onnx_inputs],
            "input_origins": resolved.origins,
            "outputs": [s.to_dict() for s in outputs],
            "artifacts": [_artifact_entry(work, a) for a in artifacts] + (
                [_artifact_entry(work, Artifact(onnx_path.name, "canonical-onnx", "fp32"))]
                if all(a.file != onnx_path.name for a in artifacts) else []),
            "reference": {"file": REFERENCE, "samples": len(next(iter(feed.values()))),
                          "inputs": feed_origin},
            "tolerances": {p: vars(t) for p, t in profile.tolerances.items()} | {"overrides": {str(k): v for k, v in req.atol.items()}},
            "source_accuracy": source_accuracy,
            "calibration": calib_record,
            "fallback": fallback_record,
            "check_runner_options": check_overrides,
            "checks": checks,
            "tools": {"edgeconv": __version__, "onnx": version_of("onnx"), "onnxruntime": version_of("onnxruntime"),
                      **source.versions()},
            "host": _host(),
        }
        write_json(work / MANIFEST, manifest)
    result = ConvertResult(out, manifest)
    guard_missed = fallback_record is not None and not fallback_record["ok"]  # reported as the budget it missed (exit 1)
    if model_art.file != onnx_path.name and parity_miss is not None and not guard_missed:
        raise ConversionFailed(
            f"the {req.precision} artifact for {profile.name} does not compute what the source computes; the bundle at {out} "
            "is kept and marked failed in its manifest", details=parity_miss.failure_text(),
            hint=f"`edgeconv debug {out} --data DATA` shows which layer loses the accuracy; " + _tolerance_hint(profile))
    if not result.ok:
        reasons = [_failure_reason(c, req) for c in failed]
        raise CheckFailed("; ".join(reasons) + f"; the bundle at {out} is kept and marked failed in its manifest")
    return result


def _check_fallback(req: ConvertRequest, target, profile: Profile) -> None:
    """``--fallback auto`` needs an int8 conversion with labelled --data and a budget, on a backend that can keep layers
    in float."""
    if req.fallback not in ("none", "auto"):
        raise BadInput(f"--fallback must be none or auto, not {req.fallback!r}")
    if req.fallback == "none":
        return
    if req.precision != "int8":
        raise BadInput(f"--fallback auto keeps layers of an int8 conversion in float; this conversion is {req.precision}")
    if req.data is None or req.max_accuracy_drop is None:
        raise BadInput("--fallback auto needs --data (a labelled .npz) and --max-accuracy-drop: the budget it restores")
    if req.max_float_layers < 1:
        raise BadInput("--max-float-layers must be at least 1")
    if not getattr(target, "float_fallback", False):
        from edgeconv.errors import PreflightError

        raise PreflightError(f"--fallback auto: target {profile.name} ({profile.backend}) has no way to keep layers in float",
                             hint="targets with a float fallback: onnx, jetson, openvino, tflite, coral, ethos-u")


def _failure_reason(check: dict[str, Any], req: ConvertRequest) -> str:
    if check["kind"] == "accuracy" and req.fallback == "auto":
        return (f"accuracy drop {check['drop_points']:.2f} points exceeds --max-accuracy-drop {req.max_accuracy_drop} even with "
                f"up to {req.max_float_layers} layer(s) kept in float (--max-float-layers; the manifest's fallback lists the "
                "attempts)")
    if check["kind"] == "accuracy":
        return f"accuracy drop {check['drop_points']:.2f} points exceeds --max-accuracy-drop {req.max_accuracy_drop}"
    if check["kind"] == "agreement":
        return f"the artifact does not agree with the source on {check['data']['path']} within its tolerance"
    return check.get("reason") or f"check {check['kind']} failed"


def _tolerance_hint(profile: Profile) -> str:
    return (f"tolerances per precision are data in the device profile ({profile.path}); --atol NAME=VALUE "
            "overrides one output's max abs error, your own profile .toml changes the rest")


def _run_source(source: SourceModel, feed: dict[str, np.ndarray], batch: int | None) -> list[np.ndarray]:
    try:
        return run_batched(source.run, feed, batch)
    except EdgeconvError:
        raise
    except Exception as exc:
        shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))} {v.dtype}" for k, v in feed.items())
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()] or [""]
        # the TorchScript interpreter's first line says only that it failed; its last line says why
        reason = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
        hint = "check --input-shape (and that the model runs on such inputs in its own framework)"
        if re.search(r"\bdouble\b|float64", reason, re.IGNORECASE):
            name = next(iter(feed))
            hint = (f"the model computes in float64 (numpy's default float64 data is read as float32): give the dtype, "
                    f"e.g. --input-shape {name}={'x'.join(map(str, (1, *feed[name].shape[1:])))}:float64")
        prefix = f"{type(exc).__name__}: "
        raise BadInput(
            f"the {source.framework} model fails on inputs of shape {shapes}: {prefix}{reason.removeprefix(prefix)[:300]}",
            hint=hint,
        ) from exc


def _artifact_entry(work: Path, a: Artifact) -> dict[str, Any]:
    p = work / a.file
    return {"file": a.file, "role": a.role, "precision": a.precision, "runner": a.runner, "sha256": sha256_of(p),
            "bytes": p.stat().st_size, **a.extra}


def _agreement_check(source, src_out, idx, data_feed, batch, work, model_art, names, tol, req, options) -> dict:
    """Unlabelled --data: the artifact against the source on every item, with the artifact's parity tolerance, and
    how often their top-1 agrees when an output is class scores."""
    with open_runner(model_art.runner, work / model_art.file, options=options) as r:
        art_out = run_batched(r.infer, data_feed, batch)
    rep = compare(f"{model_art.file} ({model_art.runner}) vs {source.framework} on {req.data.name}", names, src_out, art_out,
                  tol, req.atol)
    check = {"kind": "agreement", **rep.to_dict(), "data": data_record(req.data, len(next(iter(data_feed.values()))))}
    if idx is not None:
        check["top1_agreement"] = float((src_out[idx].argmax(1) == art_out[idx].argmax(1)).mean())
    return check


def _accuracy_check(source, src_scores, idx, data_feed, labels, batch, work, model_art, req, options) -> tuple[dict, dict]:
    src_acc = accuracy(src_scores, labels)
    with open_runner(model_art.runner, work / model_art.file, options=options) as r:
        art_out = run_batched(r.infer, data_feed, batch)
    art_acc = accuracy(art_out[idx], labels)
    drop = (src_acc["top1"] - art_acc["top1"]) * 100
    record = data_record(req.data, len(labels))
    ok = req.max_accuracy_drop is None or drop <= req.max_accuracy_drop
    source_accuracy = {**record, **src_acc, "measured_with": source.framework}
    check = {"kind": "accuracy", "ok": ok, "data": record, "source": src_acc, "artifact": art_acc,
             "drop_points": drop, "max_drop_points": req.max_accuracy_drop}
    return source_accuracy, check
