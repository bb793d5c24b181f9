#!/usr/bin/env python3
"""edgeconv device runner: run an edgeconv bundle on the device with only numpy and the device's runtime.

    python3 edgeconv_runner.py [BUNDLE_DIR] [--runs 100] [--warmup 10] [--threads N] [--data test.npz]
                               [--batch-sizes 1,2,4,8 [--min-time S]] [--json]

It checks the artifact against reference.npz (the source model's own outputs) with the manifest's tolerance
and measures latency (warm-up, timed runs of the runtime call only, percentiles). Exit 0 when parity holds,
1 when it does not, 3 when the runtime or device is missing or the artifact was built for another device.

Written for Python 3.6 (JetPack 4.6) and 3.7 (Coral Dev Board): no dataclasses, no walrus, no
``from __future__ import annotations``; a test parses it with feature_version=(3, 6). edgeconv itself uses
the backends below (LiteRT, TensorRT) so there is one implementation of each.
"""

import argparse
import json
import os
import platform
import socket
import sys
import time

import numpy as np

EXIT_OK, EXIT_CHECK, EXIT_MISSING = 0, 1, 3


class MissingRuntime(Exception):
    """The runtime, device or a compatible build is not here (exit 3)."""


def inverse_perm(perm):
    return [int(i) for i in np.argsort(perm)]


# -- LiteRT / TFLite (and the Edge TPU through its delegate) -------------------------------------------------
def tflite_interpreter_module():
    """ai-edge-litert where it exists, else tflite_runtime (Coral, older boards), else TensorFlow."""
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            return __import__(name, fromlist=["Interpreter"])
        except ImportError:
            pass
    try:
        import tensorflow as tf
        return tf.lite
    except ImportError:
        raise MissingRuntime("no TFLite runtime: pip install ai-edge-litert (or tflite-runtime)")


class LiteRtBackend(object):
    """Tensors by the manifest's names, in the source layout, float in and out (quantized tensors are
    quantized/dequantized with their own scale and zero point). Times ``invoke()``."""

    name = "litert"

    def __init__(self, path, threads=None, tensor_names=None, permutations=None, io_layout="source", delegate=None):
        mod = tflite_interpreter_module()
        delegates = []
        if delegate:
            try:
                delegates = [mod.load_delegate(delegate)]
            except (ValueError, OSError) as exc:
                raise MissingRuntime("cannot load the delegate %s: %s" % (delegate, exc))
        kwargs = {"model_path": str(path), "num_threads": threads}
        if delegates:
            kwargs["experimental_delegates"] = delegates
        self.interp = mod.Interpreter(**kwargs)
        self.interp.allocate_tensors()
        self.delegate = delegate
        sig = self.interp.get_signature_runner()
        details = {}
        for kind, table in (("in", sig.get_input_details()), ("out", sig.get_output_details())):
            for key, d in table.items():
                details[key] = dict(d, kind=kind)
        names = tensor_names or dict((k, k) for k in details)
        perms = permutations or {}
        self.inputs, self.outputs = [], []
        for public, sig_name in names.items():
            d = details[sig_name]
            perm = perms.get(public) if io_layout == "source" else None
            shape = [int(x) for x in d["shape"]]
            public_shape = shape if perm is None else [shape[i] for i in inverse_perm(perm)]
            scale, zero = float(d["quantization"][0]), int(d["quantization"][1])
            entry = {"name": public, "index": int(d["index"]), "dtype": np.dtype(d["dtype"]), "perm": perm,
                     "shape": public_shape, "scale": scale, "zero": zero}
            (self.inputs if d["kind"] == "in" else self.outputs).append(entry)
        self.last_s = 0.0

    def prepare(self, feed):
        prepared = []
        for e in self.inputs:
            x = np.asarray(feed[e["name"]])
            if e["perm"] is not None:
                x = x.transpose(e["perm"])
            if e["scale"]:
                info = np.iinfo(e["dtype"])
                x = np.clip(np.round(x / e["scale"] + e["zero"]), info.min, info.max)
            x = np.ascontiguousarray(x, dtype=e["dtype"])
            current = [int(v) for v in self.interp.get_tensor_details()[e["index"]]["shape"]]
            if list(x.shape) != current:
                self.interp.resize_tensor_input(e["index"], list(x.shape))
                self.interp.allocate_tensors()
            prepared.append((e["index"], x))
        return prepared

    def run(self, prepared):
        for index, x in prepared:
            self.interp.set_tensor(index, x)
        t0 = time.perf_counter()
        self.interp.invoke()
        self.last_s = time.perf_counter() - t0
        outs = []
        for e in self.outputs:
            y = self.interp.get_tensor(e["index"])
            if e["scale"]:
                y = (y.astype(np.float32) - e["zero"]) * e["scale"]
            if e["perm"] is not None:
                y = y.transpose(inverse_perm(e["perm"]))
            outs.append(np.array(y, copy=True))
        return outs

    def info(self):
        return {"runtime": "litert", "delegate": self.delegate or "XNNPACK (default CPU)"}


# -- TensorRT ------------------------------------------------------------------------------------------------
def cuda_runtime():
    """cuda-python's runtime module (a maintained binding)."""
    try:
        from cuda.bindings import runtime as cudart
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart
        return cudart
    except ImportError:
        raise MissingRuntime("cuda-python is not installed: pip install cuda-python (matching JetPack's CUDA)")


def _check(result):
    err = result[0] if isinstance(result, tuple) else result
    if int(err) != 0:
        raise RuntimeError("CUDA error %s" % (err,))
    return result[1] if isinstance(result, tuple) and len(result) == 2 else result


class TensorRtBackend(object):
    """A serialized engine on the GPU. Name-based API (TensorRT 8.5+) where present, bindings otherwise
    (TensorRT 8.2, JetPack 4.6). Inputs are copied to the device in ``prepare``; ``run`` times the execution
    and synchronisation; outputs are copied back after the clock stops."""

    name = "tensorrt"

    def __init__(self, path, built_on=None):
        try:
            import tensorrt as trt
        except ImportError:
            raise MissingRuntime("tensorrt not installed (needs an NVIDIA GPU/JetPack)")
        self.trt = trt
        self.cudart = cudart = cuda_runtime()
        prop = _check(cudart.cudaGetDeviceProperties(0))
        self.device = {"tensorrt": trt.__version__, "compute_capability": "%d.%d" % (prop.major, prop.minor)}
        if built_on:
            why = engine_mismatch(built_on, self.device)
            if why:
                raise MissingRuntime(why)
        logger = trt.Logger(trt.Logger.WARNING)
        with open(str(path), "rb") as f:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise MissingRuntime("TensorRT could not load %s (built for another device or version?)" % path)
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self.named = hasattr(self.engine, "num_io_tensors")
        if self.named:
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            is_input = [self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names]
            dtypes = [trt.nptype(self.engine.get_tensor_dtype(n)) for n in names]
            shapes = [list(self.engine.get_tensor_shape(n)) for n in names]
        else:
            names = [self.engine.get_binding_name(i) for i in range(self.engine.num_bindings)]
            is_input = [self.engine.binding_is_input(i) for i in range(self.engine.num_bindings)]
            dtypes = [trt.nptype(self.engine.get_binding_dtype(i)) for i in range(self.engine.num_bindings)]
            shapes = [list(self.engine.get_binding_shape(i)) for i in range(self.engine.num_bindings)]
        rows = zip(names, is_input, dtypes, shapes)
        rows = [{"name": n, "dtype": np.dtype(d), "shape": [int(v) if v >= 0 else None for v in s], "input": i} for n, i, d, s in rows]
        self.inputs = [r for r in rows if r["input"]]
        self.outputs = [r for r in rows if not r["input"]]
        self.order = names
        self.buffers = {}
        self.last_s = 0.0

    def _alloc(self, name, nbytes):
        old = self.buffers.get(name)
        if old is not None and old[1] >= nbytes:
            return old[0]
        if old is not None:
            _check(self.cudart.cudaFree(old[0]))
        ptr = _check(self.cudart.cudaMalloc(max(nbytes, 1)))
        self.buffers[name] = (ptr, nbytes)
        return ptr

    def _shape(self, name):
        if self.named:
            return tuple(self.context.get_tensor_shape(name))
        return tuple(self.context.get_binding_shape(self.engine.get_binding_index(name)))

    def prepare(self, feed):
        cudart = self.cudart
        for e in self.inputs:
            x = np.ascontiguousarray(feed[e["name"]], dtype=e["dtype"])
            if self.named:
                self.context.set_input_shape(e["name"], x.shape)
            else:
                self.context.set_binding_shape(self.engine.get_binding_index(e["name"]), x.shape)
            ptr = self._alloc(e["name"], x.nbytes)
            _check(cudart.cudaMemcpy(ptr, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
        hosts = []
        for e in self.outputs:
            host = np.empty(self._shape(e["name"]), dtype=e["dtype"])
            self._alloc(e["name"], host.nbytes)
            hosts.append(host)
        if self.named:
            for n in self.order:
                self.context.set_tensor_address(n, int(self.buffers[n][0]))
        return hosts

    def run(self, hosts):
        cudart = self.cudart
        t0 = time.perf_counter()
        if self.named:
            self.context.execute_async_v3(self.stream)
        else:
            self.context.execute_async_v2([int(self.buffers[n][0]) for n in self.order], self.stream)
        _check(cudart.cudaStreamSynchronize(self.stream))
        self.last_s = time.perf_counter() - t0
        outs = []
        for e, host in zip(self.outputs, hosts):
            _check(cudart.cudaMemcpy(host.ctypes.data, self.buffers[e["name"]][0], host.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
            outs.append(host.copy())
        return outs

    def info(self):
        return {"runtime": "tensorrt", "version": self.trt.__version__, "compute_capability": self.device["compute_capability"]}

    def close(self):
        for ptr, _ in self.buffers.values():
            self.cudart.cudaFree(ptr)
        self.buffers = {}


def engine_mismatch(built, device):
    """Why an engine built on ``built`` cannot run on ``device`` (TensorRT version and compute capability must
    match), in plain words with the fix; None when it can."""
    problems = []
    if built.get("tensorrt") != device.get("tensorrt"):
        problems.append("TensorRT %s vs %s" % (built.get("tensorrt"), device.get("tensorrt")))
    if str(built.get("compute_capability")) != str(device.get("compute_capability")):
        problems.append("compute %s vs %s" % (built.get("compute_capability"), device.get("compute_capability")))
    if not problems:
        return None
    return ("built with TensorRT %s for compute %s; this device has %s / %s: run `edgeconv build BUNDLE` here"
            % (built.get("tensorrt"), built.get("compute_capability"), device.get("tensorrt"),
               device.get("compute_capability")))


# -- ONNX Runtime -----------------------------------------------------------------------------------------
class OnnxRuntimeBackend(object):
    name = "onnxruntime"

    def __init__(self, path, threads=None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingRuntime("onnxruntime is not installed: pip install onnxruntime")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.inputs = [{"name": i.name, "dtype": np.float32 if i.type == "tensor(float)" else None} for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.version = ort.__version__
        self.last_s = 0.0

    def prepare(self, feed):
        return dict((e["name"], np.ascontiguousarray(feed[e["name"]], dtype=e["dtype"])) for e in self.inputs)

    def run(self, prepared):
        t0 = time.perf_counter()
        out = self.session.run(self.output_names, prepared)
        self.last_s = time.perf_counter() - t0
        return out

    def info(self):
        return {"runtime": "onnxruntime", "version": self.version}


# -- the runner ------------------------------------------------------------------------------------------
def open_backend(bundle_dir, manifest, threads=None):
    """The best artifact this device can run: a built engine or compiled model first, else the main one."""
    arts = manifest["artifacts"]
    for art in arts:
        if art["role"] == "engine" and art.get("runner") == "tensorrt":
            return TensorRtBackend(os.path.join(bundle_dir, art["file"]), built_on=art.get("built_on")), art
    for art in arts:
        if art["role"] == "edgetpu-model":
            opts = art.get("runner_options", {})
            delegate = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}[platform.system()]
            return LiteRtBackend(os.path.join(bundle_dir, art["file"]), threads, opts.get("tensor_names"),
                                 opts.get("permutations"), delegate=delegate), art
    art = [a for a in arts if a["role"] == "model"][0]
    path = os.path.join(bundle_dir, art["file"])
    opts = art.get("runner_options", {})
    if art["runner"] == "onnxruntime":
        return OnnxRuntimeBackend(path, threads), art
    if art["runner"] == "litert":
        return LiteRtBackend(path, threads, opts.get("tensor_names"), opts.get("permutations")), art
    raise MissingRuntime("this device runner has no backend for %r; use `edgeconv validate`" % art["runner"])


def run_batched(backend, feed, batch):
    n = len(next(iter(feed.values())))
    step = batch or n
    parts = []
    for i in range(0, n, step):
        parts.append(backend.run(backend.prepare(dict((k, v[i:i + step]) for k, v in feed.items()))))
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


# -- statistics and the batch sweep (edgeconv's own validate/profile use these too: one method everywhere) ---
def summarize_latency(seconds, batch=1):
    """p50/p90/p99/mean/std/min/max in milliseconds, throughput in items per second."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"runs": int(ms.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "std_ms": float(ms.std(ddof=1)) if ms.size > 1 else 0.0, "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "throughput_items_s": float(batch * 1e3 / ms.mean())}


def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tile(ref, n):
    """The reference items repeated to n."""
    out = {}
    for k, v in ref.items():
        reps = -(-n // len(v))
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:n])
    return out


def agreement(batched, singles, atol):
    """Outputs of one batch against the same items run one at a time."""
    max_abs = max(float(np.abs(b.astype(np.float64) - s.astype(np.float64)).max()) if b.size else 0.0 for b, s in zip(batched, singles))
    top1 = [float((b.argmax(-1) == s.argmax(-1)).mean()) for b, s in zip(batched, singles) if b.ndim >= 2 and b.shape[-1] > 1]
    agree = min(top1) if top1 else None
    diverges = (atol is not None and max_abs > atol) or (agree is not None and agree < 1.0)
    return {"max_abs_vs_batch1": max_abs, "top1_agreement_vs_batch1": agree, "diverges": bool(diverges)}


def sweep(prepare, run, last_s, ref, sizes, runs, warmup, min_time_s=None, atol=None, can_single=True):
    """One row per batch size: latency percentiles of the runtime call, per-item time, throughput (from the median),
    RSS delta (peak, sampled after every run, minus RSS before the batch size's first run) and agreement with
    batch-1 outputs. ``prepare(feed)``, ``run(prepared) -> outputs`` and ``last_s()`` are the runtime's."""
    items = tile(ref, max(sizes))
    singles = [run(prepare(dict((k, v[i:i + 1]) for k, v in items.items()))) for i in range(max(sizes))] if can_single else None
    rows = []
    for b in sizes:
        row = {"batch": b}
        base = rss_bytes()  # before this batch size's buffers and workspaces exist
        try:
            prepared = prepare(dict((k, v[:b]) for k, v in items.items()))
            outs = run(prepared)
        except Exception as exc:  # the runtime refuses this batch (a graph with the batch baked in)
            row["error"] = "%s: %s" % (type(exc).__name__, (str(exc).splitlines() or [""])[0][:200])
            rows.append(row)
            continue
        peak = rss_bytes()
        for _ in range(warmup):
            run(prepared)
            peak = max(peak, rss_bytes())
        samples = []
        t_end = time.perf_counter() + (min_time_s or 0)
        while len(samples) < runs or time.perf_counter() < t_end:
            run(prepared)
            samples.append(last_s())
            peak = max(peak, rss_bytes())
        lat = summarize_latency(samples, b)
        for k in ("runs", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms"):
            row[k] = lat[k]
        row["per_item_ms"] = lat["p50_ms"] / b
        row["throughput_items_s"] = b * 1e3 / lat["p50_ms"]  # from the median: one slow run must not move the knee
        row["rss_delta_mb"] = (peak - base) / 2.0 ** 20
        if singles is not None:
            row.update(agreement(outs, [np.concatenate([s[j] for s in singles[:b]]) for j in range(len(outs))], atol))
        rows.append(row)
    return rows


SWEEP_METHOD = ("runtime call only (validate's timing); throughput and per-item time from the median latency; RSS delta: "
                "peak (sampled after every run) minus RSS before the batch size's first run")


def compare(expected, actual, tol):
    rows = []
    for name, ref, got in zip(sorted(expected), [expected[k] for k in sorted(expected)], [actual[k] for k in sorted(expected)]):
        r, g = ref.astype(np.float64).ravel(), np.asarray(got, np.float64).ravel()
        if r.shape != g.shape:
            rows.append({"name": name, "ok": False, "reason": "shape differs"})
            continue
        max_abs = float(np.abs(r - g).max()) if r.size else 0.0
        scale = float(np.abs(r).max()) if r.size else 0.0
        max_rel = max_abs / scale if scale > 0 else 0.0
        nr, ng = np.linalg.norm(r), np.linalg.norm(g)
        cosine = float(r.dot(g) / (nr * ng)) if nr > 0 and ng > 0 else 1.0
        ok = cosine >= tol.get("min_cosine", 0.999)
        if tol.get("atol") is not None:
            ok = ok and max_abs <= tol["atol"]
        if tol.get("max_rel") is not None:
            ok = ok and max_rel <= tol["max_rel"]
        rows.append({"name": name, "ok": bool(ok), "max_abs": max_abs, "max_rel": max_rel, "cosine": cosine})
    return rows


def accuracy(backend, manifest, path, batch):
    """Top-1 on a labelled .npz, and the drop against the source model's accuracy recorded at convert time
    (when it was measured on the same file)."""
    import hashlib

    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    z = np.load(path)
    names = [s["name"] for s in manifest["inputs"]]
    feed = dict((n, z[n] if n in z.files else z["x"]) for n in names)
    outs = run_batched(backend, feed, batch)
    scores = [o for o in outs if o.ndim == 2 and o.shape[1] > 1][0]
    top1 = float((scores.argmax(1) == z["y"]).mean())
    src = manifest.get("source_accuracy") or {}
    drop = (src["top1"] - top1) * 100 if src.get("sha256") == digest else None
    return {"top1": top1, "count": int(len(z["y"])), "source_top1": src.get("top1") if drop is not None else None, "drop_points": drop}


def main(argv=None):
    ap = argparse.ArgumentParser(description="Run an edgeconv bundle on this device.")
    ap.add_argument("bundle", nargs="?", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", default=None, help="labelled .npz (x, y): top-1 accuracy on the device")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 1,2,4,8: also a latency/throughput sweep")
    ap.add_argument("--min-time", type=float, default=None, help="sweep: run each batch size for at least this many seconds")
    args = ap.parse_args(argv)
    with open(os.path.join(args.bundle, "manifest.json")) as f:
        manifest = json.load(f)
    try:
        backend, art = open_backend(args.bundle, manifest, args.threads)
    except MissingRuntime as exc:
        sys.stderr.write("error: %s\n" % exc)
        return EXIT_MISSING
    ref = np.load(os.path.join(args.bundle, "reference.npz"))
    feed = dict((s["name"], ref["input:" + s["name"]]) for s in manifest["inputs"])
    expected = dict((s["name"], ref["output:" + s["name"]]) for s in manifest["outputs"])
    batch = manifest["inputs"][0]["shape"][0]
    batch = batch if isinstance(batch, int) else None
    outs = run_batched(backend, feed, batch)
    actual = dict(zip([s["name"] for s in manifest["outputs"]], outs))
    tol = manifest["tolerances"].get(manifest["precision"], {"min_cosine": 0.999})
    parity = compare(expected, actual, tol)
    one = dict((k, v[: (batch or 1)]) for k, v in feed.items())
    prepared = backend.prepare(one)
    for _ in range(args.warmup):
        backend.run(prepared)
    times = []
    for _ in range(args.runs):
        backend.run(prepared)
        times.append(backend.last_s)
    lat = summarize_latency(times, batch or 1)
    report = {
        "ok": all(r["ok"] for r in parity),
        "bundle": os.path.abspath(args.bundle),
        "artifact": art["file"],
        "measured_on": dict({"host": socket.gethostname(), "machine": platform.machine(), "python": platform.python_version(),
                             "os": platform.platform(), "numpy": np.__version__, "kind": "device runner"}, **backend.info()),
        "parity": parity,
        "latency": dict(lat, warmup=args.warmup, batch=batch or 1, method="runtime call only, inputs prepared once"),
    }
    if args.batch_sizes:
        sizes = sorted(set(int(v) for v in args.batch_sizes.split(",") if v.strip()))
        resizable = batch is None or (isinstance(backend, LiteRtBackend) and not backend.delegate)
        notes = []
        if not resizable and any(b != batch for b in sizes):
            notes.append("the artifact has a fixed batch of %d, so only batch %d is profiled" % (batch, batch))
            sizes = [batch]
        report["sweep"] = {"rows": sweep(backend.prepare, backend.run, lambda: backend.last_s, feed, sizes, args.runs,
                                         args.warmup, args.min_time, tol.get("atol"), can_single=resizable or batch == 1),
                           "notes": notes, "method": SWEEP_METHOD}
    if args.data:
        report["accuracy"] = accuracy(backend, manifest, args.data, batch)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print("%s on %s (%s): parity %s, p50 %.3f ms, p99 %.3f ms over %d runs" % (
            art["file"], report["measured_on"]["runtime"], report["measured_on"]["host"],
            "ok" if report["ok"] else "FAILED", report["latency"]["p50_ms"], report["latency"]["p99_ms"], len(times)))
        for r in parity:
            print("  %-20s %s" % (r["name"], "ok" if r["ok"] else "FAILED %s" % r))
    return EXIT_OK if report["ok"] else EXIT_CHECK


if __name__ == "__main__":
    sys.exit(main())
