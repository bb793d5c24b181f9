"""The request: one serialisable object per validate or profile run (budgets, tolerances, runtime options, data,
runs), run in-process by edgeconv or sent with the bundle to a device and run there by the same code.

``PROTOCOL_VERSION`` is the contract between a host and a bundle's device runner: the request carries it, and
``python3 edgeconv_runner.pyz --protocol`` prints the one the runner speaks. Runners from before the protocol (the
single-file ``edgeconv_runner.py``) count as protocol 1. See docs/architecture.md.
"""

import os

from .errors import BadInput, UnknownProtocol
from .stream import check_stream_request
from .stats import DEFAULT_MIN_SECONDS, DEFAULT_RUNS, DEFAULT_WARMUP, DEFAULT_WARMUP_SECONDS, STABLE_MAX_S, STABLE_TOLERANCE

PROTOCOL_VERSION = 4
# the protocols this runner reads: 2 adds the ``protocol`` field to 1's request, 3 ``score_output``, 4 timing by time and
# stability (min_seconds, warmup_seconds, stable*, allow_unstable) and max_memory_mb
PROTOCOLS = (1, 2, 3, 4)
REQUEST_SCHEMA = 1

REQUEST_DEFAULTS = {
    "schema": REQUEST_SCHEMA,
    "protocol": PROTOCOL_VERSION,  # a request without one is read as this runner's (protocol 1's fields are all here)
    "command": "validate",  # or "profile"
    "runs": DEFAULT_RUNS, "warmup": DEFAULT_WARMUP, "threads": None,
    # validate: at least ``runs`` and ``min_seconds`` of timed runs after at least ``warmup`` runs and ``warmup_seconds``
    # (the defaults and why: edgeconv.core.stats); ``stable``: rounds until successive p50s agree (stats.measure)
    "min_seconds": DEFAULT_MIN_SECONDS, "warmup_seconds": DEFAULT_WARMUP_SECONDS, "stable": False,
    "stable_tolerance": STABLE_TOLERANCE, "stable_max_s": STABLE_MAX_S,
    "allow_unstable": False,  # judge the latency budget on an unstable measurement anyway
    "max_memory_mb": None,  # budget: peak RSS of the run (validate) or of each batch size (profile)
    "max_latency_ms": None,  # budget: p50 latency
    "max_accuracy_drop": None,  # budget: top-1 points below the source
    "score_output": None,  # the output accuracy is computed on (--score-output); None: the core's rule (accuracy.score_output)
    "atol": {},  # max abs error per output name ("*": every output), over the manifest's tolerances
    "runner_options": {},  # runtime options: device, inference_precision, performance_hint (OpenVINO) …
    "io_layout": "source",  # "nhwc": the data is in the TFLite artifact's own layout
    "data": None,  # {"file": where to read it (relative: to the request file), "path": its name for the report, "sha256"}
    "source_accuracy": None,  # measured on the host with --source, sent along
    "source_predictions": None,  # unlabelled --data with --source: the source's top-1 class per item, from the host
    "where": "host",  # "device" when it runs on a device for a host
    "batch_sizes": None, "min_time_s": None, "budget_ms": None,  # profile
    "layers": False,  # profile: per-layer times from the runtime's own profiler (one batch size) instead of the sweep
    "outputs_file": None,  # validate: save the artifact's outputs here (a .npz file: reference:NAME, data:NAME; relative: to
    # the request file, as data's) to compare machines
    "stream": None,  # validate --stream: {steps, pairs, first, chunks, expected (the source's per step), ...}: core/stream.py
}


def check_protocol(request):
    """Refuse a request made for a protocol this runner does not speak (a newer edgeconv made it), before anything
    else in it is read: its other fields may mean something this runner cannot know."""
    protocol = request.get("protocol", PROTOCOL_VERSION)
    if isinstance(protocol, bool) or not isinstance(protocol, int) or protocol not in PROTOCOLS:
        raise UnknownProtocol("the request is protocol %r; this runner speaks protocols %s" % (
            protocol, " and ".join(str(p) for p in PROTOCOLS)),
            hint="a newer edgeconv made the request: convert the bundle again so that it carries a matching runner")


def complete_request(request):
    """The request with every field, checked: an unknown protocol, field or schema is refused, not ignored."""
    check_protocol(request)
    unknown = sorted(set(request) - set(REQUEST_DEFAULTS))
    if unknown:
        raise BadInput("the request has fields this runner does not know: %s (a newer edgeconv made it: convert the "
                       "bundle again so it carries a matching runner)" % ", ".join(unknown))
    out = dict(REQUEST_DEFAULTS)
    out.update(request)
    if out["schema"] != REQUEST_SCHEMA:
        raise BadInput("request schema %r; this runner reads schema %d" % (out["schema"], REQUEST_SCHEMA))
    if out["command"] not in ("validate", "profile"):
        raise BadInput("request command %r: this runner runs validate and profile" % (out["command"],))
    if int(out["runs"]) < 1 or int(out["warmup"]) < 0:
        raise BadInput("--runs must be >= 1 and --warmup >= 0")
    if float(out["min_seconds"]) < 0 or float(out["warmup_seconds"]) < 0 or float(out["stable_max_s"]) < 0:
        raise BadInput("--min-seconds, --warmup-seconds and the --stable time cap must be >= 0")
    if not 0 < float(out["stable_tolerance"]) < 1:
        raise BadInput("the --stable tolerance must be a fraction between 0 and 1, not %r" % (out["stable_tolerance"],))
    if out["max_accuracy_drop"] is not None and out["data"] is None:
        raise BadInput("--max-accuracy-drop needs --data (a labelled .npz)")
    if out["score_output"] is not None and out["data"] is None:
        raise BadInput("--score-output names the output accuracy is computed on: pass --data too")
    if out["data"] is not None:  # the same fields however it was made (sha256: sent by a host to check the copy)
        out["data"] = dict(out["data"])
        out["data"].setdefault("path", None)
        out["data"].setdefault("sha256", None)
    if out["outputs_file"] is not None and not str(out["outputs_file"]).endswith(".npz"):
        # numpy.savez would append .npz itself, and the file would not be where the request says
        raise BadInput("outputs_file %r must end in .npz" % (out["outputs_file"],))
    if out["layers"]:
        _check_layers(out)
    if out["stream"] is not None:
        check_stream_request(out["stream"])
    return out


def _check_layers(request):
    if request["command"] != "profile":
        raise BadInput("layers is a profile request's option, not %s's" % request["command"])
    given = [flag for k, flag in (("min_time_s", "--min-time"), ("budget_ms", "--budget-ms")) if request[k] is not None]
    if len(request["batch_sizes"] or [1]) != 1:
        given.append("several --batch-sizes")
    if given:
        raise BadInput("--layers profiles one batch size with --runs and --warmup; it does not take %s" % ", ".join(given))


def resolve_paths(request, base_dir):
    """The request with its relative paths (the data file, ``outputs_file``) made relative to ``base_dir``, the folder
    of the request file they were written in; unchanged without one."""
    out = dict(request)
    if base_dir is None:
        return out
    base_dir = str(base_dir)
    if out["data"] and not os.path.isabs(out["data"]["file"]):
        out["data"] = dict(out["data"], file=os.path.join(base_dir, out["data"]["file"]))
    if out["outputs_file"] and not os.path.isabs(out["outputs_file"]):
        out["outputs_file"] = os.path.join(base_dir, out["outputs_file"])
    return out
