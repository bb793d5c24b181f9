"""Input shapes and dtypes from what the user gave: the model's own record, ``--input-shape``, then the data files.

A TorchScript file keeps no shapes; an ONNX or Keras model may keep its height, width or sequence length dynamic.
The user's data says what they are: ``--sample``, then ``--data``, then ``--calib`` fill every dimension the model
leaves open (the first axis of a data file counts samples; the batch is 1 unless ``--dynamic-batch``). Where each
dimension came from is recorded. An ONNX file that writes an open dimension as -1 or 0 (paddle2onnx, old TensorFlow
exporters) has it named on load (``open_written_dims``), so it is filled like any other. Only when no data is given
is ``--input-shape`` asked for, with a hint that fits the input (its rank and dtype, or the model's first layer),
never an image default for token ids or audio.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import BadInput
from edgeconv.specs import Dim, TensorSpec, apply_input_shapes, guess_layout

# One tensor may take at most this share of the machine's memory: reference data holds several samples of each
# input, and the runtimes keep their own copies and intermediates.
MEMORY_SHARE = 0.25


@dataclass
class ShapeRequest:
    input_shapes: dict[str | None, list[Dim]] = field(default_factory=dict)
    input_dtypes: dict[str | None, str] = field(default_factory=dict)
    dynamic_batch: bool = False
    data_files: list[tuple[str, Path]] = field(default_factory=list)  # ("--sample", path), ... in order of precedence


@dataclass
class ResolvedInputs:
    specs: list[TensorSpec]
    origins: dict[str, dict[str, object]]  # input → {"shape": [origin per dim], "dtype": origin}
    notes: list[str]


def data_files(sample: Path | None, data: Path | None, calib: str | None) -> list[tuple[str, Path]]:
    """The data files that can tell shapes, in order of precedence (an image folder or 'random' cannot)."""
    out = [("--sample", sample), ("--data", data)]
    if calib and calib != "random" and Path(calib).suffix in (".npy", ".npz"):
        out.append(("--calib", Path(calib)))
    return [(flag, p) for flag, p in out if p is not None]


def resolve(source, req: ShapeRequest) -> ResolvedInputs:
    """The source's inputs with every dimension and dtype known (the batch dynamic only with ``dynamic_batch``)."""
    specs = [TensorSpec(s.name, list(s.shape), s.dtype, s.layout)
             for s in apply_input_shapes(source.inputs, req.input_shapes, baked=source.shapes_baked)]
    _batch_axes(specs, scalar_inputs(source) | {n for n, shape in req.input_shapes.items() if n and shape == []})
    dtypes = _named(req.input_dtypes, [s.name for s in specs], "--input-shape …:DTYPE")
    origins: dict[str, dict[str, object]] = {}
    notes: list[str] = []
    given = {n for n in req.input_shapes if n is not None} | ({specs[0].name} if None in req.input_shapes and specs else set())
    for s in specs:
        shape_from = ["model" if s.name not in given else "--input-shape"] * len(s.shape)
        origins[s.name] = {"shape": shape_from, "dtype": "model" if s.dtype else None}
        if s.name in dtypes:
            s.dtype = dtypes[s.name]
            origins[s.name]["dtype"] = "--input-shape"
    _fill_from_data(specs, req.data_files, origins)
    out = [_finish(source, s, req, origins[s.name], notes, specs) for s in specs]
    check_memory(out)
    return ResolvedInputs(out, origins, notes)


def _fill_from_data(specs: list[TensorSpec], files: list[tuple[str, Path]], origins: dict[str, dict[str, object]]) -> None:
    """What the model leaves open, from the data files in order of precedence (each read once)."""
    from edgeconv.data import pick_inputs, read_arrays

    loaded: dict[Path, dict[str, np.ndarray]] = {}
    for flag, path in files:
        if all(_complete(s) for s in specs) and (not specs or "reading" in origins[specs[0].name]):
            break
        if path not in loaded:
            loaded[path] = read_arrays(path)
        picked = pick_inputs(path, loaded[path], specs, labels=flag == "--data")
        one_feed = _reading(flag, path, picked, specs, origins)
        for s in specs:
            if not _complete(s):
                fill = _fill_one_feed if one_feed else _fill
                empty = [i for i in fill(s, picked[s.name], f"{flag} {path.name}", origins[s.name]) if s.shape[i] == 0]
                if empty:
                    raise BadInput(f"{flag} {path}: its array for input {s.name!r} has shape "
                                   f"{'x'.join(map(str, picked[s.name].shape))}, size 0 on axis {empty[0]}, which the model "
                                   "leaves open: the model would run on empty tensors",
                                   hint="give data with at least one element on every axis")


def _finish(source, s: TensorSpec, req: ShapeRequest, record: dict[str, object], notes: list[str],
            specs: list[TensorSpec]) -> TensorSpec:
    """One input made whole: dtype, batch fixed or dynamic; what stays open is the user's to give, with a hint."""
    if s.dtype is None:
        s.dtype = "float32"
        record["dtype"] = "assumed (no data given)"
        notes.append(f"input {s.name!r}: dtype float32 assumed ({source.format} records none); "
                     "give --sample or --input-shape NAME=SHAPE:int64 for integer inputs")
    if source.shapes_baked and req.dynamic_batch and s.shape and isinstance(s.shape[0], int):
        raise BadInput(
            f"{source.path} ({source.format}) was exported with a fixed batch of {s.shape[0]} for input {s.name!r}; "
            "--dynamic-batch cannot undo that",
            hint="re-export it with dynamic_shapes={'%s': {0: torch.export.Dim('batch')}}, or drop --dynamic-batch" % s.name,
        )
    if s.batch_axis is None and not s.shape:  # a 0-d input: no batch, nothing open
        return TensorSpec(s.name, [], s.dtype, None, None)
    if not s.shape:
        raise BadInput(
            f"{source.path} does not record the shape of input {s.name!r} ({source.format} keeps no shapes), "
            "and no data file was given to take it from",
            hint=("give a sample input (--sample x.npy, first axis = samples)" if len(specs) == 1 else
                  "give sample inputs (--sample FILE.npz with one array per input: "
                  + ", ".join(x.name for x in specs) + ")")
                 + f", or the shape: --input-shape {s.name}={source.input_hint(s.name)}",
        )
    shape = list(s.shape)
    ax = s.batch_axis
    if ax is not None and not isinstance(shape[ax], int) and not req.dynamic_batch:
        notes.append(f"input {s.name!r}: dynamic batch {s.shape[ax]!r}" + (f" (axis {ax})" if ax else "")
                     + " fixed to 1 (static shapes; --dynamic-batch keeps it dynamic where the target allows)")
        record["shape"][ax] = "batch 1 (static)"
    if ax is not None and (not isinstance(shape[ax], int) or req.dynamic_batch):
        shape[ax] = "batch" if req.dynamic_batch else 1
        if req.dynamic_batch:
            record["shape"][ax] = "dynamic (--dynamic-batch)"
    open_dims = [i for i, d in enumerate(shape) if i != ax and not isinstance(d, int)]
    if open_dims:
        spelled = "x".join(str(d) if isinstance(d, int) else str(d or "?") for d in shape)
        raise BadInput(
            f"input {s.name!r} ({spelled}, {s.dtype}) has dynamic dimensions {open_dims} and no data file gives them",
            hint="give a sample input (--sample FILE.npy / .npz, first axis = samples), or the sizes: --input-shape "
                 + s.name + "=" + "x".join(str(d) if isinstance(d, int)
                                           else _placeholder(i, shape, s.layout or guess_layout(shape, source.layout_default))
                                           for i, d in enumerate(shape)),
        )
    return TensorSpec(s.name, shape, s.dtype, s.layout or guess_layout(shape, source.layout_default), ax)


def scalar_inputs(source) -> set[str]:
    """The inputs the model declares 0-d (the source's ``declared_scalars``: edgeconv/frontends/base.py)."""
    return set(source.declared_scalars)


def _batch_axes(specs: list[TensorSpec], scalars: set[str]) -> None:
    """Each input's batch axis, from the graph: the first axis, or the axis that carries the name the first input's
    batch has (``state [2, batch, 128]`` beside ``input [batch, 512]``); none for a 0-d input."""
    named = next((s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)), None)
    for s in specs:
        if s.name in scalars:
            s.batch_axis = None
        elif named is not None and named in s.shape:
            s.batch_axis = s.shape.index(named)


def _reading(flag: str, path: Path, picked: dict[str, np.ndarray], specs: list[TensorSpec],
             origins: dict[str, dict[str, object]]) -> bool:
    """Whether a data file is one feed as the model takes it (else a data set, first axis = samples); recorded in
    each input's origins (``reading``: the first file's, which is the reference feed's when it is ``--sample``), with
    a note when both readings fit. Neither: the loader's error says why."""
    from edgeconv.core.data import choose_reading

    dicts = [{"name": s.name, "shape": None if not s.shape and s.batch_axis is not None else s.shape} for s in specs]
    reading, why = choose_reading(path, picked, dicts)
    for s in specs:
        origins[s.name].setdefault("reading", f"{flag} {path.name}: " + {
            "samples": "first axis = samples", "one feed": "one feed as the model takes it",
            None: "first axis = samples"}[reading] + (f" ({why})" if why and reading else ""))
    return reading == "one feed"


def open_written_dims(proto) -> list[str]:
    """Read a dimension written as -1 (paddle2onnx) or 0 (old TensorFlow exporters) as what it means: open.

    ONNX spells an open dimension as a name (``dim_param``) or leaves it unset; some exporters write a number
    instead, which onnx.checker accepts and converters then take literally (a 0-sized or -1-sized tensor). Every
    such dimension of the graph's inputs, outputs and intermediate shapes (subgraphs included) is rewritten, in
    place, as a named one, ``<tensor>_dim<axis>``, so the data fills it and the canonical graph writes it like any
    named dimension (docs/architecture.md, "shapes come from your data"). Returns one note per graph input changed.
    """
    inits = {i.name for i in proto.graph.initializer}
    notes = []
    for v in proto.graph.input:
        if v.name in inits:
            continue
        written = _open_dims(v)
        if written:
            values = "/".join(sorted({str(w) for _, w in written}))
            notes.append(f"input {v.name!r} writes axes {', '.join(str(i) for i, _ in written)} as {values} (an exporter's "
                         "spelling of a dynamic dimension): read as open dimensions "
                         + ", ".join(d.dim_param for i, d in enumerate(v.type.tensor_type.shape.dim) if i in dict(written))
                         + ", sized by the data (--sample/--data/--calib) or --input-shape")
    for g in _graphs(proto.graph):
        for v in (*(g.input if g is not proto.graph else ()), *g.output, *g.value_info):
            _open_dims(v)
    return notes


def _open_dims(value_info) -> list[tuple[int, int]]:
    """Name the -1/0 dims of one tensor's type; the (axis, written value) pairs changed."""
    if not value_info.type.HasField("tensor_type"):
        return []
    changed = []
    stem = re.sub(r"\W", "_", value_info.name) or "t"
    for i, d in enumerate(value_info.type.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value <= 0:
            changed.append((i, int(d.dim_value)))
            d.dim_param = f"{stem}_dim{i}"  # the oneof: setting the name clears the value
    return changed


def _graphs(graph):
    """``graph`` and every subgraph (If/Loop/Scan bodies) below it."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _graphs(sub)


def _complete(s: TensorSpec) -> bool:
    """Every dimension but the batch known (a 0-d input has none), and the dtype."""
    return ((bool(s.shape) or s.batch_axis is None) and s.dtype is not None
            and all(isinstance(d, int) for i, d in enumerate(s.shape) if i != s.batch_axis))


def _fill(s: TensorSpec, arr: np.ndarray, origin: str, record: dict[str, object]) -> list[int]:
    """Take what ``s`` leaves open from ``arr`` (first axis = samples): rank, dynamic dims, dtype. Returns the axes
    whose size it took."""
    _fill_dtype(s, arr, origin, record)
    if arr.ndim == 0:
        return []
    if not s.shape:
        s.shape = [1, *arr.shape[1:]]
        record["shape"] = ["batch 1 (static)"] + [origin] * (arr.ndim - 1)
        return list(range(1, arr.ndim))
    if arr.ndim != len(s.shape):
        return []  # the data loader names the mismatch with the expected shape
    taken = [i for i in range(1, len(s.shape)) if not isinstance(s.shape[i], int)]
    for i in taken:
        s.shape[i] = int(arr.shape[i])
        record["shape"][i] = origin
    return taken


def _fill_dtype(s: TensorSpec, arr: np.ndarray, origin: str, record: dict[str, object]) -> None:
    if s.dtype is None and arr.dtype.kind in "fiub":
        # numpy's default float64 is never an edge model's input type
        s.dtype = "float32" if arr.dtype == np.float64 else str(arr.dtype)
        record["dtype"] = origin + (" (float64 read as float32)" if arr.dtype == np.float64 else "")


def _fill_one_feed(s: TensorSpec, arr: np.ndarray, origin: str, record: dict[str, object]) -> list[int]:
    """Take what ``s`` leaves open from ``arr``, one feed as the model takes it: every axis is the model's, its batch
    included (a source that keeps no shapes takes the array's shape, with no batch axis known: the feed is run whole,
    at its own batch). Returns the axes whose size it took."""
    _fill_dtype(s, arr, origin, record)
    if not s.shape and s.batch_axis is not None:
        s.shape = [None] * arr.ndim
        record["shape"] = [origin] * arr.ndim
        s.batch_axis = None
    taken = [i for i, d in enumerate(s.shape) if not isinstance(d, int)]
    for i in taken:
        s.shape[i] = int(arr.shape[i])
        record["shape"][i] = origin + (f", batch {arr.shape[i]} (one feed)" if i == s.batch_axis else " (one feed)")
    return taken


def _placeholder(i: int, shape: list[Dim], layout: str | None) -> str:
    hw = {"NCHW": (2, 3), "NHWC": (1, 2)}.get(layout or "", ())
    return ("H", "W")[hw.index(i)] if i in hw else "N"


def _named(values: dict[str | None, str], names: list[str], flag: str) -> dict[str, str]:
    if None in values:
        if len(names) != 1:
            raise BadInput(f"the model has {len(names)} inputs ({', '.join(names)}); {flag} needs NAME=SHAPE:DTYPE")
        return {names[0]: values[None]}
    unknown = [n for n in values if n not in names]
    if unknown:
        raise BadInput(f"{flag} names unknown input(s) {unknown}; the model's inputs are {names}")
    return dict(values)


def memory_limit() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * MEMORY_SHARE)


def check_memory(specs: list[TensorSpec], what: str = "input") -> None:
    """Refuse a tensor this machine cannot hold, before anything is allocated."""
    limit = memory_limit()
    for s in specs:
        dims = [d if isinstance(d, int) else 1 for d in s.shape]
        size = int(np.prod(dims, dtype=np.float64) * np.dtype(s.dtype).itemsize)
        if size > limit:
            raise BadInput(
                f"{what} {s.name!r} of shape {'x'.join(map(str, s.shape))} ({s.dtype}) needs {size / 2**30:.1f} GiB for one "
                f"sample; this machine allows {limit / 2**30:.1f} GiB per tensor ({MEMORY_SHARE:.0%} of its memory)",
                hint="check --input-shape and the data's shape",
            )


def check_graph_memory(proto, specs: list[TensorSpec]) -> str | None:
    """Refuse an ONNX graph whose intermediate tensors, at the resolved input shapes, this machine cannot hold:
    shapes are inferred, nothing is run. Large weights are left out of the copy (typed inputs keep their shapes);
    small ones stay, since shape tensors fold from them. Returns None, or a note saying why the check could not run."""
    import onnx

    from edgeconv.onnx_tools import _value_spec, set_input_shapes

    shell = onnx.ModelProto()
    shell.ir_version = proto.ir_version
    shell.opset_import.extend(proto.opset_import)
    small = [t for t in proto.graph.initializer if t.ByteSize() <= 1 << 16]
    large = [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
             for t in proto.graph.initializer if t.ByteSize() > 1 << 16]
    taken = {t.name for t in proto.graph.initializer}
    shell.graph.CopyFrom(onnx.helper.make_graph(list(proto.graph.node), proto.graph.name or "g",
                                                [v for v in proto.graph.input if v.name not in taken] + large,
                                                list(proto.graph.output), initializer=small))
    set_input_shapes(shell, specs, False)
    try:
        inferred = onnx.shape_inference.infer_shapes(shell, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - a graph shape inference refuses is refused, with its message, at the
        # graph check; here it only means this check cannot run, which the returned note says
        return (f"intermediate tensors' memory not checked: ONNX shape inference failed ({type(exc).__name__}: "
                f"{first_line(str(exc), 200)})")
    known = [_value_spec(v, None) for v in inferred.graph.value_info if v.type.HasField("tensor_type")]
    check_memory([s for s in known if s.dtype and not s.dtype.startswith("onnx:") and s.shape
                  and all(isinstance(d, int) for d in s.shape)], what="intermediate tensor")
    return None


def axes_moved(src: list[int], art: list[int]) -> list[int] | None:
    """The permutation that takes a tensor of shape ``src`` to ``art`` when there is one answer (perm[i] = the source axis
    at artifact axis i); axes of size 1 may trade places (the data is the same). None when none fits, or several do."""
    import itertools

    if len(src) != len(art) or len(src) > 6:
        return None
    fits = [list(p) for p in itertools.permutations(range(len(src))) if [src[i] for i in p] == list(art)]
    if not fits:
        return None
    order = {tuple(i for i in p if src[i] != 1) for p in fits}
    return fits[0] if len(order) == 1 else None
