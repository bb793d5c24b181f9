"""``edgeconv compress``: a smaller source model of the same family, before the frontend (DESIGN.md, "Compression").

Three tools, each from a maintained library, combinable in this order:

- structured channel pruning (``--prune-channels R``): Torch-Pruning's DepGraph removes R of each prunable group of
  coupled channels (by group L2 magnitude); the graph really shrinks, so every runtime gets faster;
- low-rank factorisation (``--low-rank R``): every Linear and 1x1 convolution split by truncated SVD into two thin
  layers, keeping the rank that holds R of the layer's energy (0 < R < 1) or a fixed rank (R >= 1);
- unstructured magnitude pruning (``--sparsity S``): the smallest weights of every convolution and Linear (one global
  threshold) set to zero with ``torch.nn.utils.prune``; with ``--finetune`` iteratively, as Han et al. describe: prune,
  retrain, raise the threshold, repeat (a cubic schedule over the first half of the epochs), then retrain at S.

Fine-tuning (``--finetune TRAIN.npz``) trains with cross-entropy on the model's own input layout, seeded. The result is
written as a ``torch.export`` program (``.pt2``) that ``convert`` takes like any other, read back through the same
frontend and checked against the compressed module. The report puts the source and the result side by side:
parameters, non-zero parameters, MACs, the size of each as a ``.pt2`` (like with like), the zipped size of an int8
ONNX artifact, ONNX Runtime fp32 p50 latency (before and after interleaved) and top-1 on ``--data``.

torch and torch_pruning are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import operator
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.errors import BadInput, ConversionFailed, MissingDependency
from edgeconv.frontends.base import LoadOptions
from edgeconv.lazy import require, version_of
from edgeconv.progress import Steps
from edgeconv.specs import Dim, TensorSpec, sha256_of

LATENCY_ROUNDS = 4  # before/after alternate, one fresh session per round (two live ORT pools would time each other)
PARITY_ATOL, PARITY_RTOL = 1e-4, 1e-3  # the written .pt2 against the compressed module in memory (both fp32 torch)

DENSE_NOTE = ("Unstructured zeros do not make a dense runtime faster: ONNX Runtime, LiteRT, OpenVINO and TensorRT still "
              "multiply every zero, so latency and MACs stay those of the dense model. What sparsity buys is size once "
              "the artifact is compressed (the int8 ONNX zipped: int8_zip_bytes) - for download, storage and over-the-air "
              "updates.")

KERAS_REFUSAL = (
    "compress cannot prune this Keras model here: the maintained Keras pruning library, TensorFlow Model Optimization "
    "(tfmot), works only with tf.keras 2 models (the tf_keras package) and has no Keras 3 support "
    "(tensorflow/model-optimization#1119); the installed Keras is {keras} and .keras files are Keras 3. No maintained "
    "library prunes or factorises Keras 3 models, and edgeconv does not do hand-written layer surgery")


@dataclass
class CompressRequest:
    model: Path
    output: Path
    prune_channels: float | None = None
    # --prune-channels keeps a multiple of this many channels per layer: ONNX Runtime's x86 convolutions work in blocks of
    # 8 channels (AVX2; 16 on AVX-512), and a pruned MobileNetV2 whose widths are not multiples runs no faster at all
    round_to: int | None = 8
    sparsity: float | None = None
    low_rank: float | None = None  # 0 < R < 1: energy fraction kept; R >= 1 (whole): fixed rank
    finetune: Path | None = None
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    data: Path | None = None
    input_shapes: dict[str | None, list[Dim]] = field(default_factory=dict)
    input_dtypes: dict[str | None, str] = field(default_factory=dict)
    load: LoadOptions = field(default_factory=LoadOptions)
    force: bool = False
    seed: int = 0
    runs: int = 100
    warmup: int = 10
    threads: int | None = None
    command_line: list[str] = field(default_factory=list)


DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_BATCH = 10, 1e-3, 64


class TrainingProgress:
    """Fine-tuning progress: the library calls it; the CLI decides how it looks. This one shows nothing."""

    def start(self, epochs: int, batches: int) -> None:
        pass

    def advance(self) -> None:
        pass

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        pass

    def close(self) -> None:
        pass


class RichTrainingProgress(TrainingProgress):
    """A progress bar on stderr over every batch of every epoch, and one line per epoch: loss, accuracy, sparsity."""

    def __init__(self):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        self.bar = None

    def start(self, epochs: int, batches: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("fine-tuning epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=self.console)
        self.task = self.bar.add_task("", total=epochs * batches, epoch=1, epochs=epochs, stats="")
        self.bar.start()

    def advance(self) -> None:
        self.bar.update(self.task, advance=1)

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        stats = f"loss {row['loss']:.4f} · train top-1 {row['train_top1'] * 100:.1f}%"
        if row.get("sparsity") is not None:
            stats += f" · sparsity {row['sparsity']:.3f}"
        self.bar.console.print(f"  epoch {row['epoch']}/{epochs}: {stats}")
        self.bar.update(self.task, epoch=min(row["epoch"] + 1, epochs), stats=stats)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# -- checks before any work -----------------------------------------------------------------------------------
def _ratio(value: float | None, flag: str) -> None:
    if value is not None and not (0.0 < value < 1.0):
        raise BadInput(f"{flag} {value:g} is outside (0, 1): it is the fraction to remove, e.g. {flag} 0.3 removes 30%",
                       hint=f"give {flag} a value between 0 and 1 (exclusive)")


def check_request(req: CompressRequest) -> None:
    """Every option that can be checked without loading anything: ratios, fine-tuning options, the output path."""
    if req.prune_channels is None and req.sparsity is None and req.low_rank is None:
        raise BadInput("nothing to do: give at least one of --prune-channels R, --sparsity S, --low-rank R",
                       hint="e.g. edgeconv compress model.pt2 -o small.pt2 --prune-channels 0.3 --finetune train.npz")
    _ratio(req.prune_channels, "--prune-channels")
    _ratio(req.sparsity, "--sparsity")
    if req.low_rank is not None and not (0.0 < req.low_rank < 1.0 or (req.low_rank >= 1 and float(req.low_rank).is_integer())):
        raise BadInput(f"--low-rank {req.low_rank:g} is neither an energy fraction in (0, 1) nor a whole rank >= 1",
                       hint="--low-rank 0.5 keeps the rank that holds 50% of each layer's energy; --low-rank 8 keeps rank 8")
    if req.finetune is None:
        given = [f for f, v in (("--epochs", req.epochs), ("--lr", req.lr), ("--batch-size", req.batch_size)) if v is not None]
        if given:
            raise BadInput(f"{', '.join(given)} without --finetune TRAIN.npz: there is nothing to train on",
                           hint="add --finetune TRAIN.npz (x and integer labels y)")
    if req.epochs is not None and req.epochs < 1:
        raise BadInput(f"--epochs {req.epochs} must be at least 1")
    if req.lr is not None and not (req.lr > 0 and math.isfinite(req.lr)):
        raise BadInput(f"--lr {req.lr:g} must be a positive learning rate, e.g. 1e-3")
    if req.batch_size is not None and req.batch_size < 1:
        raise BadInput(f"--batch-size {req.batch_size} must be at least 1")
    if req.round_to is not None and req.round_to < 1:
        raise BadInput(f"--round-to {req.round_to} must be at least 1 (1: no rounding)")
    if req.runs < 1 or req.warmup < 0:
        raise BadInput("--runs must be at least 1 and --warmup at least 0")
    if req.output.suffix != ".pt2":
        raise BadInput(f"-o {req.output}: compress writes a torch.export program, whose file ends in .pt2",
                       hint=f"-o {req.output.with_suffix('.pt2')}")
    if req.output.exists() and not req.force:
        raise BadInput(f"{req.output} exists", hint="choose another -o, or add --force to replace it")
    if req.output.resolve() == req.model.resolve():
        raise BadInput("-o names the source model itself; compress never overwrites its source")


def _refuse_family(path: Path, family: str) -> None:
    if family == "keras":
        raise BadInput(KERAS_REFUSAL.format(keras=version_of("keras") or "not installed"),
                       hint="compress the PyTorch version of the model (.pt2, or a state_dict with --model-class), or prune "
                            "it with tfmot under tf_keras yourself and hand the result to convert")
    if family == "onnx":
        raise BadInput(f"{path} is an ONNX graph: compress writes a smaller source model of the same family and fine-tunes "
                       "it in its own framework, and ONNX has none",
                       hint="compress the PyTorch or Keras model the graph was exported from")


# -- torch helpers ---------------------------------------------------------------------------------------------
def _torch():
    return require("torch", why="to compress PyTorch models")


def _layer_types(torch):
    nn = torch.nn
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _set_submodule(root, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _trainable_from_program(torch, program):
    """An ``nn.Module`` to prune and fine-tune from a torch.export program.

    ``ExportedProgram.module()`` calls the layers as ATen functions on its weights (``aten.conv2d(x, w, b)``), which
    Torch-Pruning cannot follow and which cannot train (``train()`` is refused, batch norm is frozen in inference form).
    Each convolution, Linear and batch norm whose weights only it uses becomes a real ``nn.Conv*``/``nn.Linear``/
    ``nn.BatchNorm*`` module at the name the weights had (``features.0.weight`` -> module ``features.0``), holding the
    same tensors; the rest of the graph is kept as it is. Returns the module and the ATen calls left functional."""
    nn = torch.nn
    aten = torch.ops.aten
    gm = program.module()
    graph = gm.graph
    root = nn.Module()

    def fetch(target: str):
        obj = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def attr(node):
        if getattr(node, "op", None) == "get_attr" and len(node.users) == 1:
            return fetch(node.target)
        return None

    used: set[str] = set()

    def name_for(weight_node, kind: str) -> str:
        base = weight_node.target[: -len(".weight")] if weight_node.target.endswith(".weight") else f"_compress_{kind}"
        name, i = base, 1
        while name in used:
            name, i = f"{base}_{i}", i + 1
        used.add(name)
        return name

    def install(name: str, module) -> None:
        parts = name.split(".")
        holder = root
        for p in parts[:-1]:
            if not hasattr(holder, p):
                holder.add_module(p, nn.Module())
            holder = getattr(holder, p)
        holder.add_module(parts[-1], module)

    def param(t):
        return nn.Parameter(t.detach().clone(), requires_grad=True)  # a copy: the program stays the source

    for node in [n for n in graph.nodes if n.op == "call_module" and n.target.startswith("_guards")]:
        if not node.users:
            graph.erase_node(node)
    conv_targets = {aten.conv1d.default: 1, aten.conv2d.default: 2, aten.conv3d.default: 3}
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        target = node.target
        module = None
        replace = node
        if target in conv_targets or target is aten.convolution.default:
            args = list(node.args) + [None] * 9
            w, b = attr(args[1]), (attr(args[2]) if args[2] is not None else None)
            if target is aten.convolution.default:
                stride, padding, dilation, transposed, _, groups = args[3], args[4], args[5], args[6], args[7], args[8]
                if transposed:
                    continue
            else:
                stride, padding, dilation, groups = (args[3] or 1), (args[4] if args[4] is not None else 0), (args[5] or 1), (args[6] or 1)
                stride = node.kwargs.get("stride", stride)
                padding = node.kwargs.get("padding", padding)
                dilation = node.kwargs.get("dilation", dilation)
                groups = node.kwargs.get("groups", groups)
            if w is None or (args[2] is not None and b is None) or isinstance(padding, str):
                continue
            cls = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(w.dim())
            if cls is None:
                continue
            stride, padding, dilation = (tuple(v) if isinstance(v, (list, tuple)) else v for v in (stride, padding, dilation))
            module = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=b is not None)
            module.weight = param(w)
            if b is not None:
                module.bias = param(b)
            name = name_for(args[1], "conv")
            inputs = (args[0],)
        elif target is aten.linear.default:
            args = list(node.args) + [None] * 3
            w, b = attr(args[1]), (attr(args[2]) if args[2] is not None else None)
            if w is None or (args[2] is not None and b is None):
                continue
            module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            module.weight = param(w)
            if b is not None:
                module.bias = param(b)
            name = name_for(args[1], "linear")
            inputs = (args[0],)
        elif target in (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default):
            if target is aten.batch_norm.default:
                x, w_n, b_n, mean_n, var_n, training, momentum, eps = list(node.args)[:8]
                if training:
                    continue
            else:
                x, w_n, b_n, mean_n, var_n, momentum, eps = list(node.args)[:7]
                users = list(node.users)
                if any(u.target is not operator.getitem or u.args[1] != 0 for u in users) or len(users) != 1:
                    continue
                replace = users[0]
            mean, var = attr(mean_n), attr(var_n)
            w = attr(w_n) if w_n is not None else None
            b = attr(b_n) if b_n is not None else None
            rank = x.meta.get("val").dim() if "val" in x.meta else None
            cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(rank)
            if cls is None or mean is None or var is None or (w_n is not None and w is None) or (b_n is not None and b is None):
                continue
            module = cls(mean.shape[0], eps=eps, momentum=momentum, affine=w is not None)
            if w is not None:
                module.weight, module.bias = param(w), param(b)
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            name = name_for(w_n if w_n is not None else mean_n, "bn")
            inputs = (x,)
        if module is None:
            continue
        install(name, module)
        with graph.inserting_before(node):
            new = graph.call_module(name, inputs)
        new.meta = dict(replace.meta)
        replace.replace_all_uses_with(new)
        if replace is not node:
            graph.erase_node(replace)
        graph.erase_node(node)
    for node in [n for n in graph.nodes if n.op == "get_attr" and not n.users]:
        graph.erase_node(node)
    functional = []
    for node in graph.nodes:
        if node.op == "get_attr":
            value = fetch(node.target)
            install_attr = node.target.split(".")
            holder = root
            for p in install_attr[:-1]:
                if not hasattr(holder, p):
                    holder.add_module(p, nn.Module())
                holder = getattr(holder, p)
            if isinstance(value, nn.Parameter):
                holder.register_parameter(install_attr[-1], param(value))
                functional += [f"{u.target} on {node.target}" for u in node.users if u.op == "call_function"]
            elif isinstance(value, torch.Tensor):
                holder.register_buffer(install_attr[-1], value.detach().clone())
            else:
                setattr(holder, install_attr[-1], value)
    graph.lint()
    module = torch.fx.GraphModule(root, graph)
    return module.eval(), functional


def _prunable_layers(torch, model) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _layer_types(torch))]


def _output_layers(torch, model, args) -> list[Any]:
    """The layers whose output channels are the model's outputs (a classifier's last Linear): found by walking the
    autograd graph back from each output to the first convolution or Linear on every path. Their output channels
    are never pruned (their input channels may be)."""
    owners = {}
    for _, m in _prunable_layers(torch, model):
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None:
                owners[id(p)] = m

    def params_of(fn, depth: int = 3):
        """Parameters reached from ``fn`` through chains of one-input nodes (``t()``, views): a layer's own weights."""
        found = []
        for nxt, _ in fn.next_functions:
            chain, d = nxt, 0
            while chain is not None and d < depth:
                if hasattr(chain, "variable"):
                    found.append(chain.variable)
                    break
                kids = [k for k, _ in chain.next_functions if k is not None]
                if len(kids) != 1:
                    break
                chain, d = kids[0], d + 1
        return found

    with torch.enable_grad():
        out = model(*args)
    outs = [out] if isinstance(out, torch.Tensor) else [o for o in (out.values() if isinstance(out, dict) else out)
                                                        if isinstance(o, torch.Tensor)]
    found, seen = [], set()
    stack = [o.grad_fn for o in outs if o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        owner = next((owners[id(p)] for p in params_of(fn) if id(p) in owners), None)
        if owner is not None:
            if all(owner is not f for f in found):
                found.append(owner)
            continue
        stack.extend(k for k, _ in fn.next_functions if k is not None and not hasattr(k, "variable"))
    return found


def _count(model) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


# -- the three tools -------------------------------------------------------------------------------------------
def prune_channels(torch, model, args, ratio: float, functional: list[str], round_to: int | None = None) -> dict[str, Any]:
    """Torch-Pruning (DepGraph): remove ``ratio`` of each group of coupled channels, by group L2 magnitude."""
    if functional:
        raise BadInput("the program computes some layers as functions on raw weights, which channel pruning cannot follow: "
                       + "; ".join(functional[:5]),
                       hint="give the model as a state_dict with --model-class (the module's own layers), or drop --prune-channels")
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise MissingDependency(f"torch-pruning is not installed (needed for --prune-channels, Torch-Pruning's DepGraph): {exc}",
                                hint="install it with: pip install 'edgeconv[compress]'") from exc
    fixed = _output_layers(torch, model, args)
    if round_to and round_to > 1:
        # a layer too narrow to keep one block of round_to channels would be rounded down to none: leave it whole
        fixed += [m for _, m in _prunable_layers(torch, model)
                  if int(m.weight.shape[0] * (1 - ratio)) < round_to and all(m is not f for f in fixed)]
    names = {id(m): n for n, m in model.named_modules()}
    before = {n: (m.weight.shape[0]) for n, m in _prunable_layers(torch, model)}
    params0, _ = _count(model)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            pruner = tp.pruner.MetaPruner(model, example_inputs=args, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                          pruning_ratio=ratio, ignored_layers=fixed, global_pruning=False,
                                          round_to=round_to)
            groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types))
            if not groups:
                raise BadInput("nothing to prune: every layer with channels stays whole ("
                               + ", ".join(repr(names.get(id(m), "?")) for m in fixed) + "): an output layer's channels are "
                               f"the model's outputs, and a layer narrower than {round_to or 1}/(1 - {ratio:g}) channels would "
                               f"keep less than one block of --round-to {round_to or 1}",
                               hint="--low-rank or --sparsity can still make such a model smaller")
            pruner.step()
    except BadInput:
        raise
    except Exception as exc:
        raise ConversionFailed(f"Torch-Pruning could not prune this model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                               hint="run with --debug for the traceback") from exc
    params1, _ = _count(model)
    if params1 == params0:
        raise BadInput(f"--prune-channels {ratio:g} removes no channel: each prunable group has too few channels for "
                       f"{ratio:g} of them to round to one ({len(groups)} groups; widths {sorted(set(before.values()))})",
                       hint="give a larger ratio")
    try:
        with torch.no_grad():
            model(*args)  # the pruned graph still runs at the example shape (a reshape to baked widths would fail here)
    except Exception as exc:
        raise ConversionFailed(f"the pruned model no longer runs: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                               hint="a .pt2 may bake channel counts into a reshape; give the model as a state_dict with "
                                    "--model-class") from exc
    layers = [{"layer": n, "channels": [before[n], m.weight.shape[0]]} for n, m in _prunable_layers(torch, model) if n in before]
    return {"method": "prune-channels", "ratio": ratio, "round_to": round_to,
            "library": f"torch-pruning {version_of('torch-pruning')} (DepGraph, MetaPruner, group L2 magnitude, per-group ratio)",
            "layers_kept_whole": [names.get(id(m), "?") for m in fixed], "groups": len(groups), "layers": layers}


def low_rank(torch, model, value: float) -> dict[str, Any]:
    """Truncated SVD of every Linear and 1x1 convolution: W (out x in) ~ (U sqrt(S)) (sqrt(S) V^T), two thin layers,
    the bias on the second. A layer whose kept rank would not make it smaller is left as it is."""
    nn = torch.nn
    layers, skipped = [], []
    for name, m in list(model.named_modules()):
        is_conv = isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
        if not (isinstance(m, nn.Linear) or is_conv):
            continue
        w = m.weight.detach().reshape(m.weight.shape[0], -1).double()
        out_f, in_f = w.shape
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        energy = torch.cumsum(s**2, 0) / torch.sum(s**2)
        if value < 1:
            rank = int(torch.searchsorted(energy, torch.tensor(value, dtype=energy.dtype)).item()) + 1
        else:
            rank = int(value)
        rank = max(1, min(rank, len(s)))
        kept = float(energy[rank - 1])
        if rank * (in_f + out_f) >= in_f * out_f:
            skipped.append({"layer": name, "shape": [out_f, in_f], "rank": rank,
                            "reason": f"rank {rank} of {min(out_f, in_f)} keeps {rank * (in_f + out_f)} parameters >= {in_f * out_f}"})
            continue
        root_s = torch.sqrt(s[:rank])
        first_w = (root_s[:, None] * vh[:rank]).float()
        second_w = (u[:, :rank] * root_s[None, :]).float()
        if is_conv:
            first = nn.Conv2d(in_f, rank, 1, stride=m.stride, padding=m.padding, bias=False)
            second = nn.Conv2d(rank, out_f, 1, bias=m.bias is not None)
            first.weight.data.copy_(first_w.reshape(rank, in_f, 1, 1))
            second.weight.data.copy_(second_w.reshape(out_f, rank, 1, 1))
        else:
            first = nn.Linear(in_f, rank, bias=False)
            second = nn.Linear(rank, out_f, bias=m.bias is not None)
            first.weight.data.copy_(first_w)
            second.weight.data.copy_(second_w)
        if m.bias is not None:
            second.bias.data.copy_(m.bias.detach())
        _set_submodule(model, name, nn.Sequential(first, second))
        layers.append({"layer": name, "kind": "Conv2d 1x1" if is_conv else "Linear", "shape": [out_f, in_f], "rank": rank,
                       "energy_kept": kept, "parameters": [in_f * out_f, rank * (in_f + out_f)]})
    if not layers:
        what = ("the model has no Linear or 1x1 convolution layer" if not skipped else
                "no layer gets smaller at that rank: " + "; ".join(f"{d['layer']}: {d['reason']}" for d in skipped[:5]))
        raise BadInput(f"--low-rank {value:g}: nothing to factorise: {what}",
                       hint="a lower energy fraction or rank" if skipped else "--prune-channels or --sparsity may apply")
    mode = f"energy fraction {value:g} per layer" if value < 1 else f"fixed rank {int(value)}"
    return {"method": "low-rank", "value": value, "mode": mode, "library": f"torch.linalg.svd (torch {torch.__version__})",
            "layers": layers, "skipped": skipped}


class MagnitudePruning:
    """Unstructured magnitude pruning of every convolution and Linear weight with one global threshold, through
    ``torch.nn.utils.prune`` masks: the zeros stay zero while the rest retrains; ``finish`` makes them permanent."""

    def __init__(self, torch, model, target: float):
        self.torch = torch
        from torch.nn.utils import prune

        self.prune = prune
        self.layers = _prunable_layers(torch, model)
        if not self.layers:
            raise BadInput("--sparsity: nothing to prune: the model has no convolution or Linear weights")
        self.target = target
        self.total = sum(m.weight.numel() for _, m in self.layers)
        self.current = 0.0

    def step(self, sparsity: float) -> None:
        torch = self.torch
        if sparsity <= self.current:
            return
        with torch.no_grad():
            flat = torch.cat([m.weight.detach().abs().flatten() for _, m in self.layers])
            keep = self.total - round(sparsity * self.total)
            mask = torch.zeros_like(flat, dtype=torch.bool)
            mask[torch.topk(flat, keep, sorted=False).indices] = True
        offset = 0
        for _, m in self.layers:
            n = m.weight.numel()
            self.prune.custom_from_mask(m, "weight", mask[offset:offset + n].reshape(m.weight.shape))
            offset += n
        self.current = sparsity

    def finish(self) -> dict[str, Any]:
        per_layer = []
        for name, m in self.layers:
            if self.prune.is_pruned(m):
                self.prune.remove(m, "weight")
            w = m.weight.detach()
            per_layer.append({"layer": name, "weights": int(w.numel()), "zeros": int((w == 0).sum())})
        zeros = sum(d["zeros"] for d in per_layer)
        return {"method": "sparsity", "target": self.target, "achieved": zeros / self.total,
                "library": f"torch.nn.utils.prune (torch {self.torch.__version__}), global magnitude threshold",
                "layers": per_layer, "note": DENSE_NOTE}


def sparsity_schedule(target: float, epochs: int) -> list[float]:
    """The sparsity at the start of each epoch: Zhu & Gupta's cubic ramp to ``target`` over the first half of the
    epochs (prune, retrain, raise the threshold, repeat), then the rest retrained at ``target``."""
    ramp = max(1, math.ceil(epochs / 2))
    return [target * (1 - (1 - min(e + 1, ramp) / ramp) ** 3) for e in range(epochs)]


# -- fine-tuning -----------------------------------------------------------------------------------------------
def _logits(torch, out):
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def finetune(torch, model, specs: list[TensorSpec], feed: dict[str, np.ndarray], y: np.ndarray, *, epochs: int, lr: float,
             batch_size: int, seed: int, magnitude: MagnitudePruning | None, progress: TrainingProgress) -> list[dict[str, Any]]:
    """Cross-entropy on the model's own input layout, Adam, seeded shuffles; with ``magnitude``, the sparsity follows
    :func:`sparsity_schedule` (pruned at the start of each epoch). Returns one row per epoch."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in specs]
    labels = torch.from_numpy(y.astype(np.int64))
    n = len(labels)
    batch_size = min(batch_size, n)
    starts = [i for i in range(0, n, batch_size) if n - i >= 2 or i == 0]  # a last batch of one would break batch norm
    schedule = sparsity_schedule(magnitude.target, epochs) if magnitude else [None] * epochs
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    history = []
    progress.start(epochs, len(starts))
    try:
        for epoch in range(epochs):
            if magnitude:
                magnitude.step(schedule[epoch])
            model.train()
            perm = torch.randperm(n, generator=gen)
            total_loss, correct, seen = 0.0, 0, 0
            for i in starts:
                idx = perm[i:i + batch_size]
                opt.zero_grad()
                logits = _logits(torch, model(*[t[idx] for t in tensors]))
                loss = torch.nn.functional.cross_entropy(logits, labels[idx])
                loss.backward()
                opt.step()
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == labels[idx]).sum())
                seen += len(idx)
                progress.advance()
            row = {"epoch": epoch + 1, "loss": total_loss / seen, "train_top1": correct / seen,
                   "sparsity": schedule[epoch]}
            history.append(row)
            progress.epoch(row, epochs)
    finally:
        progress.close()
        model.eval()
    return history


# -- measuring ---------------------------------------------------------------------------------------------------
def _int8_sizes(onnx_path: Path, tmp: Path) -> dict[str, Any]:
    """Size of an int8 ONNX artifact (ONNX Runtime dynamic quantization: int8 weights, symmetric per channel, so a zero
    stays a zero) and of that file zipped (deflate, level 9)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        dest = tmp / (onnx_path.stem + ".int8.onnx")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantize_dynamic(str(onnx_path), str(dest), weight_type=QuantType.QInt8, per_channel=True)
    except Exception as exc:  # noqa: BLE001 - the size figure is extra: a graph the quantizer cannot take is reported, not fatal
        return {"int8_bytes": None, "int8_zip_bytes": None, "int8_note": f"not quantized: {type(exc).__name__}: {str(exc)[:200]}"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.write(dest, dest.name)
    return {"int8_bytes": dest.stat().st_size, "int8_zip_bytes": len(buf.getvalue())}


def _graph_metrics(source, specs: list[TensorSpec], dest: Path) -> dict[str, Any]:
    from edgeconv.onnx_tools import load_onnx, summarize

    source.export_onnx(dest, inputs=specs, opset=None, dynamic_batch=False)
    summary = summarize(load_onnx(dest), source.layout_default)
    return {"macs": summary["macs"], "onnx_bytes": dest.stat().st_size, **_int8_sizes(dest, dest.parent)}


def _latency(paths: dict[str, Path], feed: dict[str, np.ndarray], *, runs: int, warmup: int, threads: int | None) -> dict[str, Any]:
    """fp32 p50 on ONNX Runtime of each model over ``runs`` timed runs in all, interleaved: LATENCY_ROUNDS rounds (fewer
    when runs < LATENCY_ROUNDS), the order alternating, a fresh session per model and round (closed before the next opens)."""
    from edgeconv.runners import open_runner
    from edgeconv.stats import LATENCY_METHOD, summarize_latency, time_runner

    labels = list(paths)
    samples: dict[str, list[float]] = {k: [] for k in labels}
    # ``runs`` timed runs per model in all: spread over the rounds, the first rounds taking the remainder (fewer rounds
    # when runs < LATENCY_ROUNDS, so no round times zero runs)
    rounds = max(1, min(LATENCY_ROUNDS, runs))
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    info = {}
    for r in range(rounds):
        for label in (labels if r % 2 == 0 else labels[::-1]):
            runner = open_runner("onnxruntime", paths[label], threads=threads)
            try:
                samples[label] += time_runner(runner, feed, warmup=warmup, runs=per_round[r])
                info = runner.info()
            finally:
                runner.close()
    stats = {k: summarize_latency(v) for k, v in samples.items()}
    split = str(per_round[0]) if len(set(per_round)) == 1 else "+".join(map(str, per_round))
    return {"stats": stats, "method": f"{LATENCY_METHOD}; {rounds} rounds, before/after alternating, a fresh session "
                                      f"each, {warmup} warm-up + {split} timed runs per round ({sum(per_round)} per "
                                      "model), batch 1",
            "runtime": {k: info.get(k) for k in ("runtime", "version", "threads") if k in info}}


def _top1(onnx_path: Path, feed: dict[str, np.ndarray], y: np.ndarray) -> float:
    from edgeconv.data import accuracy, classifier_output, run_batched
    from edgeconv.runners import open_runner

    runner = open_runner("onnxruntime", onnx_path)
    try:
        outs = run_batched(runner.infer, feed, runner.fixed_batch())
    finally:
        runner.close()
    idx = classifier_output(outs)
    if idx is None:
        raise BadInput(f"--data: the model's outputs {[list(o.shape) for o in outs]} are not class scores (N, classes)")
    return accuracy(outs[idx], y)["top1"]


# -- the command -------------------------------------------------------------------------------------------------
def _load_labelled(path: Path, specs: list[TensorSpec], classes: int, flag: str):
    from edgeconv.data import load_inputs

    feed, y = load_inputs(path, specs, need_labels=True)
    if y.min() < 0 or y.max() >= classes:
        raise BadInput(f"{flag} {path}: labels 'y' go from {int(y.min())} to {int(y.max())}; the model has {classes} classes, "
                       f"so labels must be class ids 0..{classes - 1}")
    return feed, y


def compress(req: CompressRequest, steps: Steps | None = None, progress: TrainingProgress | None = None) -> dict[str, Any]:
    """Compress ``req.model`` into ``req.output`` (written only when every step worked) and report before/after."""
    from edgeconv.frontends import detect_family, load_source
    from edgeconv.shapes import ShapeRequest, resolve

    steps = steps or Steps()
    progress = progress or TrainingProgress()
    check_request(req)
    family = detect_family(req.model)
    _refuse_family(req.model, family)
    torch = _torch()
    with steps.step(f"loading {req.model.name}"):
        source = load_source(req.model, req.load)
        if source.format == "torchscript":
            raise BadInput(f"{req.model} is TorchScript only: compress needs the Python modules (Torch-Pruning follows "
                           "nn.Conv2d/nn.Linear layers, fine-tuning trains them) and writes a torch.export program, but a "
                           "TorchScript file keeps a compiled graph, and torch.export cannot trace it",
                           hint="save the model as a .pt2 (torch.export.save) or a state_dict with its class (--model-class)")
        files = [(flag, p) for flag, p in (("--data", req.data), ("--finetune", req.finetune)) if p is not None]
        try:
            specs = resolve(source, ShapeRequest(req.input_shapes, req.input_dtypes, False, files)).specs
        except BadInput as exc:
            if files or not exc.hint or "--input-shape" not in exc.hint:
                raise
            shape = exc.hint.split("--input-shape ", 1)[1]
            raise BadInput(exc.message, hint=f"give --data VAL.npz or --finetune TRAIN.npz (their x gives it, first axis = "
                                             f"samples), or the shape: --input-shape {shape}") from None
        if source.program is not None:
            model, functional = _trainable_from_program(torch, source.program)
        else:
            model, functional = copy.deepcopy(source.module).eval(), []
        for p in model.parameters():  # a module saved frozen still trains here, and its outputs are traced to its layers
            p.requires_grad_(True)
        example = {s.name: np.asarray(v) for s, v in zip(specs, _example(specs), strict=True)}
        args = tuple(torch.from_numpy(example[s.name]) for s in specs)
        with torch.no_grad():
            ref = [o.numpy() for o in _outputs(torch, model(*args))]
            check = [np.asarray(o) for o in source.run(example)]
        if len(ref) != len(check) or not all(np.allclose(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL) for a, b in zip(ref, check, strict=True)):
            raise ConversionFailed("the trainable module rebuilt from the program does not compute what the program computes",
                                   hint="give the model as a state_dict with --model-class")
        classes = int(ref[0].shape[-1]) if ref and ref[0].ndim == 2 else None
        train = val = None
        if (req.finetune is not None or req.data is not None) and classes is None:
            raise BadInput(f"--finetune/--data need a classifier: the model's first output is {list(ref[0].shape)}, not "
                           "(N, classes)")
        if req.finetune is not None:
            train = _load_labelled(req.finetune, specs, classes, "--finetune")
            if len(train[1]) < 2:
                raise BadInput(f"--finetune {req.finetune} holds {len(train[1])} sample; fine-tuning needs at least 2")
        if req.data is not None:
            val = _load_labelled(req.data, specs, classes, "--data")
        if train is not None:
            with torch.no_grad():  # in eval mode: a training-mode pass would move the batch-norm statistics
                try:
                    model(*[torch.from_numpy(np.ascontiguousarray(train[0][s.name][:2])) for s in specs])
                except Exception as exc:  # any failure here means the graph is tied to batch 1
                    raise BadInput(f"the model does not run on a batch of 2 ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                                   "fine-tuning trains in batches",
                                   hint="a .pt2 exported at batch 1 may have the batch baked into a reshape: give the model as "
                                        "a state_dict with --model-class") from exc
    params_before, nonzero_before = _count(model)
    methods: list[dict[str, Any]] = []
    if req.prune_channels is not None:
        with steps.step(f"pruning {req.prune_channels:.0%} of channels (Torch-Pruning DepGraph)"):
            methods.append(prune_channels(torch, model, args, req.prune_channels, functional, req.round_to))
    if req.low_rank is not None:
        with steps.step("low-rank factorisation (truncated SVD)"):
            methods.append(low_rank(torch, model, req.low_rank))
    magnitude = MagnitudePruning(torch, model, req.sparsity) if req.sparsity is not None else None
    history = None
    if train is not None:
        epochs, lr = req.epochs or DEFAULT_EPOCHS, req.lr or DEFAULT_LR
        history = finetune(torch, model, specs, train[0], train[1], epochs=epochs, lr=lr,
                           batch_size=req.batch_size or DEFAULT_BATCH, seed=req.seed, magnitude=magnitude, progress=progress)
    elif magnitude is not None:
        magnitude.step(req.sparsity)
    if magnitude is not None:
        methods.append(magnitude.finish())
    params_after, nonzero_after = _count(model)
    with torch.no_grad():
        shapes = [list(o.shape) for o in _outputs(torch, model(*args))]
    if shapes != [list(o.shape) for o in ref]:
        raise ConversionFailed(f"the compressed model's outputs are {shapes}, the source's {[list(o.shape) for o in ref]}")

    req.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = req.output.with_name(f".{req.output.name}.{os.getpid()}.tmp.pt2")
    try:
        with tempfile.TemporaryDirectory(prefix="edgeconv-compress-") as tmpdir:
            tmp = Path(tmpdir)
            with steps.step(f"writing {req.output.name} (torch.export) and reading it back"):
                with torch.no_grad():
                    ours = [o.numpy() for o in _outputs(torch, model(*args))]
                try:
                    program = torch.export.export(model.eval(), args)
                    torch.export.save(program, str(tmp_out))
                except Exception as exc:
                    raise ConversionFailed(f"torch.export could not export the compressed model: {type(exc).__name__}: "
                                           f"{str(exc).splitlines()[0][:300]}") from exc
                written = load_source(tmp_out, LoadOptions())
                theirs = [np.asarray(o) for o in written.run(example)]
                ours_shapes, theirs_shapes = [list(o.shape) for o in ours], [list(o.shape) for o in theirs]
                if ours_shapes != theirs_shapes:  # before any arithmetic: mismatched arrays would not subtract
                    raise ConversionFailed(f"the written {req.output.name} returns outputs of shapes {theirs_shapes}; the "
                                           f"compressed model returns {ours_shapes}")
                worst = max((float(np.max(np.abs(a - b))) for a, b in zip(ours, theirs, strict=True) if a.size), default=0.0)
                if not all(np.allclose(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL) for a, b in zip(ours, theirs, strict=True)):
                    raise ConversionFailed(f"the written {req.output.name} does not compute what the compressed model computes "
                                           f"(max abs difference {worst:.3g})")
                original_pt2, pt2_note = _source_pt2(torch, source, req.model, args, tmp / "source.pt2")
            with steps.step("exporting both to ONNX: MACs, int8 size"):
                before = _graph_metrics(source, specs, tmp / "before.onnx")
                after = _graph_metrics(written, specs, tmp / "after.onnx")
            with steps.step("timing both on ONNX Runtime (fp32, interleaved)"):
                lat = _latency({"before": tmp / "before.onnx", "after": tmp / "after.onnx"}, example,
                               runs=req.runs, warmup=req.warmup, threads=req.threads)
            if val is not None:
                with steps.step(f"top-1 on {req.data.name}"):
                    before["top1"] = _top1(tmp / "before.onnx", val[0], val[1])
                    after["top1"] = _top1(tmp / "after.onnx", val[0], val[1])
            before |= {"parameters": params_before, "nonzero_parameters": nonzero_before, "file_bytes": req.model.stat().st_size,
                       "pt2_bytes": None if original_pt2 is None else original_pt2.stat().st_size,
                       "p50_ms": lat["stats"]["before"]["p50_ms"]}
            if pt2_note:
                before["pt2_note"] = pt2_note
            after |= {"parameters": params_after, "nonzero_parameters": nonzero_after, "file_bytes": tmp_out.stat().st_size,
                      "pt2_bytes": tmp_out.stat().st_size, "p50_ms": lat["stats"]["after"]["p50_ms"]}
        os.replace(tmp_out, req.output)
    finally:
        tmp_out.unlink(missing_ok=True)
    return _report(req, source, specs, methods, history, before, after, lat, val, None if train is None else len(train[1]))


def _source_pt2(torch, source, model_path: Path, args: tuple, dest: Path) -> tuple[Path | None, str | None]:
    """The source as a torch.export .pt2, so its size compares like with like with the written one: the file itself when it
    is one, else the module exported to ``dest``. The figure is extra: a module torch.export cannot take is reported
    (None and the reason), not fatal, since the compressed model has been exported and checked already."""
    if source.program is not None:
        return model_path, None
    try:
        with torch.no_grad():
            torch.export.save(torch.export.export(copy.deepcopy(source.module).eval(), args), str(dest))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        return None, (f"not measured: torch.export could not export the source module ({type(exc).__name__}: "
                      f"{(str(exc).splitlines() or [''])[0][:200]})")
    return dest, None


def _example(specs: list[TensorSpec]) -> list[np.ndarray]:
    from edgeconv.specs import random_inputs

    feed = random_inputs(specs, batch=1)
    return [feed[s.name] for s in specs]


def _outputs(torch, out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return list(out.values())
    return list(out)


# pt2_bytes, not file_bytes: both sides written by torch.export.save (a state_dict or pickled source file is another format)
RATIO_KEYS = ("parameters", "nonzero_parameters", "macs", "pt2_bytes", "int8_zip_bytes", "p50_ms")


def _report(req, source, specs, methods, history, before, after, lat, val, n_train) -> dict[str, Any]:
    ratios = {k: (after[k] / before[k]) if before.get(k) and after.get(k) is not None else None for k in RATIO_KEYS}
    if before.get("top1") is not None:
        ratios["top1_drop_points"] = (before["top1"] - after["top1"]) * 100
    notes = []
    if any(m["method"] == "sparsity" for m in methods):
        notes.append(DENSE_NOTE)
    if history is None:
        notes.append("no fine-tuning was done (no --finetune): accuracy is that of the compressed weights as they are")
    if before.get("int8_zip_bytes") is None:
        notes.append(f"int8 size: {before.get('int8_note')}")
    if before.get("pt2_note"):
        notes.append(f".pt2 size of the source: {before['pt2_note']}")
    return {
        "ok": True,
        "source": {"path": str(req.model), "format": source.format, "sha256": sha256_of(req.model)},
        "output": {"path": str(req.output), "format": "torch.export", "sha256": sha256_of(req.output),
                   "inputs": [s.to_dict() for s in specs]},
        "methods": methods,
        "finetune": None if history is None else {
            "data": {"path": str(req.finetune), "sha256": sha256_of(req.finetune), "count": n_train},
            "epochs": req.epochs or DEFAULT_EPOCHS, "lr": req.lr or DEFAULT_LR, "batch_size": req.batch_size or DEFAULT_BATCH,
            "seed": req.seed, "loss": "cross-entropy", "optimizer": "Adam", "history": history},
        "data": None if val is None else {"path": str(req.data), "sha256": sha256_of(req.data), "count": len(val[1])},
        "before": before, "after": after, "ratios": ratios,
        "latency": {"method": lat["method"], "runtime": lat["runtime"], "before": lat["stats"]["before"], "after": lat["stats"]["after"],
                    "precision": "fp32"},
        "int8_method": "ONNX Runtime quantize_dynamic (int8 weights, symmetric per channel) of the exported ONNX graph, "
                       "zipped with deflate level 9",
        "macs_method": "Conv/ConvTranspose/Gemm/MatMul of the exported ONNX graph at batch 1",
        "notes": notes,
        "command_line": req.command_line,
    }


def render_report(report: dict[str, Any]) -> None:
    """The before/after table for people (``--json`` prints the report instead)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    b, a, r = report["before"], report["after"], report["ratios"]

    def num(v, kind="int"):
        if v is None:
            return "-"
        if kind == "ms":
            return f"{v:.3f} ms"
        if kind == "pct":
            return f"{v * 100:.2f}%"
        if kind == "bytes":
            return f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.1f} kB"
        return f"{v:,}"

    t = Table(title=f"edgeconv compress · {Path(report['source']['path']).name} → {Path(report['output']['path']).name}",
              title_justify="left")
    for col in ("", "before", "after", "after / before"):
        t.add_column(col, justify="right" if col else "left")
    rows = [("parameters", "parameters", "int"), ("non-zero parameters", "nonzero_parameters", "int"), ("MACs", "macs", "int"),
            ("torch.export .pt2 size", "pt2_bytes", "bytes"), ("int8 ONNX, zipped", "int8_zip_bytes", "bytes"),
            ("ORT fp32 p50", "p50_ms", "ms")]
    for label, key, kind in rows:
        ratio = r.get(key)
        t.add_row(label, num(b.get(key), kind), num(a.get(key), kind), f"{ratio:.3f}×" if ratio is not None else "-")
    if b.get("top1") is not None:
        t.add_row(f"top-1 on {Path(report['data']['path']).name}", num(b["top1"], "pct"), num(a["top1"], "pct"),
                  (f"{r['top1_drop_points']:.2f} points lost" if r["top1_drop_points"] > 0 else f"{-r['top1_drop_points']:.2f} points gained"))
    console.print(t)
    for m in report["methods"]:
        if m["method"] == "prune-channels":
            console.print(f"prune-channels {m['ratio']:g}: {m['groups']} channel groups pruned; layers kept whole (outputs, too narrow): "
                          f"{', '.join(m['layers_kept_whole']) or '-'}; widths kept in multiples of {m['round_to'] or 1} [dim]({m['library']})[/]")
        elif m["method"] == "low-rank":
            console.print(f"low-rank ({m['mode']}): " + ", ".join(f"{d['layer']} {d['shape'][0]}x{d['shape'][1]} → rank {d['rank']} "
                                                                 f"({d['energy_kept']:.0%} energy)" for d in m["layers"]))
        elif m["method"] == "sparsity":
            console.print(f"sparsity: {m['achieved']:.3f} of conv/Linear weights are zero (target {m['target']:g})")
    ft = report["finetune"]
    if ft:
        last = ft["history"][-1]
        console.print(f"fine-tuned {ft['epochs']} epochs on {Path(ft['data']['path']).name} (lr {ft['lr']:g}, batch "
                      f"{ft['batch_size']}, seed {ft['seed']}): last loss {last['loss']:.4f}, train top-1 {last['train_top1']:.1%}")
    for note in report["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"[dim]latency: {report['latency']['method']}[/]")
    console.print(f"wrote {report['output']['path']} (convert it like any other model: edgeconv convert "
                  f"{report['output']['path']} --target …)")
