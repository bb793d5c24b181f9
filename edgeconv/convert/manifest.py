"""The convert pipeline's last step inside the bundle: reference.npz, the device runner and manifest.json (see
docs/architecture.md for the manifest's sections)."""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path
from typing import Any

from edgeconv import __version__, quiet
from edgeconv.bundle import MANIFEST, REFERENCE, SCHEMA_VERSION, save_reference, write_device_runner, write_json
from edgeconv.convert.state import ConvertState
from edgeconv.data import feed_count
from edgeconv.export_cache import layer_names
from edgeconv.lazy import version_of
from edgeconv.specs import sha256_of
from edgeconv.targets import Artifact


def write(st: ConvertState) -> None:
    """reference.npz, the device runner, convert.log (what the libraries printed) and manifest.json into the bundle
    being written."""
    work = st.work
    (work / quiet.LOG_NAME).write_text(quiet.text())
    st.checks = [*st.checks, st.accuracy_check] if st.accuracy_check is not None else st.checks
    save_reference(work / REFERENCE, st.feed, st.expected, st.names)
    artifacts = st.conversion.artifacts
    artifacts.append(Artifact(write_device_runner(work), "device-runner", st.req.precision))
    st.manifest = manifest(st, artifacts)
    write_json(work / MANIFEST, st.manifest)


def manifest(st: ConvertState, artifacts: list[Artifact]) -> dict[str, Any]:
    req, source, profile = st.req, st.source, st.profile
    canonical = ([] if any(a.file == st.onnx_path.name for a in artifacts)
                 else [_artifact_entry(st.work, Artifact(st.onnx_path.name, "canonical-onnx", "fp32"))])
    return {
        "schema_version": SCHEMA_VERSION,
        "edgeconv_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command_line": req.command_line,
        "status": "failed-check" if any(not c["ok"] for c in st.checks) else "ok",
        "source": _source_section(st),
        "export": {"exporter": st.record.exporter, "opset": st.canon.opset_after, "exported_opset": st.record.opset,
                   "fallback_reason": st.record.fallback_reason,
                   "notes": source.notes + st.notes + st.record.notes + st.conversion.notes,
                   "canonical": st.canon.to_dict(), "cache": st.cache.record() if st.cache else None},
        "target": {"profile": profile.name, "family": profile.family, "backend": profile.backend,
                   "profile_file": profile.path.name if profile.path else None, "profile_data": profile.raw},
        "precision": req.precision,
        "runner": st.model_art.runner,
        "dynamic_batch": req.dynamic_batch,
        "inputs": [s.to_dict() for s in st.onnx_inputs],
        "input_origins": st.resolved.origins,
        "outputs": [s.to_dict() for s in st.outputs],
        "artifacts": [_artifact_entry(st.work, a) for a in artifacts] + canonical,
        "log": quiet.LOG_NAME,
        "reference": {"file": REFERENCE, "sha256": sha256_of(st.work / REFERENCE),
                      "samples": feed_count(st.feed), "inputs": st.feed_origin,
                      "runtime": _reference_runtime(source)},
        "tolerances": ({p: vars(t) for p, t in profile.tolerances.items()}
                       | {"overrides": {str(k): v for k, v in req.atol.items()}}),
        "source_accuracy": st.source_accuracy,
        "calibration": st.calib_record,
        "fallback": st.fallback_record,
        "check_runner_options": st.check_overrides,
        "checks": st.checks,
        "tools": {"edgeconv": __version__, "onnx": version_of("onnx"), "onnxruntime": version_of("onnxruntime"),
                  **source.versions()},
        "host": _host(),
    }


def _source_section(st: ConvertState) -> dict[str, Any]:
    req, source = st.req, st.source
    return {
        "path": str(req.model), "format": source.format, "framework": source.framework,
        "sha256": sha256_of(req.model), "frontend": source.frontend,
        "load_options": {"model_class": req.load.model_class, "model_kwargs": req.load.model_kwargs},
        # Keras layer names, in order: TensorFlow's scopes in the ONNX graph carry uniquified copies of them
        # (layer conv2d under conv2d_1), which edgeconv debug maps back
        "layer_names": layer_names(source),
    }


def _reference_runtime(source) -> str:
    """What computed the reference outputs: the source framework itself; for an ONNX source, ONNX Runtime or, when it
    refuses the graph (an old opset), onnx's reference evaluator (``onnx.reference``)."""
    return source.reference_runtime if source.framework == "onnx" else source.framework


def _host() -> dict[str, str]:
    return {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine()}


def _artifact_entry(work: Path, a: Artifact) -> dict[str, Any]:
    p = work / a.file
    return {"file": a.file, "role": a.role, "precision": a.precision, "runner": a.runner, "sha256": sha256_of(p),
            "bytes": p.stat().st_size, **a.extra}
