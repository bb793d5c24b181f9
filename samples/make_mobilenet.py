"""MobileNetV2-sized models for benchmarks, 224x224x3, random weights: keras.applications.MobileNetV2
(``--out x.keras``) or the PyTorch one in samples/mobilenet_torch.py saved as TorchScript (``--out x.pt``).

    .venv/bin/python samples/make_mobilenet.py [--out bench/models/mobilenetv2.keras | bench/models/mobilenetv2.pt]

Random weights (``weights=None``): nothing is downloaded. 3.5 M parameters, ~300 M MACs, like the real one;
logits out (no softmax) and BatchNorm statistics set from data, so outputs have a real scale.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def torch_model(out: Path) -> None:
    import json
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mobilenet_torch import MobileNetV2, with_data_statistics

    model = with_data_statistics(MobileNetV2())
    spec = {"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "dtype": "float32", "layout": "NCHW"}]}
    traced = torch.jit.trace(model, torch.zeros(1, 3, 224, 224))
    torch.jit.save(traced, str(out), _extra_files={"edgeconv.json": json.dumps(spec)})
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "bench" / "models" / "mobilenetv2.keras")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".pt":
        torch_model(args.out)
        return
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000, classifier_activation=None)
    # With freshly initialised BatchNorm statistics the activations of 50 random layers vanish (outputs ~1e-11),
    # which would make parity and int8 checks meaningless. One training-mode pass with momentum 0 sets every
    # BatchNorm's moving statistics to those of its real input, so activations keep their scale.
    import numpy as np

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(np.random.default_rng(0).uniform(-1, 1, (16, 224, 224, 3)).astype("float32"), training=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    print(f"wrote {args.out} ({model.count_params():,} parameters)")


if __name__ == "__main__":
    main()
