"""Streaming: a stateful model (voice-activity detection, keyword spotting, streaming speech recognition) run over
consecutive chunks, each step's output state fed into the next step's state input, and every step compared with the
source model's outputs over the same stream. The host makes the stream (chunks, first feed, the source's outputs per
step) and sends it inside the request; this module runs it on a backend, here or on a device, and reports per-step
parity, the drift of the error over the stream and the latency per chunk (docs/architecture.md).
Python 3.6 + numpy, like the rest of the core.
"""

import base64
import time

import numpy as np

from .errors import BadInput
from .parity import compare_outputs, tolerance_of

# how an exporter names the next state after the state input: state → stateN, h0 → hn, buffer_in → buffer_out
_SUFFIXES = ("N", "n", "_n", "_out", "_next", "_new", "Out", "_o", "_1")


def _candidates(name):
    """Output names that would be ``name``'s next state."""
    out = [name + s for s in _SUFFIXES] + ["next_" + name, "new_" + name]
    for a, b in (("_in", "_out"), ("in", "out"), ("0", "n"), ("0", "N"), ("_0", "_n"), ("_prev", "_next"), ("prev", "next")):
        if name.endswith(a) and len(name) > len(a):
            out.append(name[:-len(a)] + b)
    if name.startswith("in_"):
        out.append("out_" + name[3:])
    return out


def _same_kind(a, b):
    return list(a["shape"]) == list(b["shape"]) and a["dtype"] == b["dtype"]


def state_pairs(inputs, outputs, given=None):
    """``([[input, output], ...], how)``: the state inputs and the outputs that carry them to the next step. From
    ``given`` (``--state-map in=out``) when there is one; else by name (``state``→``stateN``, ``h0``→``hn``,
    ``buffer_in``→``buffer_out``); else, when no name pairs, by shape and dtype where exactly one output matches an
    input. An input paired with an output of another shape or dtype is refused."""
    ins = dict((s["name"], s) for s in inputs)
    outs = dict((s["name"], s) for s in outputs)
    if given:
        for i, o in given.items():
            if i not in ins or o not in outs:
                raise BadInput("--state-map %s=%s: %s" % (i, o, "no input %r (inputs: %s)" % (i, ", ".join(ins)) if i not in ins
                                                           else "no output %r (outputs: %s)" % (o, ", ".join(outs))))
        pairs, how = [[i, o] for i, o in given.items()], "--state-map"
    else:
        pairs = []
        for i in ins:
            named = [o for o in _candidates(i) if o in outs and _same_kind(ins[i], outs[o])]
            if named:
                pairs.append([i, named[0]])
        how = "by name"
        if not pairs:
            for i in ins:
                match = [o for o in outs if _same_kind(ins[i], outs[o])]
                if len(match) == 1 and ins[i]["shape"]:
                    pairs.append([i, match[0]])
            how = "by shape and dtype (no output is named after an input)"
    for i, o in pairs:
        if not _same_kind(ins[i], outs[o]):
            raise BadInput("state %r (%s %s) cannot take output %r (%s %s)" % (
                i, "x".join(map(str, ins[i]["shape"])) or "0-d", ins[i]["dtype"], o,
                "x".join(map(str, outs[o]["shape"])) or "0-d", outs[o]["dtype"]))
    if not pairs:
        raise BadInput("no input of this model is a state carried by an output (inputs: %s; outputs: %s)" % (
            ", ".join(ins), ", ".join(outs)), hint="name the pairs: --state-map STATE_INPUT=NEXT_STATE_OUTPUT")
    return pairs, how


def encode(a):
    """An array as JSON can carry it, exactly (its bytes in base64)."""
    a = np.asarray(a, order="C")
    return {"dtype": a.dtype.str, "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(d):
    return np.frombuffer(base64.b64decode(d["b64"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def make_chunks(first, pairs, steps, seed=0):
    """The inputs that change per step, ``{name: array [steps, ...]}``: each non-state float input of rank >= 1, its
    first chunk ``first``'s, the others seeded noise of the same mean and spread. 0-d and integer inputs (a sample
    rate) stay as ``first`` has them."""
    rng = np.random.RandomState(seed)
    states = set(i for i, _ in pairs)
    chunks = {}
    for name, x in first.items():
        x = np.asarray(x)
        if name in states or x.ndim == 0 or x.dtype.kind != "f":
            continue
        noise = rng.standard_normal((steps - 1,) + x.shape) * (float(x.std()) or 1.0) + float(x.mean())
        chunks[name] = np.concatenate([x[None], noise.astype(x.dtype)])
    return chunks


def run_stream(run, first, chunks, pairs, out_names, steps, clock=time.perf_counter):
    """``steps`` consecutive calls of ``run(feed) -> outputs``: the chunk inputs from ``chunks``, the state inputs from
    the previous step's paired outputs (``first``'s at step 0). Returns the outputs per step and each call's seconds."""
    index = dict((n, i) for i, n in enumerate(out_names))
    feed = dict(first)
    outs, seconds = [], []
    for step in range(steps):
        for name, arr in chunks.items():
            feed[name] = arr[step]
        t0 = clock()
        out = [np.array(o) for o in run(feed)]
        seconds.append(clock() - t0)
        outs.append(out)
        for i, o in pairs:
            feed[i] = out[index[o]]
    return outs, seconds


def _drift(errors):
    """How an output's max abs error moves over the stream: first, last, the largest and where, and the mean of the
    last quarter of the steps over the first quarter's (None when the first quarter has no error)."""
    e = np.asarray(errors, dtype=np.float64)
    q = max(1, len(e) // 4)
    head = float(e[:q].mean())
    return {"first": float(e[0]), "last": float(e[-1]), "max": float(e.max()), "max_step": int(e.argmax()),
            "growth": float(e[-q:].mean()) / head if head > 0 else None}


def _latency(seconds, chunk_ms):
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50 = float(np.median(ms))
    out = {"chunks": int(ms.size), "p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(ms.max()),
           "mean_ms": float(ms.mean()), "chunk_ms": chunk_ms, "real_time_factor": None}
    if chunk_ms:
        out["real_time_factor"] = float(chunk_ms) / p50 if p50 > 0 else None  # > 1: faster than real time
    return out


def stream_check(request, manifest, backend):
    """The request's stream run on ``backend`` (``prepare``, ``run``) and compared step by step with the source's
    outputs it carries: ``{steps, pairs, per_step, drift, first_failure, latency, ok}``. The tolerance is the one
    reference parity uses (the manifest's for its precision, the request's ``atol`` over it). The latency of a chunk is
    the runtime's inference (``last_s``, as validate's latency), else its prepare and run."""
    s = request["stream"]
    names = [o["name"] for o in manifest["outputs"]]
    first = dict((k, decode(v)) for k, v in s["first"].items())
    chunks = dict((k, decode(v)) for k, v in s["chunks"].items())
    expected = dict((k, decode(v)) for k, v in s["expected"].items())
    steps = int(s["steps"])
    inferred = []

    def call(feed):
        out = backend.run(backend.prepare(feed))
        inferred.append(getattr(backend, "last_s", None))
        return out

    outs, seconds = run_stream(call, first, chunks, s["pairs"], names, steps)
    timed = "inference" if None not in inferred else "prepare + inference"
    seconds = inferred if timed == "inference" else seconds
    overrides = dict(manifest["tolerances"].get("overrides") or {})
    overrides.update(request["atol"] or {})
    tol = tolerance_of(manifest["tolerances"].get(manifest["precision"]) or {})
    per_step, first_failure = [], None
    for i, out in enumerate(outs):
        rep = compare_outputs("step %d" % i, names, [expected[n][i] for n in names], out, tol, overrides)
        per_step.append({"step": i, "ok": rep["ok"], "max_abs": dict((r["name"], r["max_abs"]) for r in rep["outputs"])})
        if not rep["ok"] and first_failure is None:
            first_failure = {"step": i, "outputs": [r for r in rep["outputs"] if not r["ok"]]}
    drift = dict((n, _drift([p["max_abs"][n] if p["max_abs"][n] is not None else float("inf") for p in per_step]))
                 for n in names)
    return {"steps": steps, "pairs": s["pairs"], "paired_by": s.get("paired_by"), "reference": s.get("reference"),
            "chunks_from": s.get("chunks_from"), "ok": first_failure is None, "steps_ok": sum(p["ok"] for p in per_step),
            "first_failure": first_failure, "drift": drift, "per_step": per_step,
            "latency": dict(_latency(seconds, s.get("chunk_ms")), timed=timed)}


def check_stream_request(stream):
    """A request's ``stream`` field, checked (``complete_request``)."""
    missing = [k for k in ("steps", "pairs", "first", "chunks", "expected") if k not in stream]
    if missing:
        raise BadInput("the request's stream lacks %s" % ", ".join(missing))
    if int(stream["steps"]) < 1:
        raise BadInput("--stream takes a number of steps >= 1")
    short = [k for k, v in stream["expected"].items() if v["shape"][:1] and v["shape"][0] < int(stream["steps"])]
    if short or not stream["expected"]:
        raise BadInput("the request's stream holds fewer source outputs than its %s steps" % stream["steps"])


def without_arrays(request):
    """The request as a report keeps it: the stream's arrays left out (their shapes stay)."""
    if not request.get("stream"):
        return request
    s = dict(request["stream"])
    for k in ("first", "chunks", "expected"):
        s[k] = dict((n, {"dtype": v["dtype"], "shape": v["shape"]}) for n, v in s[k].items())
    return dict(request, stream=s)


def kept_inputs(input_shapes, output_shapes):
    """The inputs a converter should keep exactly as the model declares them: the 0-d ones and the states an output
    carries (``state_pairs`` on shapes: by name, or by shape beside another input). A layout converter (onnx2tf) that
    moves a state's axes would feed the recurrent op a state of the wrong shape."""
    ins = [{"name": n, "shape": list(s), "dtype": None} for n, s in input_shapes.items()]
    outs = [{"name": n, "shape": list(s), "dtype": None} for n, s in output_shapes.items()]
    try:
        pairs, how = state_pairs(ins, outs)
    except BadInput:  # no state: nothing to keep but the 0-d inputs
        pairs, how = [], None
    if how != "by name" and len(ins) < 2:  # one input shaped like an output (an autoencoder) is no state
        pairs = []
    states = set(i for i, _ in pairs)
    return [s["name"] for s in ins if not s["shape"] or s["name"] in states]
