"""Train the digits samples (offline, seconds) and write every committed sample file.

    .venv/bin/python samples/make_digits.py [--out samples]
    .venv/bin/python samples/make_digits.py --train-only   # only digits_train.npz (deterministic; no training)

Data: sklearn.datasets.load_digits (ships with scikit-learn), 8x8 grayscale scaled to [0, 1], NCHW.
Writes:
  digits_cnn.pt          TorchScript, with the input spec stored as the extra file ``edgeconv.json``
  digits_cnn.pt2         torch.export program
  digits_cnn_state.pt    state_dict of samples/digits_model.py:DigitsCNN
  digits_keras.keras     Keras 3 model taking the same NCHW input (a Permute layer makes it NHWC inside)
  digits_test.npz        x (360, 1, 8, 8) float32, y (360,) int64 — held out, never trained on
  digits_calib.npz       x (200, 1, 8, 8) float32 — from the training split, for int8 calibration
  digits_train.npz       x (1437, 1, 8, 8) float32, y (1437,) int64 — the training split (fine-tuning in `compress`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SEED = 0


def digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=360, random_state=SEED, stratify=y)


def train_torch(x, y, out: Path) -> float:
    import torch
    from digits_model import DigitsCNN

    torch.manual_seed(SEED)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _epoch in range(15):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    example = torch.zeros(1, 1, 8, 8)
    spec = {"inputs": [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}]}
    scripted = torch.jit.trace(model, example)
    torch.jit.save(scripted, str(out / "digits_cnn.pt"), _extra_files={"edgeconv.json": json.dumps(spec)})
    torch.export.save(torch.export.export(model, (example,)), str(out / "digits_cnn.pt2"))
    torch.save(model.state_dict(), out / "digits_cnn_state.pt")
    return float(loss)


def train_keras(x, y, out: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    model = keras.Sequential(
        [
            keras.Input((1, 8, 8), name="x"),
            keras.layers.Permute((2, 3, 1)),  # NCHW in, NHWC inside: one data file serves every sample
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="digits_keras",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, epochs=15, batch_size=64, verbose=0, shuffle=True)
    model.save(out / "digits_keras.keras")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--train-only", action="store_true", help="write only digits_train.npz (the split is deterministic)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = digits_split()
    np.savez(args.out / "digits_train.npz", x=x_train, y=y_train)
    if args.train_only:
        print(f"wrote {args.out / 'digits_train.npz'}")
        return
    np.savez(args.out / "digits_test.npz", x=x_test, y=y_test)
    rng = np.random.default_rng(SEED)
    np.savez(args.out / "digits_calib.npz", x=x_train[rng.choice(len(x_train), 200, replace=False)])
    train_torch(x_train, y_train, args.out)
    train_keras(x_train, y_train, args.out)
    print(f"wrote digits samples to {args.out}")


if __name__ == "__main__":
    main()
