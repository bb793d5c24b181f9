"""``edgeconv wrap FILE``: a bundle around a model file edgeconv did not build (a ``.tflite`` from MediaPipe or TF Hub, a
vendor's ``.onnx``, an OpenVINO IR, an ncnn ``.param``/``.bin`` pair, a ``.pte``), so that validate, profile, compare and
the device runner work on it as on a converted bundle.

The manifest says the artifact was given, not built (``"given"``): its sha256, the runtime and version that opened it,
its inputs, outputs, layouts and (TFLite) quantization parameters read from the file. reference.npz holds seeded random
inputs (or ``--sample``) and, as reference outputs, those of ``--source MODEL`` run here on the same inputs, or the
outputs of ``--reference OUTPUTS.npz``; without either, the file's own outputs on this machine (so validate elsewhere
checks the same file computes the same there, and no source check is claimed). The other commands wrap a bare model
file implicitly, in a temporary directory (:func:`bare_bundle`). See docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv import __version__
from edgeconv.bundle import MANIFEST, REFERENCE, SCHEMA_VERSION, BundleWriter, save_reference, write_device_runner, write_json
from edgeconv.convert.request import ConvertResult
from edgeconv.core.parity import compare_outputs, tolerance_of
from edgeconv.data import load_inputs, read_arrays, run_batched
from edgeconv.errors import BadInput, CheckFailed
from edgeconv.frontends import LoadOptions, load_source
from edgeconv.frontends.tflite import check_tflite_file, input_ranges, quantization, tflite_precision
from edgeconv.profiles import Profile, resolve_profile
from edgeconv.progress import Steps
from edgeconv.runners import open_runner
from edgeconv.specs import TensorSpec, apply_input_shapes, guess_layout, random_inputs, sha256_of

REFERENCE_BATCHES = 4  # reference.npz holds this many batches of the file's batch size (as convert's does)


@dataclass(frozen=True)
class Kind:
    format: str
    runner: str
    family: str  # the target family whose default profile a wrapped file gets without --target


KINDS = {
    ".tflite": Kind("tflite", "litert", "tflite"),
    ".onnx": Kind("onnx", "onnxruntime", "onnx"),
    ".xml": Kind("openvino-ir", "openvino", "openvino"),
    ".param": Kind("ncnn", "ncnn", "ncnn"),
    ".pte": Kind("executorch", "executorch", "executorch"),
    ".engine": Kind("tensorrt-engine", "tensorrt", "jetson"),
    ".plan": Kind("tensorrt-engine", "tensorrt", "jetson"),
}
SOURCE_GRAPH = "source_fp32.onnx"  # an ONNX --source, kept for edgeconv debug
NCNN_FP16_TAG = bytes.fromhex("476b3001")  # the flag before an fp16 weight blob in an ncnn .bin (0x01306B47)


@dataclass
class WrapRequest:
    model: Path
    output: Path | None = None
    target: str | None = None
    source: Path | None = None  # a model edgeconv reads, run here on the reference inputs: the reference outputs
    reference: Path | None = None  # or the reference inputs and outputs, as an .npz
    sample: Path | None = None  # reference inputs (else seeded random)
    input_shapes: dict[str | None, list] = field(default_factory=dict)
    load: LoadOptions = field(default_factory=LoadOptions)
    atol: dict[str | None, float] = field(default_factory=dict)
    force: bool = False
    command_line: list[str] = field(default_factory=list)


@dataclass
class Given:
    """The given file, opened: its files, the runner options it needs, its I/O read from it, what opened it."""

    path: Path
    kind: Kind
    files: list[Path]  # the model file first, then the weights file it names
    options: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: dict[str, Any]
    precision: str
    quantization: dict[str, Any] = field(default_factory=dict)
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # quantized inputs' float range


def is_model_file(path: Path) -> bool:
    """A path the commands that take a bundle take as a bare model file instead (by its extension)."""
    return path.suffix.lower() in KINDS and not path.is_dir()


def check_file(path: Path) -> tuple[Kind, list[Path]]:
    """The file's kind and its files (a weights file next to it for OpenVINO IR and ncnn), refusing what is not such a
    file before any runtime opens it (exit 2, with the reason)."""
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise BadInput(f"{path} is not a model file edgeconv wraps (extension {path.suffix!r})",
                       hint="wrap takes .tflite, .onnx, .xml (+ .bin), .param (+ .bin), .pte, .engine/.plan")
    if not path.is_file():
        raise BadInput(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise BadInput(f"{path} is empty (0 bytes)")
    if kind.format == "tflite":
        check_tflite_file(path)
    if kind.format == "openvino-ir":
        return kind, [path, _weights(path, path.with_suffix(".bin"), "an OpenVINO IR .xml holds the graph; its weights are "
                                     "in the .bin of the same name, which ovc / openvino.save_model write next to it")]
    if kind.format == "ncnn":
        if not path.read_bytes()[:16].split()[:1] == [b"7767517"]:
            raise BadInput(f"{path} is not an ncnn .param file (its first line is not ncnn's magic number 7767517)")
        return kind, [path, _weights(path, path.with_name(path.name[: -len(".param")] + ".bin"),
                                     "an ncnn .param holds the graph; its weights are in the .bin of the same name")]
    if kind.format == "onnx":
        return kind, [path, *_external_data(path)]
    return kind, [path]


def _external_data(path: Path) -> list[Path]:
    """The external data files an ONNX graph names (``location``, relative to its folder), each checked to be there."""
    from edgeconv.onnx_tools import load_onnx

    proto = load_onnx(path, load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    files = []
    for loc in sorted(locations):
        f = (path.parent / loc).resolve()
        if not f.is_relative_to(path.parent.resolve()) or not f.is_file():
            raise BadInput(f"{path} keeps its weights in {loc}, which is not a file next to it",
                           hint="copy the external data file(s) the exporter wrote along with the .onnx")
        files.append(path.parent / loc)
    return files


def _weights(path: Path, weights: Path, why: str) -> Path:
    if not weights.is_file():
        raise BadInput(f"{path} has no weights file: {weights.name} is not next to it", hint=why)
    return weights


def open_given(path: Path, input_shapes: dict[str | None, list] | None = None) -> Given:
    """The file checked and opened on its runtime: inputs (with ``--input-shape`` applied), outputs, precision, and the
    quantization parameters of its quantized tensors (TFLite)."""
    kind, files = check_file(path)
    if kind.runner == "tensorrt":
        from edgeconv.lazy import require

        require("tensorrt", why="to open a TensorRT engine (a Jetson, or a machine with TensorRT and its GPU)")
    options = _runner_options(kind, files, input_shapes or {})
    runner = _open(kind, path, options)
    with runner:
        inputs = _input_specs(kind, runner, options, input_shapes or {})
        info = runner.info()
        quant = quantization(runner.backend) if kind.runner == "litert" else {}
        ranges = input_ranges(runner.backend) if kind.runner == "litert" else {}
        outputs = [TensorSpec(s.name, s.shape, s.dtype, None) for s in runner.outputs]
    return Given(path, kind, files, options, inputs, outputs, info, precision_of(kind, files), quant, ranges)


def _open(kind: Kind, path: Path, options: dict[str, Any]):
    try:
        return open_runner(kind.runner, path, options=options)
    except ValueError as exc:  # LiteRT: a file with several signatures (one without any is read by its graph's I/O)
        raise BadInput(f"{kind.runner} cannot open {path} by its signature: {exc}",
                       hint="re-export it with the one signature to run (TFLiteConverter.from_saved_model / "
                            "from_keras_model)") from exc


def _runner_options(kind: Kind, files: list[Path], shapes: dict[str | None, list]) -> dict[str, Any]:
    """What the runner needs beyond the file: ncnn's blob names and weights file; ExecuTorch's input names and dtypes."""
    if kind.format == "ncnn":
        from edgeconv.targets.ncnn import _io_blobs

        blobs_in, blobs_out = _io_blobs(files[0].read_text())
        if not blobs_in or not all(b.startswith("in") for b in blobs_in):
            raise BadInput(f"{files[0]}: edgeconv's ncnn runner reads input blobs named in0, in1 … (as pnnx writes them); "
                           f"this file's are {blobs_in}")
        return {"tensor_names": {b: b for b in blobs_in + blobs_out}, "bin_file": files[1].name}
    if kind.format == "executorch":
        meta = _executorch_inputs(files[0])
        return {"input_names": [n for n, _, _ in meta], "input_dtypes": [d for _, _, d in meta]}
    return {}


def _executorch_inputs(pte: Path) -> list[tuple[str, list[int], str]]:
    """``(name, shape, dtype)`` of a .pte program's ``forward`` inputs, from its method metadata."""
    from edgeconv.lazy import require

    runtime = require("executorch.runtime", why="to read .pte programs (pip install 'edgeconv[executorch]')")
    meta = runtime.Runtime.get().load_program(str(pte)).metadata("forward")
    out = []
    for i in range(meta.num_inputs()):
        t = meta.input_tensor_meta(i)
        dtype = str(t.dtype()).rsplit(".", 1)[-1].lower()
        out.append((f"input_{i}" if meta.num_inputs() > 1 else "input", [int(d) for d in t.sizes()],
                    {"float": "float32", "long": "int64", "int": "int32"}.get(dtype, dtype)))
    return out


def _input_specs(kind: Kind, runner, options: dict[str, Any], shapes: dict[str | None, list]) -> list[TensorSpec]:
    """The inputs as the file has them; ncnn keeps no shapes (``--input-shape`` gives them), ExecuTorch's are in its
    program's metadata. Layouts: the channel axis is the small one (1 to 4); else NHWC for TFLite, unknown elsewhere."""
    if kind.format == "executorch":
        specs = [TensorSpec(n, s, d) for n, s, d in _executorch_inputs(runner.artifact)]
    elif kind.format == "ncnn":
        specs = [TensorSpec(s.name, [], "float32") for s in runner.inputs]
        missing = [s.name for s in specs if s.name not in shapes and not (None in shapes and len(specs) == 1)]
        if missing:
            raise BadInput(f"an ncnn .param keeps no input shapes: give them for {missing}",
                           hint=" ".join(f"--input-shape {n}=1x3x224x224" for n in missing) + " (your model's sizes)")
    else:
        specs = [TensorSpec(s.name, list(s.shape), s.dtype) for s in runner.inputs]
    specs = apply_input_shapes(specs, shapes) if shapes else specs
    default = "NHWC" if kind.format == "tflite" else None
    return [TensorSpec(s.name, s.shape, s.dtype, guess_layout(s.shape, default)) for s in specs]


def precision_of(kind: Kind, files: list[Path]) -> str:
    """What the file computes in, read from it (the tolerances parity uses follow it)."""
    if kind.format == "tflite":
        return tflite_precision(files[0])
    if kind.format == "onnx":
        import onnx

        proto = onnx.load(str(files[0]), load_external_data=False)
        ops = {n.op_type for n in proto.graph.node}
        if ops & {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger"}:
            return "int8"
        return "fp16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer) else "fp32"
    if kind.format == "openvino-ir":
        text = files[0].read_text(errors="replace")
        if 'type="FakeQuantize"' in text or 'element_type="i8"' in text or 'element_type="u8"' in text:
            return "int8"
        return "fp16" if 'element_type="f16"' in text else "fp32"
    if kind.format == "ncnn":
        return "fp16" if NCNN_FP16_TAG in files[1].read_bytes() else "fp32"
    return "fp32"


def profile_for(given: Given, target: str | None) -> Profile:
    """``--target``, whose runner must be the one that opens the file; else the file's family's default profile."""
    profile = resolve_profile(target or given.kind.family)
    if profile.runner != given.kind.runner:
        raise BadInput(f"--target {target}: {profile.name} runs {profile.runner} models; {given.path.name} is a "
                       f"{given.kind.format} file, which {given.kind.runner} runs",
                       hint=f"a {given.kind.format} target, e.g. --target {given.kind.family}")
    if given.precision not in profile.tolerances:
        raise BadInput(f"{given.path.name} is {given.precision}; {profile.name} has no tolerance for it "
                       f"(it offers {', '.join(profile.tolerances)})")
    return profile


# -- the reference ---------------------------------------------------------------------------------------------
def reference_feed(req: WrapRequest, given: Given) -> tuple[dict[str, np.ndarray], str]:
    """Reference inputs: ``--reference``'s inputs, ``--sample`` (its first batches), else seeded random of the file's
    shapes; a quantized input's uniform over the range the file quantizes it over."""
    if req.reference is not None:
        arrays = read_arrays(req.reference)
        return _keyed(req.reference, arrays, given.inputs, "input"), str(req.reference)
    batch = given.inputs[0].shape[0] if given.inputs and isinstance(given.inputs[0].shape[0], int) else 1
    n = batch * REFERENCE_BATCHES
    if req.sample is not None:
        feed = load_inputs(req.sample, given.inputs, need_labels=False)[0]
        count = len(next(iter(feed.values())))
        if count >= batch:
            return {k: v[: min(n, count // batch * batch)] for k, v in feed.items()}, f"{req.sample} (first samples)"
    feed = random_inputs(given.inputs, batch=n, seed=0)
    rng = np.random.default_rng(0)
    for name, (low, high) in given.input_ranges.items():
        feed[name] = rng.uniform(low, high, feed[name].shape).astype(feed[name].dtype)
    ranged = ", ".join(given.input_ranges)
    return feed, "random (seed 0)" + (f"; {ranged} uniform over the range the file quantizes it over" if ranged else "")


def _keyed(path: Path, arrays: dict[str, np.ndarray], specs: list[TensorSpec], what: str) -> dict[str, np.ndarray]:
    """The arrays of ``--reference`` for ``specs``: ``input:NAME``/``output:NAME`` (as reference.npz has them), or the
    bare names."""
    out = {}
    for s in specs:
        key = next((k for k in (f"{what}:{s.name}", s.name) if k in arrays), None)
        if key is None:
            raise BadInput(f"--reference {path} has no {what} {s.name!r} (arrays: {sorted(arrays)})",
                           hint="numpy.savez(path, **{'input:NAME': x, 'output:NAME': y}) for every input and output")
        out[s.name] = arrays[key]
    return out


def reference_outputs(req: WrapRequest, given: Given, feed: dict[str, np.ndarray],
                      actual: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The reference outputs and what computed them: ``--reference``'s, ``--source``'s run here, else the file's own."""
    if req.reference is not None:
        outs = _keyed(req.reference, read_arrays(req.reference), given.outputs, "output")
        return [outs[s.name] for s in given.outputs], {"kind": "file", "framework": "reference file", "path": str(req.reference),
                                                       "sha256": sha256_of(req.reference)}
    if req.source is not None:
        source = load_source(req.source, req.load)
        outs = run_batched(source.run, source_feed(source.inputs, given.inputs, feed), _batch(source.inputs))
        return outs, {"kind": "source", "framework": source.framework, "format": source.format, "path": str(req.source),
                      "sha256": sha256_of(req.source), "runtime": getattr(source, "reference_runtime", source.framework)}
    return actual, {"kind": "self", "framework": f"{given.kind.runner} (the given file itself)",
                    "runtime": f"{given.info.get('runtime')} {given.info.get('version') or ''}".strip()}


def _batch(specs: list[TensorSpec]) -> int | None:
    return specs[0].shape[0] if specs and specs[0].shape and isinstance(specs[0].shape[0], int) else None


def source_feed(src: list[TensorSpec], art: list[TensorSpec], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference inputs in the source's terms: by name, else by position; a 4-D input the source takes channels-first
    where the file takes channels-last (or the reverse) is transposed."""
    if len(src) != len(art):
        raise BadInput(f"--source takes {len(src)} input(s) ({[s.name for s in src]}); the file takes {len(art)} "
                       f"({[s.name for s in art]})")
    names = {s.name for s in src}
    out = {}
    for i, a in enumerate(art):
        s = next(x for x in src if x.name == a.name) if a.name in names else src[i]
        x = feed[a.name]
        if x.ndim == 4 and len(s.shape) == 4 and s.layout != a.layout and {s.layout, a.layout} == {"NCHW", "NHWC"}:
            x = x.transpose((0, 3, 1, 2) if s.layout == "NCHW" else (0, 2, 3, 1))
        out[s.name] = np.ascontiguousarray(x, dtype=np.dtype(s.dtype) if s.dtype else x.dtype)
    return out


# -- the bundle ------------------------------------------------------------------------------------------------
WrapResult = ConvertResult  # the bundle written and its manifest, as convert's


def wrap(req: WrapRequest, steps: Steps | None = None, *, report_miss: bool = True, build=None) -> WrapResult:
    """Write the bundle around ``req.model`` at ``req.output``. With a reference, parity is checked now, as convert
    checks its artifact; a miss keeps the bundle, marked failed, and is reported (exit 1) unless ``report_miss`` is off
    (an implicit wrap: validate reports the same parity table itself). ``build(given, profile, work, file)``: a target's
    own step on the copied file (the Edge TPU compiler, Vela), returning its Conversion (:func:`convert_given`)."""
    steps = steps or Steps()
    if req.source is not None and req.reference is not None:
        raise BadInput("give --source or --reference, not both: each is the reference outputs")
    with steps.step(f"Opening {req.model.name}"):
        given = open_given(req.model, req.input_shapes)
        profile = profile_for(given, req.target)
    out = req.output or Path(f"{req.model.stem}-{profile.name}")
    with BundleWriter(out, req.force) as work:
        names = [_copy(f, req.model.parent, work) for f in given.files]
        conversion = build(given, profile, work, names[0]) if build else None
        with steps.step(f"Reference outputs on {given.kind.runner}" + (f" and {req.source.name}" if req.source else "")):
            feed, origin = reference_feed(req, given)
            with open_runner(given.kind.runner, work / names[0], options=given.options) as runner:
                actual = run_batched(runner.infer, feed, runner.fixed_batch())
            expected, ref = reference_outputs(req, given, feed, actual)
        given.outputs = [TensorSpec(s.name, [_batch(given.inputs) or "N", *np.shape(a)[1:]], s.dtype)
                         for s, a in zip(given.outputs, actual)]
        checks = [_parity(req, given, profile, names[0], expected, actual, ref)] + (conversion.checks if conversion else [])
        save_reference(work / REFERENCE, feed, expected, [s.name for s in given.outputs])
        artifacts = _artifacts(work, given, names, conversion) + _float_graph(work, req.source)
        manifest = _manifest(req, given, profile, work, artifacts, ref, origin, checks, len(actual[0]))
        write_json(work / MANIFEST, manifest)
    result = WrapResult(out, manifest)
    if not checks[0]["ok"] and report_miss:
        raise CheckFailed(f"{given.path.name} does not compute what its reference ({ref['framework']}) computes; the bundle "
                          f"at {out} is kept and marked failed in its manifest",
                          details=_failure_text(checks[0]), hint="check that --source/--reference is the model the file "
                                                                  "was made from, on the same inputs")
    if not result.ok and report_miss:
        raise CheckFailed("; ".join(c.get("reason") or c["kind"] for c in checks if not c["ok"])
                          + f"; the bundle at {out} is kept and marked failed in its manifest")
    return result


def _entry(work: Path, file: str, role: str, precision: str, runner: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    p = work / file
    return {"file": file, "role": role, "precision": precision, "runner": runner, "sha256": sha256_of(p),
            "bytes": p.stat().st_size, **extra}


def _float_graph(work: Path, source: Path | None) -> list[dict[str, Any]]:
    """An ONNX ``--source`` kept in the bundle as its float graph: what ``edgeconv debug`` compares the given file with,
    layer by layer, by tensor name (a Q/DQ ONNX or an int8 IR made from it keeps its names)."""
    if source is None or source.suffix.lower() != ".onnx" or source.stat().st_size > 2**31:
        return []
    shutil.copyfile(source, work / SOURCE_GRAPH)
    return [_entry(work, SOURCE_GRAPH, "canonical-onnx", "fp32", None, {"from": str(source)})]


def _artifacts(work: Path, given: Given, names: list[str], conversion) -> list[dict[str, Any]]:
    """The given file(s), what a target built from them (``conversion``), and the device runner."""
    built = [a for a in conversion.artifacts if a.role != "model"] if conversion else []
    model_extra = next((a.extra for a in conversion.artifacts if a.role == "model"), {}) if conversion else {}
    return [_entry(work, names[0], "model", given.precision, given.kind.runner,
                   {**model_extra, "given": True, "runner_options": given.options}),
            *[_entry(work, n, "weights", given.precision, None, {"given": True}) for n in names[1:]],
            *[_entry(work, a.file, a.role, a.precision, a.runner, a.extra) for a in built],
            _entry(work, write_device_runner(work), "device-runner", given.precision, None, {})]


def _copy(src: Path, base: Path, work: Path) -> str:
    """``src`` into the bundle at its path relative to the model file's folder (ONNX external data keeps its location)."""
    rel = src.relative_to(base)
    (work / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, work / rel)
    return rel.as_posix()


def _parity(req: WrapRequest, given: Given, profile: Profile, file: str, expected, actual, ref) -> dict[str, Any]:
    if len(expected) != len(actual):
        raise BadInput(f"the reference has {len(expected)} output(s); {given.path.name} has {len(actual)}")
    label = f"{file} ({given.kind.runner}) vs " + ("the same file at wrap time" if ref["kind"] == "self" else ref["framework"])
    rep = compare_outputs(label, [s.name for s in given.outputs], expected, actual,
                          tolerance_of(vars(profile.tolerance(given.precision))), req.atol)
    return {"kind": "parity", **rep}


def _failure_text(check: dict[str, Any]) -> str:
    return "\n".join(f"  {r['name']}: {r['reason']}" for r in check["outputs"] if not r["ok"])


def _manifest(req: WrapRequest, given: Given, profile: Profile, work: Path, artifacts: list[dict[str, Any]],
              ref: dict[str, Any], origin: str, checks: list[dict[str, Any]], samples: int) -> dict[str, Any]:
    model = artifacts[0]
    return {
        "schema_version": SCHEMA_VERSION, "edgeconv_version": __version__,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "command_line": req.command_line,
        "status": "failed-check" if any(not c["ok"] for c in checks) else "ok",
        "given": {"file": str(given.path), "format": given.kind.format, "sha256": model["sha256"],
                  "opened_with": {"runtime": given.info.get("runtime"), "version": given.info.get("version")},
                  "precision_read": given.precision, "quantization": given.quantization, "reference": ref["kind"],
                  "note": f"the artifact was given, not built by edgeconv: {model['file']} is the file as it was given"
                          + ("; no source check (no --source or --reference): the reference outputs are the file's own "
                             "on this machine" if ref["kind"] == "self" else "")},
        "source": {"path": ref.get("path", str(given.path)), "format": ref.get("format", given.kind.format),
                   "framework": ref["framework"], "sha256": ref.get("sha256", model["sha256"]), "frontend": "given",
                   "load_options": {"model_class": req.load.model_class, "model_kwargs": req.load.model_kwargs},
                   "layer_names": None},
        "export": {"exporter": f"nothing: {model['file']} was given and is taken as it is", "opset": "n/a", "given": True,
                   "fallback_reason": None, "notes": [], "canonical": None},
        "target": {"profile": profile.name, "family": profile.family, "backend": profile.backend,
                   "profile_file": profile.path.name if profile.path else None, "profile_data": profile.raw},
        "precision": given.precision, "runner": given.kind.runner, "dynamic_batch": _batch(given.inputs) is None,
        "inputs": [s.to_dict() for s in given.inputs],
        "input_origins": {s.name: {"shape": ["file"] * len(s.shape), "dtype": "file"} for s in given.inputs},
        "outputs": [s.to_dict() for s in given.outputs],
        "artifacts": artifacts,
        "reference": {"file": REFERENCE, "sha256": sha256_of(work / REFERENCE), "samples": samples, "inputs": origin,
                      "runtime": ref.get("runtime", ref["framework"])},
        "tolerances": ({p: vars(t) for p, t in profile.tolerances.items()}
                       | {"overrides": {str(k): v for k, v in req.atol.items()}}),
        "source_accuracy": None, "calibration": None, "fallback": None, "check_runner_options": {}, "checks": checks,
        "tools": {"edgeconv": __version__, given.kind.runner: given.info.get("version")},
        "host": {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version()},
    }


# -- a .tflite as the source of a TFLite-family target --------------------------------------------------------
TFLITE_FAMILY = ("tflite", "coral", "ethos-u")
CONVERT_OPTIONS_IGNORED = {"calib": "--calib", "opset": "--opset", "dynamic_batch": "--dynamic-batch", "data": "--data",
                           "finetune": "--finetune", "max_accuracy_drop": "--max-accuracy-drop"}


def _given_target(backend_name: str):
    """The target class of ``backend_name`` whose TFLite step takes the given file as it is: the Edge TPU and Ethos-U
    targets then run exactly their own steps after it (the mapping prediction and compiler, Vela and its estimate)."""
    from edgeconv.targets import BACKENDS
    from edgeconv.targets.base import Artifact, Conversion
    from edgeconv.targets.tflite import TfliteTarget

    class GivenTflite(TfliteTarget):
        def convert(self, onnx_path, workdir, profile, opts, ctx):  # the file is in the bundle already: onnx_path
            return Conversion([Artifact(onnx_path.name, "model", opts.precision, profile.runner,
                                        {"converter": "none: the .tflite was given", "runner_options": {}})])

    if backend_name == "tflite":
        return GivenTflite
    module, cls = BACKENDS[backend_name][0].split(":")
    import importlib

    return type(f"Given{cls}", (getattr(importlib.import_module(module), cls), GivenTflite), {})


def convert_given(req, steps: Steps | None = None) -> WrapResult:
    """``edgeconv convert model.tflite --target coral|ethos-u|tflite[-profile]`` (``req``: a ConvertRequest): the file
    goes to the target as it is. Its precision is the file's: a float file is refused by an int8-only target (re-quantizing
    needs the model it was made from); parity is the file's own on LiteRT."""
    from edgeconv.errors import PreflightError
    from edgeconv.target_options import check_for
    from edgeconv.targets.base import TargetContext, TargetOptions

    profile = resolve_profile(req.target)
    if profile.backend not in TFLITE_FAMILY:
        raise BadInput(f"{req.model.name} is a .tflite file: it goes as it is to the TFLite-family targets "
                       f"({', '.join(TFLITE_FAMILY)}), not to {profile.name}",
                       hint="convert the model it was made from (.keras, SavedModel, .pt2, .onnx) for other targets")
    given_opts = [flag for key, flag in CONVERT_OPTIONS_IGNORED.items() if getattr(req, key, None)]
    if given_opts:
        raise BadInput(f"{', '.join(given_opts)} do(es) not apply to a given .tflite: it is taken as it is",
                       hint="validate BUNDLE --data DATA measures its accuracy afterwards")
    precision = tflite_precision(req.model)
    if req.precision not in (None, precision):
        raise PreflightError(f"{req.model.name} is {precision}; --precision {req.precision} would need re-quantizing it, "
                             "which needs the model it was made from", hint="leave --precision out, or convert the source")
    target_cls = _given_target(profile.backend)
    if precision not in target_cls.precisions or precision not in profile.precisions:
        raise PreflightError(f"{req.model.name} is a {precision} model; {profile.name} runs "
                             f"{', '.join(p for p in profile.precisions if p in target_cls.precisions)} models only",
                             hint="re-quantizing it to full int8 needs the model it was made from: convert that with "
                                  f"--target {req.target} --precision int8 --calib DATA")
    opts = TargetOptions(precision=precision, extra=check_for(profile.backend, profile.name, req.target_extra))
    target = target_cls()

    def build(given: Given, prof: Profile, work: Path, file: str):
        io = next(iter(given.quantization.values()), {}).get("dtype", "float") if given.quantization else "float"
        if prof.runtime.get("io_dtype", "float") != "float" and io == "float":
            raise PreflightError(f"{file} has float input/output tensors; {prof.name} needs integer ones",
                                 hint="re-export it with inference_input_type / inference_output_type tf.int8 or tf.uint8")
        opts.extra["io_dtype"] = io
        target.check_options(prof, opts)
        ctx = TargetContext(source_model=None, reference_inputs={}, input_shapes={}, output_shapes={}, layouts={},
                            failed_build_dir=out.with_name(out.name + ".failed-build"))
        with (steps or Steps()).step(f"{prof.name}: taking {file} as it is"):
            return target.convert(work / file, work, prof, opts, ctx)

    out = req.output or Path(f"{req.model.stem}-{profile.name}-{precision}")
    return wrap(WrapRequest(req.model, out, target=profile.name, sample=req.sample, atol=req.atol, force=req.force,
                            command_line=req.command_line), steps, build=build)


@contextlib.contextmanager
def bare_bundle(path: Path, *, source: Path | None = None, reference: Path | None = None, target: str | None = None,
                input_shapes: dict[str | None, list] | None = None, load: LoadOptions | None = None,
                steps: Steps | None = None) -> Iterator[Path]:
    """``path`` itself when it is a bundle; a bare model file wrapped in a temporary directory (removed afterwards)."""
    if not is_model_file(path):
        if reference is not None or input_shapes or target is not None:
            raise BadInput(f"--reference, --input-shape and --target apply to a bare model file; {path} is a bundle")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="edgeconv-wrap-") as tmp:
        req = WrapRequest(path, Path(tmp) / "bundle", target=target, source=source, reference=reference,
                          input_shapes=input_shapes or {}, load=load or LoadOptions())
        yield wrap(req, steps, report_miss=False).bundle


__all__ = ["KINDS", "WrapRequest", "WrapResult", "bare_bundle", "check_file", "is_model_file",
           "open_given", "wrap"]
