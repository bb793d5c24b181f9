"""``validate --stream N``, the host's half: the stream a stateful model is checked on, made here where the source model
is, and sent inside the request (the core's ``stream`` runs it on the artifact, here or on a device).

The first feed is reference.npz's (the user's ``--sample``: one feed as the model takes it); the chunk inputs change per
step (``edgeconv.core.stream.make_chunks``); the state inputs take the previous step's paired outputs; the source model
runs the same stream here and its outputs per step go with the request (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.bundle import Bundle
from edgeconv.core.data import head, read_arrays, reference
from edgeconv.core.stream import encode, make_chunks, run_stream, state_pairs
from edgeconv.errors import BadInput
from edgeconv.frontends import LoadOptions, load_source
from edgeconv.specs import TensorSpec, sha256_of

STREAM_SEED = 0


def parse_state_map(values: list[str]) -> dict[str, str]:
    """``--state-map in=out`` (repeatable)."""
    out = {}
    for v in values:
        i, sep, o = v.partition("=")
        if not sep or not i.strip() or not o.strip():
            raise BadInput(f"--state-map {v!r}: write STATE_INPUT=NEXT_STATE_OUTPUT", hint="e.g. --state-map state=stateN")
        out[i.strip()] = o.strip()
    return out


def _source(bundle: Bundle, given: Path | None, trust_pickle: bool):
    """The source model the stream is compared with: ``--source``, else the one the manifest names when it is still
    here unchanged; its label for the report."""
    m = bundle.manifest
    recorded = Path(m["source"]["path"])
    path = given
    if path is None:
        if not recorded.is_file() or sha256_of(recorded) != m["source"].get("sha256"):
            raise BadInput(f"--stream compares every step with the source model, and {recorded} is "
                           + ("not on this machine" if not recorded.is_file() else "not the file the bundle was made from "
                              "(its sha256 differs)"), hint="pass the source model: --source MODEL")
        path = recorded
    lo = m["source"].get("load_options", {})
    source = load_source(path, LoadOptions(lo.get("model_class"), lo.get("model_kwargs") or {}, trust_pickle))
    return source, f"{source.framework} ({path.name}, run here at validate time)"


def stream_section(bundle_path: Path, steps: int, state_map: dict[str, str], chunk_ms: float | None,
                   source_path: Path | None, trust_pickle: bool, io_layout: str, sequence: Path | None = None) -> dict[str, Any]:
    """The request's ``stream``: the pairs, the first feed, the chunks (``sequence``'s, else made) and the source's
    outputs at every step."""
    if steps < 1:
        raise BadInput(f"--stream {steps}: give a number of consecutive chunks >= 1")
    if chunk_ms is not None and chunk_ms <= 0:
        raise BadInput(f"--chunk-ms {chunk_ms}: a chunk's duration in ms is > 0")
    if io_layout != "source":
        raise BadInput("--stream feeds the source's layout: leave --io-layout at source")
    bundle = Bundle.open(bundle_path)
    m = bundle.manifest
    pairs, how = state_pairs(m["inputs"], m["outputs"], state_map)
    ref_in, _ = reference(bundle.path, m, {}, "source")
    batch = next((s["shape"][0] for s in m["inputs"] if s["shape"] and isinstance(s["shape"][0], int)), 1)
    first = head(ref_in, batch)
    if sequence is None:
        chunks = make_chunks(first, pairs, steps, STREAM_SEED)
        chunks_from = "reference.npz's first feed, then seeded noise of its mean and spread (seed %d): %s" % (
            STREAM_SEED, ", ".join(chunks) or "no input changes")
    else:
        chunks = read_sequence(sequence, m["inputs"], steps, first)
        chunks_from = f"{sequence.name}: " + ", ".join(chunks)
    source, label = _source(bundle, source_path, trust_pickle)
    names = [o["name"] for o in m["outputs"]]
    outs, _ = run_stream(source.run, first, chunks, pairs, names, steps)
    expected = {n: np.stack([o[j] for o in outs]) for j, n in enumerate(names)}
    return {"steps": steps, "pairs": pairs, "paired_by": how, "chunk_ms": chunk_ms, "reference": label,
            "chunks_from": chunks_from,
            "first": {k: encode(v) for k, v in first.items()}, "chunks": {k: encode(v) for k, v in chunks.items()},
            "expected": {k: encode(v) for k, v in expected.items()}}


def read_sequence(path: Path, inputs: list[dict[str, Any]], steps: int, first: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stream's chunks from the user's file (``--data`` with ``--stream``): an array with one more axis than its input
    is that input's chunks, step by step (at least ``steps`` of them); an array of the input's own shape replaces the
    first feed's (an initial state, a sample rate). ``first`` is updated in place; returns the chunks."""
    arrays = read_arrays(path)
    chunks = {}
    for s in inputs:
        if s["name"] not in arrays:
            continue
        a, shape = arrays[s["name"]], list(s["shape"])
        if list(a.shape) == shape:
            first[s["name"]] = a.astype(s["dtype"], copy=False)
        elif list(a.shape[1:]) == shape and len(a) >= steps:
            chunks[s["name"]] = a[:steps].astype(s["dtype"], copy=False)
        else:
            raise BadInput(f"{path}: array {s['name']!r} has shape {'x'.join(map(str, a.shape)) or '0-d'}; --stream {steps} "
                           f"takes {steps} or more chunks of its input's shape ({'x'.join(map(str, shape)) or '0-d'}) on a "
                           "first axis, or one feed of that shape")
    if not chunks:
        raise BadInput(f"{path} holds no chunks for --stream (arrays: {', '.join(sorted(arrays))})",
                       hint="numpy.savez(path, NAME=chunks) with chunks of shape [steps, *the input's shape]")
    return chunks


def refuse_sequence(flag: str, path: Path | None, inputs: list[TensorSpec]) -> None:
    """A file of chunks (an array with one more axis than its input: ``input`` [steps, 1, 512] for a [1, 512] input,
    beside a state or sample rate of their own shapes or left out) given to convert is refused, saying what to pass
    instead: convert checks the artifact on one feed or a data set; the stream of chunks, the state carried from step to
    step, is ``validate --stream``'s (docs/architecture.md)."""
    if path is None or path.suffix != ".npz" or not path.is_file():
        return
    arrays = read_arrays(path)
    seq = {s.name: arrays[s.name] for s in inputs if s.shape is not None and s.name in arrays
           and arrays[s.name].ndim == len(s.shape) + 1}
    if not seq or len(seq) == len(inputs):  # every input one axis up: a data set mis-shaped (the loader says how)
        return
    steps = min(len(a) for a in seq.values())
    chunks = ", ".join(f"{k!r}: {len(a)} chunks of {'x'.join(map(str, a.shape[1:])) or '0-d'}" for k, a in seq.items())
    raise BadInput(f"{flag} {path.name} is a stream of chunks ({chunks}): convert checks the artifact on one feed as the "
                   "model takes it or on a data set (first axis = samples), not on a stream with its state carried",
                   hint=f"convert with one feed as the model takes it (--sample FEED.npz), then stream the file through the "
                        f"bundle: edgeconv validate BUNDLE --stream {steps} --data {path}")


def stream_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The validation table's rows for a stream (check, value, budget, ok): per-step parity, drift, latency per chunk."""
    s = report.get("stream")
    if not s:
        return []
    pairs = ", ".join(f"{i}→{o}" for i, o in s["pairs"]) or "none"
    fail = s["first_failure"]
    rows = [(f"stream: {s['steps']} chunks, state {pairs}", f"{s['steps_ok']}/{s['steps']} steps within tolerance"
             + ("" if fail is None else f"; first miss at step {fail['step']} ({', '.join(r['name'] for r in fail['outputs'])})"),
             "", "✅" if s["ok"] else "❌")]
    for name, d in s["drift"].items():
        growth = "" if d["growth"] is None else f", last/first quarter ×{d['growth']:.2g}"
        rows.append((f"stream drift {name}", f"max abs {d['max']:.2e} at step {d['max_step']}{growth}", "", ""))
    lat = s["latency"]
    rtf = "" if lat["real_time_factor"] is None else f", real-time factor {lat['real_time_factor']:.1f}"
    rows.append(("stream latency per chunk", f"p50 {lat['p50_ms']:.3f} / p90 {lat['p90_ms']:.3f} ms{rtf}", "", ""))
    return rows
