"""Recurrent layers for channel pruning: ``nn.LSTM``/``nn.GRU`` as torch.export writes them (one call returning a flat
tuple), and a Torch-Pruning pruner for their hidden size (docs/architecture.md, "compress").

Torch-Pruning's own LSTM pruner indexes the gate-stacked weights with the hidden indices (an IndexError on any
LSTM); :class:`RecurrentPruner` keeps each gate's rows of a hidden unit together instead. Only a one-layer,
one-direction LSTM without projections prunes its hidden size (``nn.LSTM`` gives every layer one hidden size, and a
bidirectional output interleaves two); a GRU stays whole, since Torch-Pruning cannot trace through it, and runs
without autograd while Torch-Pruning traces the model (:func:`traced_around_gru`). :func:`whole_reason` says why a
layer stays whole.
"""

from __future__ import annotations

import contextlib
from typing import Any

_CLASSES: dict[str, Any] = {}
GATES = {"lstm": 4, "gru": 3}


def flat_recurrent(torch, kind: str):
    """The ``nn.LSTM``/``nn.GRU`` subclass whose ``forward(x)`` returns ``(output, h_n, c_n)`` / ``(output, h_n)``, the
    tuple ``aten.lstm``/``aten.gru`` return, from zero initial states."""
    if kind not in _CLASSES:
        base = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU

        def forward(self, x):
            out, state = base.forward(self, x)
            return (out, *state) if isinstance(state, tuple) else (out, state)

        _CLASSES[kind] = type(f"Flat{base.__name__}", (base,), {"forward": forward, "__module__": __name__})
    return _CLASSES[kind]


def kind_of(torch, module) -> str | None:
    if isinstance(module, torch.nn.LSTM):
        return "lstm"
    if isinstance(module, torch.nn.GRU):
        return "gru"
    return None


def whole_reason(torch, module) -> str | None:
    """Why a recurrent layer's hidden size stays whole, or None when it prunes."""
    kind = kind_of(torch, module)
    if kind is None:
        return None
    if kind == "gru":
        why = "Torch-Pruning cannot trace nn.GRU (its CPU kernel splits the gates into separate autograd steps)"
    elif module.num_layers != 1:
        why = f"{module.num_layers} stacked layers share one hidden size in nn.LSTM"
    elif module.bidirectional:
        why = "bidirectional: its output interleaves two directions' hidden units"
    elif getattr(module, "proj_size", 0):
        why = "LSTM with a projection (proj_size)"
    else:
        return None
    return why + "; the layers feeding it keep their width too"


def recurrent_pruner(tp, torch):
    """A Torch-Pruning pruner (an instance) for one-layer ``nn.LSTM``/``nn.GRU``: out channels are hidden units (each
    gate's row, the recurrent weight's column), in channels the input weights' columns (both directions)."""

    class RecurrentPruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer, idxs: list):
            hidden = layer.hidden_size
            keep = torch.tensor(sorted(set(range(hidden)) - set(idxs)))
            rows = torch.cat([keep + g * hidden for g in range(GATES[kind_of(torch, layer)])])
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                if hasattr(layer, name) and getattr(layer, name) is not None:
                    setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), rows.tolist(), 0))
            layer.weight_hh_l0 = self._prune_parameter_and_grad(layer.weight_hh_l0, keep.tolist(), 1)
            layer.hidden_size = len(keep)
            return layer

        def prune_in_channels(self, layer, idxs: list):
            keep = sorted(set(range(layer.input_size)) - set(idxs))
            for name in ("weight_ih_l0", "weight_ih_l0_reverse"):
                if hasattr(layer, name):
                    setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), keep, 1))
            layer.input_size = len(keep)
            return layer

        def get_out_channels(self, layer):
            return layer.hidden_size * (2 if layer.bidirectional else 1)

        def get_in_channels(self, layer):
            return layer.input_size

    return RecurrentPruner()


@contextlib.contextmanager
def traced_around_gru(torch, model):
    """While inside, every recurrent layer of ``model`` that stays whole (a GRU, a stacked or bidirectional LSTM) runs
    without autograd (Torch-Pruning's tracing does not enter it).
    Yields the ``forward_fn`` to give Torch-Pruning: the model's outputs and each GRU's inputs, so the tracing still
    reaches the layers before the GRU."""
    grus = [m for m in model.modules() if whole_reason(torch, m) is not None]  # GRUs, stacked/bidirectional LSTMs
    captured: list = []

    def forward_fn(m, inputs):
        captured.clear()
        out = m(*inputs)
        return (out, *captured) if captured else out

    hooks = [g.register_forward_pre_hook(lambda _m, a: captured.extend(t for t in a if isinstance(t, torch.Tensor)))
             for g in grus]
    for g in grus:
        g.forward = _no_grad(torch, g)
    try:
        yield forward_fn
    finally:
        for g, h in zip(grus, hooks, strict=True):
            g.__dict__.pop("forward", None)
            h.remove()


def _no_grad(torch, module):
    cls_forward = type(module).forward

    def forward(*a, **kw):
        with torch.no_grad():
            return cls_forward(module, *a, **kw)

    return forward
