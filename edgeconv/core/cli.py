"""The device runner's command line: run an edgeconv bundle on a device with only numpy and the device's runtime.

    python3 edgeconv_runner.pyz [BUNDLE_DIR] --request request.json [--json]
    python3 edgeconv_runner.pyz [BUNDLE_DIR] [--runs 100] [--min-seconds 1] [--warmup 10] [--threads N] [--data test.npz]
                                [--stable] [--max-latency-ms MS] [--allow-unstable] [--max-memory-mb MB] [--json]
    python3 edgeconv_runner.pyz [BUNDLE_DIR] --batch-sizes 1,2,4,8 [--min-time S] [--runs 50] [--json]
    python3 edgeconv_runner.pyz [BUNDLE_DIR] --layers [--batch-sizes 1] [--runs 50] [--json]
    python3 edgeconv_runner.pyz --protocol

Exit codes: 0 the checks and budgets hold · 1 a check or budget was missed · 2 the request cannot be honoured here
(an option this runner or runtime does not take, bad data, a protocol it does not speak) · 3 the runtime or device is
missing, or the artifact was built for another device. With ``--json`` an error is also one JSON document on stdout.
See docs/architecture.md.
"""

import argparse
import json
import os
import sys

from .artifact import artifact_to_run, open_backend, runner_options
from .data import data_specs, load_request_data
from .errors import EXIT_CHECK, EXIT_OK, BadInput, EdgeconvError
from .execute import execute
from .memory import PhaseMemory, open_measured
from .request import PROTOCOL_VERSION, complete_request, resolve_paths
from .stats import PROFILE_MIN_SECONDS
from .steps import stderr_step
from .sweep import execute_profile


VALIDATE_OPTIONS = ("min_seconds", "warmup_seconds", "stable", "max_latency_ms", "allow_unstable", "max_memory_mb")


def _read_request(args):
    with open(args.request) as f:
        request = json.load(f)
    options = ("runs", "warmup", "threads", "data", "batch_sizes", "min_time", "layers") + VALIDATE_OPTIONS
    given = ["--" + k.replace("_", "-") for k in options if getattr(args, k) is not None]
    if given:
        raise BadInput("--request carries the options; do not also pass %s" % ", ".join(given))
    # relative paths in a request are relative to its file
    return resolve_paths(complete_request(request), os.path.dirname(os.path.abspath(args.request)))


def request_from_args(args):
    """The request a ``--request`` file holds, or the one the command line's options make."""
    if args.request:
        return _read_request(args)
    request = {"runs": args.runs if args.runs is not None else 100, "warmup": args.warmup if args.warmup is not None else 10,
               "threads": args.threads, "where": "device"}
    request.update((k, getattr(args, k)) for k in VALIDATE_OPTIONS if getattr(args, k) is not None)
    if args.batch_sizes or args.layers:
        if args.data:
            raise BadInput("--data applies to a validate run; --%s makes this a profile run"
                           % ("layers" if args.layers else "batch-sizes"))
        request.update(command="profile", batch_sizes=[int(v) for v in (args.batch_sizes or "").split(",") if v.strip()] or None,
                       min_time_s=args.min_time if args.min_time is not None or args.layers else PROFILE_MIN_SECONDS,
                       layers=bool(args.layers))
    elif args.data:
        request["data"] = {"file": os.path.abspath(args.data), "path": args.data}
    return complete_request(request)


# the fields of an artifact's device build that name a file of the bundle (edgeconv/bundle.py's _BUILD_FILES)
_BUILD_FILES = ("onnx", "engine", "timing_cache", "tflite", "file", "log")


def inside(root, rel):
    """``root/rel`` when ``rel`` is a plain relative path that stays inside ``root`` once symbolic links are followed,
    else None. Nothing is opened (realpath only reads links)."""
    if not isinstance(rel, str) or not rel or "\0" in rel or os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        return None
    base = os.path.realpath(root)
    target = os.path.realpath(os.path.join(base, rel))
    return target if target != base and os.path.commonpath([base, target]) == base else None


def _manifest(bundle):
    """The bundle's manifest, and every file it names confined to the bundle before any of them is opened (exit 2)."""
    if inside(bundle, "manifest.json") is None:
        raise BadInput("%s/manifest.json points outside the bundle (a link): refused" % bundle)
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    arts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(arts, list) or not all(isinstance(a, dict) for a in arts):
        raise BadInput("%s/manifest.json lists no artifacts" % bundle)
    named = [("reference.npz", "reference.npz")]
    for i, art in enumerate(arts):
        build = art.get("device_build") if isinstance(art.get("device_build"), dict) else {}
        named += [("artifacts[%d].file" % i, art.get("file"))]
        named += [("artifacts[%d].device_build.%s" % (i, k), build[k]) for k in _BUILD_FILES if k in build]
    out = ["%s %r" % (key, rel) for key, rel in named if inside(bundle, rel) is None]
    if out:
        raise BadInput("%s/manifest.json: %s point%s outside the bundle: refused before opening anything"
                       % (bundle, ", ".join(out), "s" if len(out) > 1 else ""))
    return manifest


def _confine_request(request, request_file):
    """A request file's paths (its data file, ``outputs_file``) stay in the request's folder (exit 2 otherwise)."""
    if not request_file:
        return request
    base = os.path.realpath(os.path.dirname(os.path.abspath(request_file)))
    named = [("data.file", (request.get("data") or {}).get("file")), ("outputs_file", request.get("outputs_file"))]
    for key, path in named:
        if path and not (isinstance(path, str) and inside(base, os.path.relpath(os.path.realpath(path), base))):
            raise BadInput("--request %s: %s %r is outside the request's folder %s: refused"
                           % (request_file, key, path, base))
    return request


def run(args):
    """Open the bundle and the backend, execute the request, print the report; returns the exit code."""
    request = _confine_request(request_from_args(args), args.request)
    bundle = os.path.abspath(args.bundle)
    manifest = _manifest(bundle)
    art, options = artifact_to_run(manifest)
    options = runner_options(art, options, request)
    memory = PhaseMemory()
    backend = open_measured(memory, art["runner"], lambda: open_backend(bundle, art, options, request["threads"]))
    try:
        if request["command"] == "profile":
            report = execute_profile(request, bundle, manifest, art, backend, stderr_step)
        else:
            data = load_request_data(request, data_specs(manifest, art, request["io_layout"]))
            report = execute(request, bundle, manifest, art, backend, data,
                             reopen=lambda: open_backend(bundle, art, options, request["threads"]), step=stderr_step,
                             memory=memory)
    finally:
        backend.close()
    if args.json:
        print(json.dumps(report, indent=2))
    elif "layers" in report:
        _print_layers(report["layers"])
    elif request["command"] == "profile":
        for row in report["sweep"]["rows"]:
            what = row.get("error") or "p50 %.3f ms, %.0f items/s" % (row["p50_ms"], row["throughput_items_s"])
            print("  batch %-4d %s" % (row["batch"], what))
    else:
        _print_validation(report)
    return EXIT_OK if report["ok"] else EXIT_CHECK


def _print_layers(lay):
    for row in lay["rows"][:20]:
        print("  %8.3f ms %5.1f%%  %-16s %s" % (row["p50_ms"], 100 * row["share"], row["op"], row["name"]))
    print("sum of layers %.3f ms vs end-to-end p50 %.3f ms (%d layers, p50 over %d runs, batch %d)" % (
        lay["sum_ms"], lay["end_to_end"]["p50_ms"], lay["count"], lay["runs"], lay["batch"]))


def _print_validation(report):
    mo, lat = report["measured_on"], report["latency"]
    print("%s on %s (%s): %s, p50 %.3f ms, p99 %.3f ms over %d runs" % (
        report["artifact"], mo["runtime"], mo["host"], "ok" if report["ok"] else "FAILED", lat["p50_ms"], lat["p99_ms"],
        lat["runs"]))
    st = lat["stability"]
    print("  latency %s%s; peak RSS %.1f MB" % (st["verdict"], ": " + "; ".join(st["reasons"]) if st["reasons"] else "",
                                              report["memory"]["peak_mb"]))
    if "accuracy" in report:
        acc = report["accuracy"]
        print("  top-1 %.2f%% (drop %s points)" % (100 * acc["artifact"]["top1"],
                                                  "unknown" if acc["drop_points"] is None else "%.2f" % acc["drop_points"]))
    for r in report["parity"]["outputs"]:
        print("  %-20s %s" % (r["name"], "ok" if r["ok"] else "FAILED %s" % r["reason"]))
    for b in report["budgets"]:
        print("  %-20s %s (%.4g, limit %s)%s" % (b["name"], "ok" if b["ok"] else "FAILED", b["value"], b["limit"],
                                                 " " + b["compared"] if b.get("compared") else ""))


def parser(default_bundle=None):
    ap = argparse.ArgumentParser(description="Run an edgeconv bundle on this device.")
    ap.add_argument("bundle", nargs="?", default=default_bundle or os.getcwd(),
                    help="the bundle folder (default: the folder this runner is in)")
    ap.add_argument("--request", default=None, help="a request.json written by edgeconv (validate or profile)")
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-seconds", type=float, default=None, help="time at least this long (default 1) as well as --runs")
    ap.add_argument("--warmup-seconds", type=float, default=None, help="warm up at least this long (default 0.2)")
    ap.add_argument("--stable", action="store_true", default=None, help="repeat rounds until successive p50s agree")
    ap.add_argument("--max-latency-ms", type=float, default=None, help="budget: p50 latency (never passed when unstable)")
    ap.add_argument("--allow-unstable", action="store_true", default=None, help="judge the latency budget even when unstable")
    ap.add_argument("--max-memory-mb", type=float, default=None, help="budget: peak resident memory of the run")
    ap.add_argument("--data", default=None, help="labelled .npz (x, y): top-1 accuracy on the device")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 1,2,4,8: a latency/throughput sweep")
    ap.add_argument("--min-time", type=float, default=None, help="sweep: run each batch size for at least this many seconds")
    ap.add_argument("--layers", action="store_true", default=None,
                    help="per-layer times from the runtime's own profiler (ONNX Runtime) instead of the sweep")
    ap.add_argument("--protocol", action="store_true", help="print the request protocol this runner speaks, and exit")
    return ap


def main(argv=None, default_bundle=None):
    """The command line; ``default_bundle``: the folder the runner file is in (the bundle it travels with)."""
    args = parser(default_bundle).parse_args(argv)
    if args.protocol:
        print(PROTOCOL_VERSION)
        return EXIT_OK
    try:
        return run(args)
    except EdgeconvError as exc:
        sys.stderr.write("error: %s\n" % exc.message + ("hint: %s\n" % exc.hint if exc.hint else ""))
        if args.json:
            print(json.dumps({"ok": False, "error": {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint,
                                                     "exit_code": exc.exit_code}}, indent=2))
        return exc.exit_code
