"""Structured channel pruning with Torch-Pruning's DepGraph, on a module lifted from a program or given as a class
(docs/architecture.md, "compress").

Every layer with channels prunes (convolutions, Linear, Embedding's dim, one-layer LSTM/GRU hidden sizes, with the
norms, PReLU slopes and layers that read them) except those that must keep their width, each named with its reason:
the model's output layers, layers narrower than one ``--round-to`` block, recurrent layers Torch-Pruning cannot
shrink, and the layers whose channels reach a width written into the graph (:mod:`reshapes`) or a layer left as a
function on raw weights. The pruned copy is run on the example before it is kept: where it fails, the layers feeding
the failing call keep their width and pruning starts again from the unpruned model.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any

from edgeconv.compress.lifting import trainable_from_program
from edgeconv.compress.methods import count_parameters, layer_inputs
from edgeconv.compress.recurrent import recurrent_pruner, traced_around_gru, whole_reason
from edgeconv.compress.reshapes import derive_reshapes, functional_nodes, producers
from edgeconv.core.text import first_line
from edgeconv.errors import BadInput, ConversionFailed, MissingDependency
from edgeconv.lazy import version_of

# Torch-Pruning's grouping and pruning of one model: past this, the model is refused (exit 4) rather than left to run
# for hours (ReXNet-100's dependency graph did not finish in 15 min; ResNet-50's takes seconds)
PRUNER_LIMIT_S = 300.0

ATTEMPTS = 6  # prune, run, keep the failing call's producers whole, again


def channel_types(torch) -> tuple:
    nn = torch.nn
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding, nn.LSTM, nn.GRU)


def width(torch, m) -> int:
    """A layer's output channels: its weight's rows, an embedding's dim, a recurrent layer's hidden size."""
    if isinstance(m, torch.nn.Embedding):
        return m.embedding_dim
    if isinstance(m, (torch.nn.LSTM, torch.nn.GRU)):
        return m.hidden_size
    return m.weight.shape[0]


def channel_layers(torch, model) -> list[tuple[str, Any]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, channel_types(torch))]


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


def _walk_back(torch, model, grad_fns: list) -> list[str]:
    """The layers with channels met first on every autograd path back from ``grad_fns``."""
    owners = {id(p): n for n, m in channel_layers(torch, model) for p in m.parameters(recurse=False)}
    found, seen = [], set()
    stack = [fn for fn in grad_fns if fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        owner = next((owners[id(p)] for p in _params_of(fn, depth=4) if id(p) in owners), None)
        if owner is not None:
            if owner not in found:
                found.append(owner)
            continue
        stack.extend(k for k, _ in fn.next_functions if k is not None and not hasattr(k, "variable"))
    return found


def _tensors(torch, out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else []
    return [t for o in items for t in _tensors(torch, o)]


def _output_layers(torch, model, args) -> list[str]:
    """The layers whose output channels are the model's outputs (a classifier's last Linear): the first layer with
    channels on every autograd path back from each output. Their output channels are never pruned (their input
    channels may be)."""
    with torch.enable_grad():
        outs = _tensors(torch, model(*args))
    return _walk_back(torch, model, [o.grad_fn for o in outs])


def _feeding(torch, model, args, names: list[str]) -> dict[str, list[str]]:
    """For each layer of ``names``, the layers with channels whose outputs reach its input (from one traced run)."""
    inputs = layer_inputs(torch, model, args, names)
    return {n: _walk_back(torch, model, [t.grad_fn for t in ts]) for n, ts in inputs.items()}


def _torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise MissingDependency(f"torch-pruning is not installed (needed for --prune-channels, Torch-Pruning's DepGraph): {exc}",
                                hint="install it with: pip install 'edgeconv[compress]'") from exc
    return tp


def kept_whole(torch, model, args, ratio: float, round_to: int | None) -> dict[str, str]:
    """The layers whose output channels stay before any pruning, each with its reason (see the module's docstring).
    A lifted program's derivable reshapes are rewritten here (in place)."""
    whole = {n: "its channels are the model's outputs" for n in _output_layers(torch, model, args)}
    for n, m in channel_layers(torch, model):
        reason = whole_reason(torch, m)
        if reason is None and round_to and round_to > 1 and int(width(torch, m) * (1 - ratio)) < round_to:
            reason = f"narrower than {round_to}/(1 - {ratio:g}) channels: it would keep less than one --round-to block"
        if reason is not None:
            whole.setdefault(n, reason)
    gru = [n for n, m in channel_layers(torch, model) if whole_reason(torch, m) is not None]  # traced around
    for name, feeding in _feeding(torch, model, args, gru).items():
        for n in feeding:
            whole.setdefault(n, f"it feeds {name}, which stays whole")
    if isinstance(model, torch.fx.GraphModule):
        _, pinned = derive_reshapes(torch, model)
        for node, reason in pinned + functional_nodes(torch, model):
            for name in producers(model, node, channel_types(torch)):
                whole.setdefault(name, f"its channels reach {reason}")
    return whole


def _pruner(tp, torch, model, args, ratio: float, whole: dict[str, str], round_to: int | None, forward_fn):
    fixed = [model.get_submodule(n) for n in whole]
    rp = recurrent_pruner(tp, torch)
    recurrent = {type(m): rp for _, m in model.named_modules()
                 if isinstance(m, torch.nn.LSTM) and whole_reason(torch, m) is None}
    return tp.pruner.MetaPruner(model, example_inputs=args, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                pruning_ratio=ratio, ignored_layers=fixed, global_pruning=False, round_to=round_to,
                                root_module_types=list(channel_types(torch)), customized_pruners=recurrent,
                                forward_fn=forward_fn)


def _prune_once(tp, torch, model, args, ratio: float, whole: dict[str, str], round_to: int | None) -> int:
    """MetaPruner over every group of coupled channels whose layers are not ``whole``, its chatter on stdout (and its
    warnings about the GRU weights it does not trace) kept out. Returns the number of groups."""
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _time_limit(PRUNER_LIMIT_S), \
                traced_around_gru(torch, model) as forward_fn:
            warnings.filterwarnings("ignore", module="torch_pruning")
            pruner = _pruner(tp, torch, model, args, ratio, whole, round_to, forward_fn)
            groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                                   root_module_types=pruner.root_module_types))
            if not groups:
                raise BadInput("nothing to prune: every layer with channels stays whole ("
                               + "; ".join(f"{n!r}: {r}" for n, r in whole.items()) + ")",
                               hint="--low-rank or --sparsity can still make such a model smaller")
            pruner.step()
    except BadInput:
        raise
    except _TooLong:
        raise ConversionFailed(f"Torch-Pruning did not finish grouping and pruning this model's channels in "
                               f"{PRUNER_LIMIT_S:.0f} s (its dependency graph grows too large for some architectures, "
                               f"e.g. ReXNet's partial-channel residual adds)",
                               hint="--low-rank or --sparsity can still make such a model smaller") from None
    except Exception as exc:  # Torch-Pruning's own failures, of any type
        raise ConversionFailed(f"Torch-Pruning could not prune this model: {type(exc).__name__}: {first_line(exc)}",
                               hint="run with --debug for the traceback") from exc
    return len(groups)


class _TooLong(Exception):
    """Torch-Pruning ran past PRUNER_LIMIT_S."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _TooLong in this (main) thread after ``seconds``; elsewhere (a thread: no signals) no limit."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise _TooLong

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def failing_call(torch, model, args) -> tuple[Any, BaseException] | None:
    """Run ``model`` on ``args``: None when it runs, else the graph node that failed (None outside a graph) and the error."""
    failed: list = [None]
    if isinstance(model, torch.fx.GraphModule):
        class Locate(torch.fx.Interpreter):
            def run_node(self, n):
                failed[0] = n
                return super().run_node(n)

        run = Locate(model).run
    else:
        run = model
    try:
        with torch.no_grad():
            run(*args)
    except Exception as exc:  # noqa: BLE001 - any failure of the pruned graph is what this looks for
        return failed[0], exc
    return None


def _pruned_copy(tp, torch, model, args, ratio: float, whole: dict[str, str], round_to: int | None) -> tuple[Any, int]:
    """A pruned copy of ``model`` that runs on ``args``: pruned, run, and, where a call fails, the layers feeding it added
    to ``whole`` (in place) and pruned again from ``model``. Raises ConversionFailed when a failure names no new layer."""
    for _ in range(ATTEMPTS):
        candidate = copy.deepcopy(model)
        groups = _prune_once(tp, torch, candidate, args, ratio, whole, round_to)
        failure = failing_call(torch, candidate, args)
        if failure is None:
            return candidate, groups
        node, exc = failure
        new = [] if node is None else [n for n in producers(candidate, node, channel_types(torch)) if n not in whole]
        if node is not None and node.op == "call_module" and node.target not in whole and \
                isinstance(candidate.get_submodule(node.target), channel_types(torch)):
            new.append(node.target)
        if not new:
            raise ConversionFailed(f"the pruned model no longer runs: {type(exc).__name__}: {first_line(exc)}"
                                   + (f" (at {node.name})" if node is not None else ""),
                                   hint="give the model as a state_dict with --model-class, or drop --prune-channels")
        for n in new:
            whole[n] = f"its channels reach {node.name}, which fails once they are pruned ({first_line(exc, 120)})"
    raise ConversionFailed(f"the pruned model still fails to run after keeping {len(whole)} layers whole")


def _as_graph(torch, model, args):
    """A module given as Python code, exported and lifted like a .pt2 (its reshapes can then be derived and a failing
    call located); None when torch.export cannot take it or the lifted graph computes something else."""
    try:
        with torch.no_grad():
            graph, _ = trainable_from_program(torch, torch.export.export(copy.deepcopy(model).eval(), args))
            same = all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in
                       zip(_tensors(torch, model(*args)), _tensors(torch, graph(*args)), strict=True))
    except Exception:  # noqa: BLE001 - the graph is a second try; the first try's error is the one reported
        return None
    for p in graph.parameters():
        p.requires_grad_(True)
    return graph if same else None


def _prune_module_or_graph(tp, torch, model, args, ratio: float, round_to: int | None) -> tuple[Any, int, dict[str, str]]:
    """The pruned copy, its groups and the layers kept whole: on ``model`` as it is, and when a module given as code
    fails to prune or to run pruned, on its exported graph instead."""
    whole = kept_whole(torch, model, args, ratio, round_to)
    try:
        return (*_pruned_copy(tp, torch, model, args, ratio, whole, round_to), whole)
    except ConversionFailed:
        graph = None if isinstance(model, torch.fx.GraphModule) else _as_graph(torch, model, args)
        if graph is None:
            raise
    whole = kept_whole(torch, graph, args, ratio, round_to)
    return (*_pruned_copy(tp, torch, graph, args, ratio, whole, round_to), whole)


def prune_channels(torch, model, args, ratio: float, functional: list[str],
                   round_to: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Torch-Pruning (DepGraph): remove ``ratio`` of each group of coupled channels, by group L2 magnitude, in every layer
    not kept whole. Returns the pruned model (a copy that runs on ``args``) and the record."""
    tp = _torch_pruning()
    before = {n: width(torch, m) for n, m in channel_layers(torch, model)}
    params0, _ = count_parameters(model)
    pruned, groups, whole = _prune_module_or_graph(tp, torch, model, args, ratio, round_to)
    if count_parameters(pruned)[0] == params0:
        raise BadInput(f"--prune-channels {ratio:g} removes no channel: each prunable group has too few channels for "
                       f"{ratio:g} of them to round to one ({groups} groups; widths {sorted(set(before.values()))})",
                       hint="give a larger ratio" + ("; kept whole: " + "; ".join(f"{n}: {r}" for n, r in whole.items())
                                                     if whole else ""))
    layers = [{"layer": n, "channels": [before[n], width(torch, m)]} for n, m in channel_layers(torch, pruned) if n in before]
    return pruned, {"method": "prune-channels", "ratio": ratio, "round_to": round_to,
                    "library": f"torch-pruning {version_of('torch-pruning')} (DepGraph, MetaPruner, group L2 magnitude, "
                               "per-group ratio)",
                    "layers_kept_whole": list(whole), "kept_whole": [{"layer": n, "reason": r} for n, r in whole.items()],
                    "functional": functional, "groups": groups, "layers": layers}
