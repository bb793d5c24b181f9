"""Data: labelled and sample files (``.npz``/``.npy``) checked against a model's inputs, the bundle's reference.npz,
and feeding arrays through a backend in batches. The one loader, for the host and the device: the same file is
refused in the same words here and there. Input specs are dicts ``{name, shape, dtype}`` as the manifest keeps them.
See docs/architecture.md.
"""

import os
import zipfile

import numpy as np

from .errors import BadInput

DATA_FORMS = (".npz with 'x' (or one array per input name) and 'y' for labels, or .npy (one input, no labels); "
              "first axis = samples")


def _unreadable(path, exc, what=".npy/.npz"):
    return BadInput("%s is not a readable %s file: %s" % (path, what, exc), hint=DATA_FORMS)


def read_arrays(path):
    """The arrays of a data file: an ``.npz`` by its keys, an ``.npy`` as ``{"x": array}`` (one input)."""
    if not os.path.exists(str(path)):
        raise BadInput("data file %s does not exist" % (path,))
    if os.path.isdir(str(path)):
        raise BadInput("%s is a directory; expected a data file" % (path,), hint=DATA_FORMS)
    try:
        loaded = np.load(str(path), allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise BadInput("%s holds Python objects (a pickled array), which edgeconv does not load" % (path,),
                           hint="save plain numeric arrays: numpy.save(path, np.asarray(x, dtype=np.float32))") from exc
        raise _unreadable(path, exc) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _unreadable(path, exc) from exc
    if isinstance(loaded, np.ndarray):
        return {"x": loaded}
    try:
        with loaded as z:
            return dict((k, z[k]) for k in z.files)
    except ValueError as exc:  # an array inside the .npz is a pickle
        raise BadInput("%s: %s" % (path, exc), hint="save plain numeric arrays with numpy.savez") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _unreadable(path, exc, ".npz") from exc


def shape_str(shape):
    return "x".join("?" if d is None else str(d) for d in shape)


def _check_dtype(path, key, arr, spec, want):
    if arr.dtype.kind not in "fiub":
        raise BadInput("%s: array %r has dtype %s; the model's input %r takes %s" % (path, key, arr.dtype, spec["name"], want))
    if arr.dtype.kind != want.kind and not (want.kind in "iu" and arr.dtype.kind in "iu"):
        raise BadInput("%s: array %r has dtype %s, the model's input %r takes %s" % (path, key, arr.dtype, spec["name"], want),
                       hint="save it as %s (e.g. x.astype(np.%s))" % (want, want)
                       + (" after the model's own preprocessing (scaling, normalisation)" if want.kind == "f" else ""))


def check_input(path, key, arr, spec):
    """``arr`` (array ``key`` of ``path``) as the input ``spec`` takes it: a number array of its kind of dtype, with
    its shape after the sample axis, in its integer range; cast to its dtype."""
    want = np.dtype(spec["dtype"])
    _check_dtype(path, key, arr, spec, want)
    shape = spec["shape"]
    if arr.ndim == 0:
        raise BadInput("%s: array %r is a scalar; the model's input %r is %s" % (path, key, spec["name"], shape_str(shape)),
                       hint=DATA_FORMS)
    if shape and (arr.ndim != len(shape) or any(
            isinstance(d, int) and d != a for i, (d, a) in enumerate(zip(shape, arr.shape)) if i > 0)):
        expected = "x".join(["N"] + [str(d) if isinstance(d, int) else "?" for d in shape[1:]])
        raise BadInput("%s: array %r has shape %s (%s), the model's input %r expects %s (%s; first axis = samples)" % (
            path, key, "x".join(map(str, arr.shape)), arr.dtype, spec["name"], expected, want),
            hint="a single sample needs its batch axis: x[None]" if arr.ndim == len(shape) - 1 else None)
    return _in_range(path, key, arr, spec, want)


def _in_range(path, key, arr, spec, want):
    if want.kind in "iu" and arr.dtype != want:
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise BadInput("%s: array %r has values outside %s's range for input %r" % (path, key, want, spec["name"]))
    return np.asarray(arr).astype(want, copy=False)


def pick_inputs(path, arrays, specs, labels=False):
    """The arrays that feed ``specs``: by input name, or ``x`` for a one-input model (unchecked)."""
    feed = {}
    for spec in specs:
        name = spec["name"]
        key = name if name in arrays else ("x" if len(specs) == 1 and "x" in arrays else None)
        if key is None:
            want = "'x'" if len(specs) == 1 else ", ".join(repr(s["name"]) for s in specs)
            single = os.path.splitext(str(path))[1] == ".npy"
            raise BadInput(
                "%s " % (path,) + ("is one array, but the model has %d inputs (%s)" % (len(specs), want) if single
                                   else "has arrays %s; expected %s" % (sorted(arrays), want) + (" and 'y'" if labels else "")),
                hint="save an .npz with one array per input name: numpy.savez(path, "
                     + ", ".join("%s=..." % s["name"] for s in specs) + (", y=...)" if labels else ")"))
        feed[name] = arrays[key]
    return feed


def samples_misfit(arrays, specs):
    """Why the arrays are not a data set with samples on the first axis (None when they are): every array has its
    input's rank and fixed sizes after the first axis, and all agree on their first axis. A spec's shape None: its rank
    is unknown (a TorchScript source). A 0-d array has no sample axis."""
    counts = set()
    for s in specs:
        arr, shape = arrays[s["name"]], s["shape"]
        if arr.ndim == 0:
            return "%r is 0-d: it has no sample axis" % s["name"]
        if shape is not None and (arr.ndim != len(shape) or any(
                isinstance(d, int) and d != a for i, (d, a) in enumerate(zip(shape, arr.shape)) if i > 0)):
            return "%r has shape %s, the model's input is %s" % (s["name"], shape_str(arr.shape), shape_str(shape) or "0-d")
        counts.add(len(arr))
    if len(counts) > 1:
        return "inputs have different sample counts %s" % sorted(counts)
    return None


def one_feed_misfit(arrays, specs):
    """Why the arrays are not one feed as the model takes it (None when they are): every array has its input's rank (0-d
    included), its fixed sizes, and one size per named dimension across the inputs sharing it (``batch`` at axis 0 of
    ``input`` and axis 1 of ``state``). An input of unknown rank (shape None) takes its array as it is."""
    sizes = {}
    for s in specs:
        arr, shape = arrays[s["name"]], s["shape"]
        if shape is None:
            continue
        if arr.ndim != len(shape):
            return "%r has rank %d, the model's input %s has rank %d" % (s["name"], arr.ndim, shape_str(shape) or "0-d",
                                                                        len(shape))
        for i, (d, a) in enumerate(zip(shape, arr.shape)):
            if isinstance(d, int) and d != a:
                return "%r has size %d on axis %d, the model's input is %s" % (s["name"], a, i, shape_str(shape))
            if isinstance(d, str) and sizes.setdefault(d, a) != a:
                return "dimension %r is %d in one input and %d in %r" % (d, sizes[d], a, s["name"])
    return None


def choose_reading(path, arrays, specs):
    """How a data file's arrays feed the model: ``("samples", note)`` (first axis = samples, a data set) when that
    fits; else ``("one feed", note)`` when the arrays have the ranks the model declares (one feed, as the model takes
    it: a state whose batch is not its first axis, a 0-d input). The note says so when both readings fit. Neither: the
    samples reading's own error is the caller's to raise, with ``one_feed_misfit``'s reason."""
    samples, one = samples_misfit(arrays, specs), one_feed_misfit(arrays, specs)
    if samples is None:
        # with every first axis the model's open batch, the two readings are the same feed
        same = all(s["shape"] and not isinstance(s["shape"][0], int) for s in specs)
        return "samples", (None if one is not None or same else
                           "%s fits both readings: read as a data set (first axis = samples), not as one feed" % (path,))
    if one is None:
        return "one feed", None
    return None, "not a data set (%s), nor one feed as the model takes it (%s)" % (samples, one)


def feed_count(feed):
    """Samples in a feed: the common first axis of a data set; 1 for one feed as the model takes it (a 0-d array or
    first axes that disagree: a state ``[layers, batch, hidden]`` beside an ``input [batch, n]``)."""
    if any(np.ndim(v) == 0 for v in feed.values()):
        return 1
    counts = set(len(v) for v in feed.values())
    return counts.pop() if len(counts) == 1 else 1


def is_one_feed(feed):
    return any(np.ndim(v) == 0 for v in feed.values()) or len(set(len(v) for v in feed.values())) > 1


def head(feed, n):
    """The first ``n`` samples of a data set; one feed, as the model takes it, whole."""
    return feed if is_one_feed(feed) else dict((k, v[:n]) for k, v in feed.items())


def _one_feed(path, arrays, picked, specs):
    """The arrays of one feed checked against their inputs' dtypes and cast."""
    feed = {}
    for s in specs:
        key = s["name"] if s["name"] in arrays else "x"
        want = np.dtype(s["dtype"])
        _check_dtype(path, key, picked[s["name"]], s, want)
        feed[s["name"]] = _in_range(path, key, picked[s["name"]], s, want)
    return feed


def _data_set(path, arrays, picked, specs, why):
    """The arrays as a data set (first axis = samples), each checked against its input; ``why``: the reason neither
    reading fits, added to the refusal (the user may have meant one feed)."""
    try:
        feed = dict((s["name"], check_input(path, s["name"] if s["name"] in arrays else "x", picked[s["name"]], s))
                    for s in specs)
        counts = set(len(v) for v in feed.values())
        if len(counts) != 1:
            raise BadInput("%s: inputs have different sample counts %s" % (path, sorted(counts)))
    except BadInput as exc:
        if why and not exc.hint:
            exc.hint = "%s is %s" % (path, why)
        elif why:
            exc.hint = "%s; %s is %s" % (exc.hint, path, why)
        raise
    return feed, counts.pop()


def load_labelled(path, specs, need_labels=False):
    """Inputs keyed by input name (``x`` in the file for a one-input model), from an .npz or an .npy, each checked
    against its spec; labels ``y`` (integer class ids, .npz only) when the file has them, required with
    ``need_labels``. A data set has samples on its first axis; a file whose arrays are one feed as the model takes it
    (``choose_reading``) is that one feed. Returns ``(feed, labels or None)``."""
    arrays = read_arrays(path)
    ext = os.path.splitext(str(path))[1]
    if need_labels and ext == ".npy":
        raise BadInput("%s is a single array (inputs only); labels need an .npz" % (path,),
                       hint="numpy.savez(path, x=..., y=...)")
    picked = pick_inputs(path, arrays, specs, labels=need_labels)
    reading, why = choose_reading(path, picked, specs)
    if reading == "one feed":
        feed, n = _one_feed(path, arrays, picked, specs), 1
    else:
        feed, n = _data_set(path, arrays, picked, specs, None if reading else why)
    if n == 0:
        raise BadInput("%s holds no samples" % (path,))
    y = arrays.get("y") if ext == ".npz" else None
    if y is None and need_labels:
        raise BadInput("%s has no labels 'y' (arrays: %s)" % (path, sorted(arrays)),
                       hint="save it with numpy.savez(path, x=..., y=...)")
    if y is not None and (y.dtype.kind not in "iu" or y.ndim != 1 or len(y) != n):
        raise BadInput("%s: 'y' must be %d integer class ids, got dtype %s shape %s" % (path, n, y.dtype, list(y.shape)))
    return feed, y


def file_sha256(path):
    import hashlib  # here, not at the top: OpenSSL's libcrypto is 3.6 MB of RSS every device run would carry (core/memory.py)

    h = hashlib.sha256()
    with open(str(path), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_request_data(request, specs):
    """A request's ``data`` (its file path resolved already), loaded and checked against ``specs``, and its sha256
    against the one the host sent: ``(feed, labels, record)`` with ``record = {path, sha256, count}``; None without data."""
    if not request["data"]:
        return None
    path = request["data"]["file"]
    feed, labels = load_labelled(path, specs)
    digest = file_sha256(path)
    if request["data"].get("sha256") not in (None, digest):
        raise BadInput("%s changed on its way here (sha256 differs from the request's)" % (path,))
    record = {"path": request["data"].get("path") or str(path), "sha256": digest, "count": int(feed_count(feed))}
    return feed, labels, record


def reference(bundle_dir, manifest, art, io_layout):
    """reference.npz's inputs and outputs; with io_layout nhwc brought into the artifact's own layout."""
    with np.load(os.path.join(str(bundle_dir), "reference.npz")) as z:
        ref_in = dict((s["name"], z["input:" + s["name"]]) for s in manifest["inputs"])
        ref_out = [z["output:" + s["name"]] for s in manifest["outputs"]]
    if io_layout == "nhwc":
        perms = (art.get("runner_options") or {}).get("permutations") or {}
        ref_in = dict((k, v.transpose(perms[k]) if perms.get(k) else v) for k, v in ref_in.items())
        ref_out = [v.transpose(perms[s["name"]]) if perms.get(s["name"]) else v for s, v in zip(manifest["outputs"], ref_out)]
    return ref_in, ref_out


def data_specs(manifest, art, io_layout):
    """The inputs data must match: the source layout, or with io_layout nhwc the artifact's own."""
    specs = manifest["inputs"]
    if io_layout != "nhwc":
        return specs
    perms = (art.get("runner_options") or {}).get("permutations") or {}
    return [dict(s, shape=[s["shape"][i] for i in perms[s["name"]]]) if perms.get(s["name"]) else s for s in specs]


def run_batched(backend, feed, batch, chunk=64):
    """``feed`` through the backend in slices of the model's fixed batch (or ``chunk`` when it is dynamic)."""
    n = feed_count(feed)
    if batch and n % batch and not is_one_feed(feed):
        raise BadInput("%d samples do not split into batches of %d (the model's fixed batch)" % (n, batch))
    if is_one_feed(feed) or n <= (batch or chunk):  # one feed as the model takes it, or one batch: run whole
        return [np.array(o) for o in backend.run(backend.prepare(feed))]  # copies: a runtime may reuse its buffers
    step = batch or chunk
    parts = []
    for i in range(0, n, step):
        parts.append(backend.run(backend.prepare(dict((k, v[i:i + step]) for k, v in feed.items()))))
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def tile(ref, n):
    """The reference items repeated to n. One feed as the model takes it (a state, a 0-d input) is refused: it has no
    sample axis to repeat."""
    if is_one_feed(ref):
        raise BadInput("reference.npz is one feed as the model takes it (a state whose batch is not its first axis, or a "
                       "0-d input): it has no sample axis to make batches of %d from" % n,
                       hint="validate BUNDLE (--stream N for a stateful model) measures its latency per feed")
    out = {}
    for k, v in ref.items():
        reps = -(-n // len(v))
        out[k] = np.ascontiguousarray(np.concatenate([v] * reps)[:n])
    return out
