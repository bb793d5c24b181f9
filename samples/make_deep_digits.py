"""Train samples/deep_digits_model.py:DeepDigits on the digits training split to convergence (offline, about a minute
on two cores) and write ``deep_digits.pt2`` (torch.export).

    .venv/bin/python samples/make_deep_digits.py [--out samples] [--epochs 60]

Data: samples/digits_train.npz (made by samples/make_digits.py); never samples/digits_test.npz, the held-out set the
int8 guard is measured on. Training: AdamW, one-cycle learning rate, random shifts of up to one pixel; the log prints
the training loss and accuracy per 10 epochs and the held-out accuracy at the end."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
SEED = 0


def _shifted(x, gen):
    import torch

    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(x: np.ndarray, y: np.ndarray, epochs: int):
    import torch
    from deep_digits_model import DeepDigits

    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = DeepDigits()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        total = hits = 0.0
        for i in range(0, len(xt), 64):
            idx = perm[i: i + 64]
            opt.zero_grad()
            out = model(_shifted(xt[idx], gen))
            loss = torch.nn.functional.cross_entropy(out, yt[idx], label_smoothing=0.05)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            hits += float((out.argmax(1) == yt[idx]).sum())
        if epoch % 10 == 0 or epoch == epochs:
            print(f"epoch {epoch}: loss {total / len(xt):.4f}, train accuracy {hits / len(xt):.4f}")
    return model.eval()


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--epochs", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with np.load(HERE / "digits_train.npz") as z:
        x, y = z["x"], z["y"]
    model = train(x, y, args.epochs)
    with np.load(HERE / "digits_test.npz") as z, torch.no_grad():
        acc = float((model(torch.from_numpy(z["x"])).argmax(1).numpy() == z["y"]).mean())
    print(f"held-out accuracy {acc:.4f} on samples/digits_test.npz")
    example = torch.zeros(1, 1, 8, 8)
    torch.export.save(torch.export.export(model, (example,)), str(args.out / "deep_digits.pt2"))
    print(f"wrote {args.out / 'deep_digits.pt2'}")


if __name__ == "__main__":
    main()
