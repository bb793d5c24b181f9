"""``edgeconv debug BUNDLE --data DATA --reduce DIR``: the smallest piece of the canonical ONNX graph that still fails,
for an upstream bug report.

From the debug table's first diverging layer (the output cut: nothing after it matters), the piece grows backwards one
layer at a time (the node cut, as Polygraphy's ``debug reduce`` bisects), each candidate cut out of the fp32 canonical
graph with ``onnx.utils.Extractor``, built again by the bundle's own target and precision (int8: calibrated on the
values that reach it), run on its runtime and compared with the fp32 piece on ONNX Runtime. The first that still
diverges (the same SNR rule as debug) is written with the values that reach it (``inputs.npz``), what fp32 computes
(``expected.npz``), its artifact and ``repro.py``, which runs the artifact with the backend's own runtime and exits 1
when it still diverges. See docs/architecture.md.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from edgeconv.bundle import Bundle
from edgeconv.errors import BadInput, CheckFailed
from edgeconv.progress import Steps

MAX_GROW = 6  # layers added before the first diverging one at most
REPRO = '''"""Reproduces an edgeconv debug --reduce finding: {artifact} ({runtime}) against {onnx} (fp32, onnxruntime)."""
import sys
from pathlib import Path

import numpy as np

here = Path(__file__).parent
feed = dict(np.load(here / "inputs.npz"))
expected = np.load(here / "expected.npz")["{output}"]
{run}
got = np.asarray(got, dtype=np.float64).reshape(expected.shape)
err = expected - got
# channel-balanced SNR, as edgeconv debug measures it: the mean over channels of noise/signal, each capped at 1
axes = tuple(i for i in range(expected.ndim) if i != {axis} % expected.ndim)
signal, noise = (expected.astype(np.float64) ** 2).sum(axis=axes), (err ** 2).sum(axis=axes)
live = signal > max(float(np.median(signal)) * 1e-6, 0.0)
nsr = float(np.minimum(noise[live] / signal[live], 1.0).mean()) if live.any() else 1.0
snr = 150.0 if nsr <= 1e-15 else -10 * np.log10(nsr)
print(f"{{'{output}'}}: SNR {{snr:.1f}} dB (channel-balanced), max abs error {{np.abs(err).max():.4g}} "
      f"(diverges below {threshold} dB)")
sys.exit(1 if snr < {threshold} else 0)
'''
RUN = {
    "onnxruntime": ('import onnxruntime as ort\nsess = ort.InferenceSession(str(here / "{artifact}"))\n'
                    'got = np.concatenate([sess.run(["{output}"], {{k: v[i:i + {batch}] for k, v in feed.items()}})[0]\n'
                    '                      for i in range(0, len(next(iter(feed.values()))), {batch})])'),
    "openvino": ('import openvino as ov\nc = ov.Core().compile_model(str(here / "{artifact}"), "CPU", '
                 '{{"INFERENCE_PRECISION_HINT": "f32"}})\n'
                 'got = np.concatenate([c({{k: v[i:i + {batch}] for k, v in feed.items()}})[0]\n'
                 '                      for i in range(0, len(next(iter(feed.values()))), {batch})])'),
    "litert": ('import json\nfrom ai_edge_litert.interpreter import Interpreter\n'
               'opts = json.loads((here / "runner_options.json").read_text())\n'
               'names, perms = opts.get("tensor_names") or {{}}, opts.get("permutations") or {{}}\n'
               'run = Interpreter(model_path=str(here / "{artifact}")).get_signature_runner()\n'
               'outs = []\n'
               'for i in range(0, len(next(iter(feed.values()))), {batch}):\n'
               '    args = {{names.get(k, k): v[i:i + {batch}].transpose(perms[k]) if perms.get(k) else v[i:i + {batch}]\n'
               '            for k, v in feed.items()}}\n'
               '    y = run(**args)[names.get("{output}", "{output}")]\n'
               '    outs.append(y.transpose(np.argsort(perms["{output}"])) if perms.get("{output}") else y)\n'
               'got = np.concatenate(outs)'),
}


def _subgraph(model, layers, first) -> tuple[list[str], list[str]]:
    """The inputs and outputs of the piece made of ``layers`` (graph order), ending at ``first``'s output."""
    made = {t for layer in layers for t in layer.tensors}
    inputs = list(dict.fromkeys(i for layer in layers for i in layer.inputs if i not in made))
    return inputs, [first.tensors[-1]]


def _build(bundle: Bundle, piece: Path, work: Path, feed: dict[str, np.ndarray], batch: int):
    """The piece built by the bundle's target at its precision; its model artifact and the runner options."""
    import onnx

    from edgeconv.profiles import resolve_profile
    from edgeconv.targets import TargetContext, TargetOptions, backend

    m = bundle.manifest
    profile = resolve_profile(m["target"]["profile"])
    target = backend(profile.backend)
    proto = onnx.load(str(piece))
    shapes = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.input, *proto.graph.output]}
    n = len(next(iter(feed.values())))
    calib = [{k: v[i: i + batch] for k, v in feed.items()} for i in range(0, n, batch)]
    ctx = TargetContext(source_model=SimpleNamespace(path=piece, format="onnx", framework="onnx"), reference_inputs=feed,
                        input_shapes={i.name: shapes[i.name] for i in proto.graph.input},
                        output_shapes={o.name: shapes[o.name] for o in proto.graph.output},
                        layouts={i.name: None for i in proto.graph.input}, failed_build_dir=work / "failed-build",
                        calibration=calib if m["precision"].startswith("int8") else None)
    opts = TargetOptions(precision=m["precision"])
    target.check_options(profile, opts)  # the target's defaults (TFLite: float I/O unless the profile says otherwise)
    conversion = target.convert(piece, work, profile, opts, ctx)
    art = next(a for a in conversion.artifacts if a.role == "model")
    return art, {**art.extra.get("runner_options", {}), **target.check_runner_options(m["precision"], profile)}


def _diverges(work: Path, art, options, feed, expected: np.ndarray, batch: int, threshold: float,
              axis: int) -> dict[str, Any]:
    from edgeconv.data import run_batched
    from edgeconv.debug import tensor_metrics
    from edgeconv.runners import open_runner

    with open_runner(art.runner, work / art.file, options=options) as r:
        got = run_batched(r.infer, feed, batch)[0]
    mt = tensor_metrics(expected, np.asarray(got).reshape(expected.shape), axis)
    return {"snr_db": mt["snr_db"], "max_abs_error": mt["max_abs_error"], "fails": mt["snr_db"] < threshold}


def reduce(bundle_path: Path, data: Path, out: Path, samples: int = 8, threshold_db: float | None = None,
           steps: Steps | None = None) -> dict[str, Any]:
    """Write the smallest failing piece into ``out``; returns the record (and the command that reproduces it)."""
    import onnx
    from onnx.utils import Extractor

    from edgeconv.debug import DebugRequest, _feeds, capture, debug
    from edgeconv.debug.graph import layers_of

    steps = steps or Steps()
    report = debug(DebugRequest(bundle_path, data, samples, threshold_db), steps)
    first = report["first_diverging"]
    if first is None:
        raise BadInput(f"{bundle_path}: no layer diverges on {data.name} (threshold {report['threshold_db']:g} dB): "
                       "nothing to reduce")
    bundle = Bundle.open(bundle_path)
    m = bundle.manifest
    canon = bundle.path / next(a["file"] for a in m["artifacts"] if a["role"] == "canonical-onnx")
    feeds, _ = _feeds(bundle, data, samples)
    batch = len(next(iter(feeds[0].values())))
    values = capture.onnx_reference(canon, feeds)
    model = onnx.load(str(canon))
    layers = layers_of(model, m["source"]["framework"], set(values), m["source"].get("layer_names"))
    end = next(i for i, layer in enumerate(layers) if layer.name == first["layer"])
    out.mkdir(parents=True, exist_ok=True)
    tried = []
    for grow in range(min(MAX_GROW, end) + 1):
        inputs, outputs = _subgraph(model, layers[end - grow: end + 1], layers[end])
        work = out / f"try-{grow}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        piece = work / "model.onnx"
        onnx.save(Extractor(model).extract_model(inputs, outputs), str(piece))
        feed = {k: values[k] for k in inputs}
        with steps.step(f"reduce: {len(layers[end - grow: end + 1])} layer(s) ending at {first['source'] or first['layer']}"):
            art, options = _build(bundle, piece, work, feed, batch)
            found = _diverges(work, art, options, feed, values[outputs[0]], batch, report["threshold_db"],
                              -1 if m["source"]["framework"] == "keras" else 1)
        tried.append({"layers": grow + 1, "nodes": len(onnx.load(str(piece)).graph.node), **found})
        if found["fails"]:
            return _write(out, work, art, feed, outputs[0], values[outputs[0]], batch, report, tried)
    raise CheckFailed(f"no piece of up to {MAX_GROW + 1} layers ending at {first['source'] or first['layer']} diverges on "
                      "its own: the failure needs more of the graph", hint=json.dumps(tried))


def _write(out: Path, work: Path, art, feed, output: str, expected, batch: int, report, tried) -> dict[str, Any]:
    for f in work.iterdir():
        if f.is_file() or f.is_dir() and f.name != "failed-build":
            dest = out / ("reduced.onnx" if f.name == "model.onnx" else f.name)
            shutil.move(str(f), str(dest))
    for t in out.glob("try-*"):
        shutil.rmtree(t, ignore_errors=True)
    np.savez(out / "inputs.npz", **feed)
    np.savez(out / "expected.npz", **{output: expected})
    artifact = "reduced.onnx" if art.file == "model.onnx" else art.file
    run = RUN.get(art.runner)
    axis = -1 if report["source"]["framework"] == "keras" else 1
    record = {"dir": str(out), "onnx": "reduced.onnx", "artifact": artifact, "runtime": art.runner, "inputs": "inputs.npz",
              "expected": "expected.npz", "output": output, "first_diverging": report["first_diverging"]["source"]
              or report["first_diverging"]["layer"], "threshold_db": report["threshold_db"], "tried": tried,
              "nodes": tried[-1]["nodes"], "target": report["target"], "precision": report["precision"]}
    if run is not None:
        (out / "runner_options.json").write_text(json.dumps(art.extra.get("runner_options") or {}))
        (out / "repro.py").write_text(REPRO.format(artifact=artifact, runtime=art.runner, onnx="reduced.onnx", output=output,
                                                   threshold=report["threshold_db"], axis=axis,
                                                   run=run.format(artifact=artifact, output=output, batch=batch)))
        record["command"] = f"{Path(sys.executable).name} {out / 'repro.py'}"
    else:
        record["command"] = None
        record["note"] = f"no reproduction script for the {art.runner} runtime yet"
    return record
