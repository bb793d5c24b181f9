"""The three tools: structured channel pruning (Torch-Pruning's DepGraph), low-rank factorisation (truncated SVD) and
unstructured magnitude pruning (``torch.nn.utils.prune``), each on an ``nn.Module`` in place. See docs/architecture.md."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

from edgeconv.core.text import first_line
from edgeconv.errors import BadInput, ConversionFailed, MissingDependency
from edgeconv.lazy import version_of

DENSE_NOTE = ("Unstructured zeros do not make a dense runtime faster: ONNX Runtime, LiteRT, OpenVINO and TensorRT still "
              "multiply every zero, so latency and MACs stay those of the dense model. What sparsity buys is size once "
              "the artifact is compressed (the int8 ONNX zipped: int8_zip_bytes) - for download, storage and over-the-air "
              "updates.")


def _layer_types(torch):
    nn = torch.nn
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _set_submodule(root, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def prunable_layers(torch, model) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _layer_types(torch))]


def count_parameters(model) -> tuple[int, int]:
    """All parameters, and those not zero."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


def _params_of(fn, depth: int = 3) -> list:
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


def _output_layers(torch, model, args) -> list[Any]:
    """The layers whose output channels are the model's outputs (a classifier's last Linear): found by walking the
    autograd graph back from each output to the first convolution or Linear on every path. Their output channels
    are never pruned (their input channels may be)."""
    owners = {}
    for _, m in prunable_layers(torch, model):
        for p in (m.weight, getattr(m, "bias", None)):
            if p is not None:
                owners[id(p)] = m
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
        owner = next((owners[id(p)] for p in _params_of(fn) if id(p) in owners), None)
        if owner is not None:
            if all(owner is not f for f in found):
                found.append(owner)
            continue
        stack.extend(k for k, _ in fn.next_functions if k is not None and not hasattr(k, "variable"))
    return found


# -- structured channel pruning --------------------------------------------------------------------------------------
def _torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise MissingDependency(f"torch-pruning is not installed (needed for --prune-channels, Torch-Pruning's DepGraph): {exc}",
                                hint="install it with: pip install 'edgeconv[compress]'") from exc
    return tp


def _kept_whole(torch, model, args, ratio: float, round_to: int | None) -> list[Any]:
    """The layers whose output channels stay: the model's outputs, and (with ``round_to``) layers too narrow to keep one
    block of ``round_to`` channels, which would be rounded down to none."""
    fixed = _output_layers(torch, model, args)
    if round_to and round_to > 1:
        fixed += [m for _, m in prunable_layers(torch, model)
                  if int(m.weight.shape[0] * (1 - ratio)) < round_to and all(m is not f for f in fixed)]
    return fixed


def _run_pruner(tp, model, args, ratio: float, fixed: list[Any], round_to: int | None, names: dict[int, str]) -> list:
    """MetaPruner over every group of coupled channels not in ``fixed``; its chatter on stdout kept out. Returns the groups."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            pruner = tp.pruner.MetaPruner(model, example_inputs=args, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                          pruning_ratio=ratio, ignored_layers=fixed, global_pruning=False,
                                          round_to=round_to)
            groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                   root_module_types=pruner.root_module_types))
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
        raise ConversionFailed(f"Torch-Pruning could not prune this model: {type(exc).__name__}: {first_line(exc)}",
                               hint="run with --debug for the traceback") from exc
    return groups


def prune_channels(torch, model, args, ratio: float, functional: list[str], round_to: int | None = None) -> dict[str, Any]:
    """Torch-Pruning (DepGraph): remove ``ratio`` of each group of coupled channels, by group L2 magnitude."""
    if functional:
        raise BadInput("the program computes some layers as functions on raw weights, which channel pruning cannot follow: "
                       + "; ".join(functional[:5]),
                       hint="give the model as a state_dict with --model-class (the module's own layers), or drop "
                            "--prune-channels")
    tp = _torch_pruning()
    fixed = _kept_whole(torch, model, args, ratio, round_to)
    names = {id(m): n for n, m in model.named_modules()}
    before = {n: (m.weight.shape[0]) for n, m in prunable_layers(torch, model)}
    params0, _ = count_parameters(model)
    groups = _run_pruner(tp, model, args, ratio, fixed, round_to, names)
    params1, _ = count_parameters(model)
    if params1 == params0:
        raise BadInput(f"--prune-channels {ratio:g} removes no channel: each prunable group has too few channels for "
                       f"{ratio:g} of them to round to one ({len(groups)} groups; widths {sorted(set(before.values()))})",
                       hint="give a larger ratio")
    try:
        with torch.no_grad():
            model(*args)  # the pruned graph still runs at the example shape (a reshape to baked widths would fail here)
    except Exception as exc:
        raise ConversionFailed(f"the pruned model no longer runs: {type(exc).__name__}: {first_line(exc)}",
                               hint="a .pt2 may bake channel counts into a reshape; give the model as a state_dict with "
                                    "--model-class") from exc
    layers = [{"layer": n, "channels": [before[n], m.weight.shape[0]]} for n, m in prunable_layers(torch, model) if n in before]
    return {"method": "prune-channels", "ratio": ratio, "round_to": round_to,
            "library": f"torch-pruning {version_of('torch-pruning')} (DepGraph, MetaPruner, group L2 magnitude, per-group ratio)",
            "layers_kept_whole": [names.get(id(m), "?") for m in fixed], "groups": len(groups), "layers": layers}


# -- low-rank factorisation ----------------------------------------------------------------------------------------------
def _rank(torch, s, value: float) -> tuple[int, float]:
    """The rank kept for singular values ``s`` (the energy fraction ``value`` < 1, or the fixed rank ``value``), and the
    fraction of the energy it keeps."""
    energy = torch.cumsum(s**2, 0) / torch.sum(s**2)
    if value < 1:
        rank = int(torch.searchsorted(energy, torch.tensor(value, dtype=energy.dtype)).item()) + 1
    else:
        rank = int(value)
    rank = max(1, min(rank, len(s)))
    return rank, float(energy[rank - 1])


def _thin_pair(nn, m, is_conv: bool, first_w, second_w, in_f: int, out_f: int, rank: int):
    """Two thin layers of ``m``'s kind holding the two factors, the bias on the second."""
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
    return nn.Sequential(first, second)


def _factorise(torch, model, name: str, m, is_conv: bool, value: float) -> tuple[dict[str, Any], bool]:
    """Layer ``name`` split in two when that makes it smaller: its record, and whether it was split."""
    w = m.weight.detach().reshape(m.weight.shape[0], -1).double()
    out_f, in_f = w.shape
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    rank, kept = _rank(torch, s, value)
    if rank * (in_f + out_f) >= in_f * out_f:
        return {"layer": name, "shape": [out_f, in_f], "rank": rank,
                "reason": f"rank {rank} of {min(out_f, in_f)} keeps {rank * (in_f + out_f)} parameters >= {in_f * out_f}"}, False
    root_s = torch.sqrt(s[:rank])
    first_w = (root_s[:, None] * vh[:rank]).float()
    second_w = (u[:, :rank] * root_s[None, :]).float()
    _set_submodule(model, name, _thin_pair(torch.nn, m, is_conv, first_w, second_w, in_f, out_f, rank))
    return {"layer": name, "kind": "Conv2d 1x1" if is_conv else "Linear", "shape": [out_f, in_f], "rank": rank,
            "energy_kept": kept, "parameters": [in_f * out_f, rank * (in_f + out_f)]}, True


def low_rank(torch, model, value: float) -> dict[str, Any]:
    """Truncated SVD of every Linear and 1x1 convolution: W (out x in) ~ (U sqrt(S)) (sqrt(S) V^T), two thin layers,
    the bias on the second. A layer whose kept rank would not make it smaller is left as it is."""
    nn = torch.nn
    layers, skipped = [], []
    for name, m in list(model.named_modules()):
        is_conv = isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
        if not (isinstance(m, nn.Linear) or is_conv):
            continue
        record, split = _factorise(torch, model, name, m, is_conv, value)
        (layers if split else skipped).append(record)
    if not layers:
        what = ("the model has no Linear or 1x1 convolution layer" if not skipped else
                "no layer gets smaller at that rank: " + "; ".join(f"{d['layer']}: {d['reason']}" for d in skipped[:5]))
        raise BadInput(f"--low-rank {value:g}: nothing to factorise: {what}",
                       hint="a lower energy fraction or rank" if skipped else "--prune-channels or --sparsity may apply")
    mode = f"energy fraction {value:g} per layer" if value < 1 else f"fixed rank {int(value)}"
    return {"method": "low-rank", "value": value, "mode": mode, "library": f"torch.linalg.svd (torch {torch.__version__})",
            "layers": layers, "skipped": skipped}


# -- unstructured magnitude pruning --------------------------------------------------------------------------------------
class MagnitudePruning:
    """Unstructured magnitude pruning of every convolution and Linear weight with one global threshold, through
    ``torch.nn.utils.prune`` masks: the zeros stay zero while the rest retrains; ``finish`` makes them permanent."""

    def __init__(self, torch, model, target: float):
        self.torch = torch
        from torch.nn.utils import prune

        self.prune = prune
        self.layers = prunable_layers(torch, model)
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
