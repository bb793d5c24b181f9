"""``edgeconv validate``: run a bundle's artifact and report parity, accuracy and latency, with budgets that fail
the run (exit 1) when missed.

A validate run is one serialisable request (``ValidateRequest.to_request``: budgets, tolerances, runtime
options, data, runs, warm-up, threads, layout). Here it is executed in-process by the device runner's own
``execute`` (``edgeconv.core.execute``) on edgeconv's runners; with ``--remote`` the same request travels with the
bundle and the device executes it with the same function (the bundle's edgeconv_runner.pyz, or edgeconv where the
device has it), so the report, the numbers and the verdict are computed by one piece of code wherever they are
measured (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeconv.bundle import Bundle, write_json
from edgeconv.core.accuracy import recorded_score_output, score_output, scored, topk_accuracy
from edgeconv.core.artifact import artifact_to_run, runner_options
from edgeconv.core.backends.base import inverse_perm
from edgeconv.core.data import data_specs, load_request_data
from edgeconv.core.execute import execute
from edgeconv.core.memory import PhaseMemory, open_measured
from edgeconv.core.request import REQUEST_SCHEMA, complete_request, resolve_paths
from edgeconv.data import data_record, fixed_batch, load_inputs, run_batched
from edgeconv.errors import BadInput
from edgeconv.frontends import LoadOptions, load_source
from edgeconv.progress import Steps
from edgeconv.runners import open_runner
from edgeconv.specs import TensorSpec, sha256_of
from edgeconv.streaming import stream_section


@dataclass
class ValidateRequest:
    bundle: Path
    data: Path | None = None
    source: Path | None = None  # measured here, at validate time; its accuracy travels in the request
    trust_pickle: bool = False
    runs: int = 100
    warmup: int = 10
    threads: int | None = None
    max_accuracy_drop: float | None = None
    max_latency_ms: float | None = None
    report: Path | None = None
    atol: dict[str | None, float] = field(default_factory=dict)
    device: str | None = None  # runtimes with devices (OpenVINO): CPU, GPU, NPU, AUTO
    inference_precision: str | None = None  # OpenVINO: f32 (default, honest parity) or native
    performance_hint: str | None = None  # OpenVINO: latency (default) or throughput (adds an async-queue figure)
    io_layout: str = "source"  # "nhwc": --data is in the artifact's own layout (TFLite NHWC), fed as it is
    score_output: str | None = None  # the output accuracy is computed on (else the core's rule: accuracy.score_output)
    min_seconds: float = 1.0  # timed runs: at least `runs` and at least this long (defaults justified in core/stats.py)
    warmup_seconds: float = 0.2
    stable: bool = False  # rounds until successive p50s agree
    allow_unstable: bool = False  # judge --max-latency-ms on an unstable measurement anyway
    max_memory_mb: float | None = None  # budget: peak RSS of the run
    stream: int | None = None  # --stream N: N consecutive chunks, state carried (edgeconv/streaming.py)
    state_map: dict[str, str] = field(default_factory=dict)  # --state-map in=out
    chunk_ms: float | None = None  # --chunk-ms: a chunk's duration, for the real-time factor

    def to_request(self) -> dict[str, Any]:
        """The serialisable request (``edgeconv.core.request.REQUEST_DEFAULTS`` names every field)."""
        options = {"device": self.device, "inference_precision": self.inference_precision,
                   "performance_hint": self.performance_hint}
        return {"schema": REQUEST_SCHEMA, "command": "validate", "runs": self.runs, "warmup": self.warmup,
                "threads": self.threads, "max_latency_ms": self.max_latency_ms, "max_accuracy_drop": self.max_accuracy_drop,
                "score_output": self.score_output, "min_seconds": self.min_seconds, "warmup_seconds": self.warmup_seconds,
                "stable": self.stable, "allow_unstable": self.allow_unstable, "max_memory_mb": self.max_memory_mb,
                "atol": {"*" if k is None else k: v for k, v in self.atol.items()},
                "runner_options": {k: v for k, v in options.items() if v is not None}, "io_layout": self.io_layout,
                "data": None if self.data is None else {"file": str(self.data.resolve()), "path": str(self.data)}}


def _data_specs(bundle: Bundle, art: dict[str, Any], io_layout: str) -> list[TensorSpec]:
    """The inputs --data must match: the source layout, or with --io-layout nhwc the artifact's own (the core's rule)."""
    return [TensorSpec.from_dict(d) for d in data_specs(bundle.manifest, art, io_layout)]


def build_request(req: ValidateRequest, steps: Steps | None = None, *, check_data: bool = False) -> dict[str, Any]:
    """The request for ``req``, checked here. With ``--source`` the source model's accuracy on --data is measured
    here (the device has no torch or TensorFlow) and sent along. ``check_data``: read --data now (a remote run,
    where a bad file should fail before any connection)."""
    steps = steps or Steps()
    request = complete_request(req.to_request())
    bundle = Bundle.open(req.bundle)
    art, options = artifact_to_run(bundle.manifest)
    runner_options(art, options, request)  # --io-layout and friends, refused here as on the device
    if req.stream is not None:  # --data, if given, is the stream's chunks (edgeconv/streaming.py), not a data set
        with steps.step(f"Source outputs over a stream of {req.stream} chunks"):
            request["stream"] = stream_section(req.bundle, req.stream, req.state_map, req.chunk_ms, req.source,
                                               req.trust_pickle, req.io_layout, req.data)
        request["data"] = None
        return request
    if req.source is not None and req.data is None:
        raise BadInput("--source measures the source model's accuracy on --data: pass --data too")
    if req.data is not None and (check_data or req.source is not None):
        feed, labels = load_inputs(req.data, _data_specs(bundle, art, req.io_layout), need_labels=False)
        if labels is None and req.max_accuracy_drop is not None:
            raise BadInput(f"--max-accuracy-drop needs labels: {req.data} has no 'y'", hint="numpy.savez(path, x=..., y=...)")
        request["data"]["sha256"] = sha256_of(req.data)
        if req.source is not None:
            what = "accuracy" if labels is not None else "predictions"
            with steps.step(f"Source {what} on {req.data.name} ({req.source.name})"):
                scores, framework, which = _source_scores(req, bundle, art, feed, labels, request)
                if labels is None:
                    request["source_predictions"] = scores.argmax(1).tolist()
                else:
                    acc = topk_accuracy(scores, labels)
                    request["source_accuracy"] = {**data_record(req.data, len(labels)), **acc, **which,
                                                  "measured_with": f"{framework} (at validate time)"}
    return request


def _source_scores(req: ValidateRequest, bundle: Bundle, art: dict[str, Any], feed, labels,
                   request: dict[str, Any]) -> tuple[Any, str, dict[str, str]]:
    """The source model's class scores on --data (in the source's layout), measured here, its framework, and which output
    was scored (the output the artifact's accuracy is computed on: the core's ``score_output``)."""
    if req.io_layout == "nhwc":  # the source takes its own layout
        perms = (art.get("runner_options") or {}).get("permutations") or {}
        feed = {k: v.transpose(inverse_perm(perms[k])) if perms.get(k) else v for k, v in feed.items()}
    lo = bundle.manifest["source"].get("load_options", {})
    source = load_source(req.source, LoadOptions(lo.get("model_class"), lo.get("model_kwargs") or {}, req.trust_pickle))
    batch = fixed_batch(bundle.inputs)
    if bundle.manifest.get("given"):  # a given file (edgeconv/wrap.py): its inputs in the source's names and layout
        from edgeconv.wrap import source_feed

        feed = source_feed(source.inputs, bundle.inputs, feed)
    out = run_batched(source.run, feed, batch)
    names = [o.name for o in bundle.outputs]
    idx, chosen_by = score_output(names, out, labels, *recorded_score_output(bundle.manifest, request))
    if idx is None:
        raise BadInput("--source compares class scores; this model has no output of shape (N, classes)")
    return out[idx], source.framework, scored(names, idx, chosen_by)


def run_request(bundle_path: Path, request: dict[str, Any], *, report: Path | None = None, steps: Steps | None = None,
                base_dir: Path | None = None) -> dict[str, Any]:
    """Execute a validate request in-process: open the artifact on edgeconv's runner and run the core's ``execute``
    on it. ``base_dir``: where relative paths in the request are (the request file's folder)."""
    steps = steps or Steps()
    request = complete_request(request)
    if request["command"] != "validate":
        raise BadInput(f"a {request['command']} request given to validate")
    request = resolve_paths(request, base_dir)
    bundle = Bundle.open(bundle_path)
    m = bundle.manifest
    art, options = artifact_to_run(m)
    options = runner_options(art, options, request)
    data = load_request_data(request, data_specs(m, art, request["io_layout"]))
    artifact = bundle.path / art["file"]

    def open_it():
        return open_runner(art["runner"], artifact, threads=request["threads"], options=options)

    memory = PhaseMemory()
    with steps.step(f"Loading {art['file']} on {art['runner']}"):
        runner = open_measured(memory, art["runner"], open_it)
    with runner:
        result = execute(request, str(bundle.path), m, art, runner, data, reopen=open_it, step=steps.step, memory=memory)
    dest = report or bundle.path / "validation.json"
    write_json(dest, result)
    result["report_file"] = str(dest)
    return result


def validate(req: ValidateRequest, steps: Steps | None = None) -> dict[str, Any]:
    return run_request(req.bundle, build_request(req, steps), report=req.report, steps=steps)


def read_request(path: Path) -> dict[str, Any]:
    """A request.json (as ``validate --remote`` sends it, or written by hand)."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise BadInput(f"cannot read the request {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadInput(f"{path} is not a request (a JSON object)")
    return doc


__all__ = ["ValidateRequest", "build_request", "read_request", "run_request", "validate"]
