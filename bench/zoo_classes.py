"""Model classes for the zoo's state_dict models: the ``model.py`` a user hands over next to ``weights.pt``.

    edgeconv convert weights.pt --model-class bench/zoo_classes.py:TimmClassifier \\
        --model-kwargs '{"name": "resnet18", "num_classes": 10}'

A user's own file builds its architecture from a library (timm, torchvision) and, on this machine, first applies the
same import fix as the zoo's builders (:func:`vision_libs`), exactly as a user's ``model.py`` would carry its own
workaround. edgeconv itself never imports torchvision. No edgeconv import here: this file is the user's.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

ZOO_VISION = "pip install 'edgeconv[zoo-vision]'"


class MissingLibrary(ImportError):
    """timm or torchvision is not installed (CI installs only `edgeconv[zoo]`): the model is skipped, not failed."""

    def __init__(self, lib: str):
        super().__init__(f"{lib} not installed ({ZOO_VISION})")
        self.lib = lib


def vision_libs(required: bool = True) -> None:
    """Make ``import torchvision`` (and so timm, transformers) work on this machine.

    The only torchvision 0.28.0 wheel reachable here is the CUDA build: its ``_C`` extension cannot load next to
    the CPU torch (libc10_cuda.so missing), and torchvision then dies at import on two unguarded
    ``register_fake`` calls for ops that were never defined. Defining those two op schemas lets it import;
    classification models never call nms. Without torchvision: :class:`MissingLibrary` when ``required``, else
    nothing to do (transformers does not need it).
    """
    if importlib.util.find_spec("torchvision") is None:
        if required:
            raise MissingLibrary("torchvision")
        return
    try:
        import torchvision
        return
    except RuntimeError:
        pass
    import sys

    for mod in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[mod]
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:
            pass  # already defined by an earlier call
    import torchvision  # noqa: F401


def timm_lib():
    """``import timm`` after the torchvision fix (timm imports torchvision when present)."""
    if importlib.util.find_spec("timm") is None:
        raise MissingLibrary("timm")
    vision_libs(required=False)
    import timm

    return timm


class TimmClassifier(nn.Module):
    """A timm architecture with random weights; ``name`` is any ``timm.create_model`` name."""

    def __init__(self, name: str, num_classes: int = 10, **kwargs):
        super().__init__()
        self.net = timm_lib().create_model(name, pretrained=False, num_classes=num_classes, **kwargs)

    def forward(self, x):
        return self.net(x)


class TorchvisionClassifier(nn.Module):
    """A ``torchvision.models`` classifier with random weights (``weights=None``)."""

    def __init__(self, name: str, num_classes: int = 10, **kwargs):
        super().__init__()
        vision_libs()
        import torchvision

        self.net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)

    def forward(self, x):
        return self.net(x)
