"""Two of the three tools: low-rank factorisation (truncated SVD) and unstructured magnitude pruning
(``torch.nn.utils.prune``), each on an ``nn.Module`` in place; structured channel pruning is :mod:`channels`. See
docs/architecture.md."""

from __future__ import annotations

import math
from typing import Any

from edgeconv.errors import BadInput

DENSE_NOTE = ("Unstructured zeros do not make a dense runtime faster: ONNX Runtime, LiteRT, OpenVINO and TensorRT still "
              "multiply every zero, so latency and MACs stay those of the dense model. What sparsity buys is size once "
              "the artifact is compressed (the int8 ONNX zipped: int8_zip_bytes) - for download, storage and over-the-air "
              "updates.")


def _layer_types(torch):
    nn = torch.nn
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def set_submodule(root, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def prunable_layers(torch, model) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _layer_types(torch))]


def layer_inputs(torch, model, args, names: list[str]) -> dict[str, list]:
    """The tensors each layer of ``names`` is called with on one run of ``model`` (autograd on, so they can be traced
    back); a layer that does not run gets an empty list."""
    inputs: dict[str, list] = {n: [] for n in names}

    def hook(name):
        def record(_m, a) -> None:  # returns None: a pre-hook's value would replace the layer's inputs
            inputs[name].extend(t for t in a if isinstance(t, torch.Tensor))
        return record

    hooks = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.enable_grad():
            model(*args)
    finally:
        for h in hooks:
            h.remove()
    return inputs


def count_parameters(model) -> tuple[int, int]:
    """All parameters, and those not zero."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params)


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
    set_submodule(model, name, _thin_pair(torch.nn, m, is_conv, first_w, second_w, in_f, out_f, rank))
    return {"layer": name, "kind": "Conv2d 1x1" if is_conv else "Linear", "shape": [out_f, in_f], "rank": rank,
            "energy_kept": kept, "parameters": [in_f * out_f, rank * (in_f + out_f)]}, True


def low_rank(torch, model, value: float, originals: dict[str, Any] | None = None) -> dict[str, Any]:
    """Truncated SVD of every Linear and 1x1 convolution: W (out x in) ~ (U sqrt(S)) (sqrt(S) V^T), two thin layers,
    the bias on the second. A layer whose kept rank would not make it smaller is left as it is. Each layer replaced
    goes into ``originals`` by name (to undo it where it does not pay: :mod:`pays`)."""
    nn = torch.nn
    layers, skipped = [], []
    for name, m in list(model.named_modules()):
        is_conv = isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
        if not (isinstance(m, nn.Linear) or is_conv):
            continue
        record, split = _factorise(torch, model, name, m, is_conv, value)
        (layers if split else skipped).append(record)
        if split and originals is not None:
            originals[name] = m
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
