"""TFLite/LiteRT on the MobileNetV2-sized PyTorch model (NCHW, through ONNX and onnx2tf):

1. LiteRT int8 p50 against fp32 at 2 threads, interleaved blocks in one run. Budget: int8 ≥ 1.4x faster.
2. Wall time of the whole `edgeconv convert MODEL.onnx --target tflite --precision int8 --calib …` (canonical ONNX step,
   checks, parity, bundle) against the same single int8 variant built by hand the way edgeconv builds it: onnx2tf to a
   SavedModel, then TFLiteConverter int8 with the same 32 calibration samples, in one child process, from a copy of the
   same canonical model.onnx. Interleaved, order alternating, ≥ 3 rounds each. Budget: ≤ 1.15x the hand-built pipeline.
   `onnx2tf -oiqt` (which builds seven variants) is timed once, as context only.

The latency budget is meant for the ARM boards LiteRT targets: `--remote user@pi [--remote-python …]` measures part 1
on such a device over SSH (through `edgeconv validate --remote`; results in tflite_bench_<host>.json).

`python bench/tflite_bench.py --hand-built-child WORKDIR` is the hand-built pipeline's child process (run by part 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, MODELS, ROOT, alternating, bundle, median, mobilenet, write_result

THREADS = 2
CALIB_COUNT = 32
CONVERT_ROUNDS = 5
BUDGET_VS_HAND_BUILT = 1.15
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf downloads it when it is missing
CHILD_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def onnx_model() -> Path:
    """The canonical model.onnx edgeconv made from the PyTorch model: the one both convert pipelines start from."""
    return bundle(mobilenet(".pt"), "mobilenetv2-torch-onnx") / "model.onnx"


def calibration() -> tuple[Path, Path]:
    """The same images twice: NCHW .npz for edgeconv and the hand-built pipeline, NHWC .npy for onnx2tf -cind."""
    npz, npy = MODELS / "mobilenet_calib.npz", MODELS / "mobilenet_calib_nhwc.npy"
    if not (npz.exists() and npy.exists()):
        MODELS.mkdir(parents=True, exist_ok=True)
        x = np.random.default_rng(0).uniform(-1, 1, (CALIB_COUNT, 3, 224, 224)).astype(np.float32)
        np.savez(npz, x=x)
        np.save(npy, x.transpose(0, 2, 3, 1))
    return npz, npy


def sample_file(nhwc: np.ndarray, dest: Path) -> None:
    """onnx2tf's 20x128x128x3 sample tensor (it would download one otherwise), nearest-resized from our own images."""
    rows, cols = np.arange(128) * nhwc.shape[1] // 128, np.arange(128) * nhwc.shape[2] // 128
    np.save(dest, np.resize(nhwc[:, rows][:, :, cols], (20, 128, 128, 3)).astype(np.float32))


def clock() -> tuple[float, float]:
    """Wall time, and CPU time of this process plus every finished child and grandchild (user + system). CPU time
    hardly moves when other jobs share the machine, so it backs up the noisy wall-time ratio."""
    import resource

    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + kids.ru_utime + kids.ru_stime


def since(start: tuple[float, float]) -> dict[str, float]:
    now = clock()
    return {"wall_s": now[0] - start[0], "cpu_s": now[1] - start[1]}


def time_edgeconv(onnx: Path, calib: Path, out: Path) -> dict[str, float]:
    """The whole `edgeconv convert` command (a fresh process, as a user runs it): wall and CPU seconds."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = clock()
    subprocess.run([*EDGECONV, "convert", str(onnx), "--target", "tflite", "--precision", "int8", "--calib", str(calib),
                    "--calib-count", str(CALIB_COUNT), "-o", str(out), "--force"], check=True, timeout=3600, cwd=ROOT,
                   capture_output=True)
    return since(t0)


def hand_built_child(work: Path) -> None:
    """The pipeline a user writes by hand: onnx2tf (same flags as edgeconv: signature defs, no onnxsim) to a SavedModel,
    then TFLiteConverter full int8 (float I/O) on the same calibration samples, transposed NHWC like onnx2tf's graph."""
    import onnx2tf

    onnx2tf.convert(input_onnx_file_path=str(work / "model.onnx"), output_folder_path=str(work / "saved_model"),
                    output_signaturedefs=True, not_use_onnxsim=True, verbosity="error")
    import tensorflow as tf

    with np.load(work / "calibration.npz") as z:
        x = z["x"]
    conv = tf.lite.TFLiteConverter.from_saved_model(str(work / "saved_model"))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x[i:i + 1].transpose(0, 2, 3, 1)] for i in range(len(x)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (work / "model.tflite").write_bytes(conv.convert())


def time_hand_built(onnx: Path, calib: Path, work: Path) -> dict[str, float]:
    """The hand-built pipeline end to end, wall and CPU seconds: its files laid out, then one child process (as edgeconv
    does)."""
    shutil.rmtree(work, ignore_errors=True)
    t0 = clock()
    work.mkdir(parents=True)
    shutil.copyfile(onnx, work / "model.onnx")  # onnx2tf rewrites its input in place
    shutil.copyfile(calib, work / "calibration.npz")
    with np.load(calib) as z:
        sample_file(z["x"].transpose(0, 2, 3, 1), work / ONNX2TF_SAMPLE_FILE)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--hand-built-child", str(work)], check=True, timeout=3600,
                   cwd=work, capture_output=True, env=CHILD_ENV)
    return since(t0)


def time_onnx2tf_oiqt(onnx: Path, npy: Path, work: Path) -> float:
    """`onnx2tf -oiqt` (seven variants) with the same calibration images: context, not the comparison."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copyfile(onnx, work / "model.onnx")
    sample_file(np.load(npy), work / ONNX2TF_SAMPLE_FILE)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from onnx2tf import main; main()", "-i", "model.onnx", "-o", "out", "-oiqt",
                    "-cind", "image", str(npy), "[[[[0.0,0.0,0.0]]]]", "[[[[1.0,1.0,1.0]]]]", "-n"],
                   check=True, timeout=3600, cwd=work, capture_output=True, env=CHILD_ENV)
    return time.perf_counter() - t0


def same_artifact(ours: Path, hand: Path, feed: dict[str, np.ndarray]) -> dict:
    """Evidence that the two pipelines built the same thing: sizes, and both models' outputs on one reference input."""
    from ai_edge_litert.interpreter import Interpreter

    outs = []
    for path in (ours, hand):
        it = Interpreter(model_path=str(path), num_threads=THREADS)
        runner = it.get_signature_runner()
        name = next(iter(runner.get_input_details()))
        outs.append(next(iter(runner(**{name: next(iter(feed.values())).transpose(0, 2, 3, 1)}).values())))
    return {"edgeconv_bytes": ours.stat().st_size, "hand_built_bytes": hand.stat().st_size,
            "max_abs_diff_outputs": float(np.abs(outs[0].astype(np.float64) - outs[1].astype(np.float64)).max())}


def convert_comparison(onnx: Path, npz: Path, npy: Path, rounds: int = CONVERT_ROUNDS, oiqt: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        tmp = Path(tmp)
        runs = alternating(lambda who: (time_edgeconv(onnx, npz, tmp / "ours") if who == "edgeconv"
                                      else time_hand_built(onnx, npz, tmp / "hand")), ("edgeconv", "hand_built"), rounds)
        with np.load(npz) as z:
            check = same_artifact(tmp / "ours" / "model.tflite", tmp / "hand" / "model.tflite", {"x": z["x"][:1]})
        oiqt_s = time_onnx2tf_oiqt(onnx, npy, tmp / "oiqt") if oiqt else None
    ours, hand = [r["edgeconv"]["wall_s"] for r in runs], [r["hand_built"]["wall_s"] for r in runs]
    per_round = [r["edgeconv"]["wall_s"] / r["hand_built"]["wall_s"] for r in runs]
    cpu_per_round = [r["edgeconv"]["cpu_s"] / r["hand_built"]["cpu_s"] for r in runs]
    ratio = median(per_round)
    return {"edgeconv_convert_s": ours, "hand_built_s": hand, "ratio_per_round": per_round, "ratio_median_of_rounds": ratio,
            "ratio_of_medians": median(ours) / median(hand),
            "edgeconv_cpu_s": [r["edgeconv"]["cpu_s"] for r in runs],
            "hand_built_cpu_s": [r["hand_built"]["cpu_s"] for r in runs],
            "cpu_ratio_per_round": cpu_per_round, "cpu_ratio_median_of_rounds": median(cpu_per_round),
            "budget": BUDGET_VS_HAND_BUILT, "ok": ratio <= BUDGET_VS_HAND_BUILT,
            "same_artifact": check, "context_onnx2tf_oiqt_s": oiqt_s,
            "context_edgeconv_vs_oiqt": (median(ours) / oiqt_s) if oiqt_s else None}


def tflite_bundles() -> dict[str, Path]:
    """The fp32 and int8 LiteRT bundles of the same ONNX, made once."""
    return {precision: bundle(onnx_model(), f"mobilenetv2-tflite-{precision}", "--target", "tflite", "--precision", precision,
                              *(["--calib", str(calibration()[0])] if precision == "int8" else []))
            for precision in ("fp32", "int8")}


def interleaved(p50_of, rounds: int) -> dict:
    """Short blocks, order alternating every round (fp32 first, then int8 first), and the speed-up taken as the
    median of per-round ratios: neighbouring blocks share the machine's state, so drift on a shared host cancels
    instead of landing on one precision. ``p50_of(precision)`` times one block and returns its p50 in ms."""
    out = {precision: {"p50s": []} for precision in ("fp32", "int8")}
    order = list(out)
    for i in range(rounds):
        for precision in order if i % 2 == 0 else order[::-1]:
            out[precision]["p50s"].append(p50_of(precision))
    for precision in order:
        p = sorted(out[precision]["p50s"])
        out[precision]["p50_ms"] = p[len(p) // 2]
    ratios = sorted(a / b for a, b in zip(out["fp32"]["p50s"], out["int8"]["p50s"]))
    out["speedup_per_round"] = ratios
    out["speedup_median_of_rounds"] = ratios[len(ratios) // 2]
    return out


def latency(rounds: int = 20, runs: int = 25) -> dict:
    """Here, on edgeconv's LiteRT runner."""
    from edgeconv.bundle import Bundle
    from edgeconv.runners import open_runner
    from edgeconv.stats import summarize_latency, time_runner

    runners, sizes = {}, {}
    bundles = tflite_bundles()
    for precision, b in bundles.items():
        art = Bundle.open(b).model_artifact
        runners[precision] = open_runner("litert", b / "model.tflite", threads=THREADS, options=art["runner_options"])
        sizes[precision] = art["bytes"]
    feed = {k: v[:1] for k, v in Bundle.open(bundles["fp32"]).reference()[0].items()}
    out = interleaved(lambda p: summarize_latency(time_runner(runners[p], feed, warmup=3, runs=runs))["p50_ms"], rounds)
    for precision, size in sizes.items():
        out[precision]["bytes"] = size
    out["runner_info"] = runners["int8"].info()
    return out


def latency_remote(remote: list[str], ssh_args: list[str], rounds: int = 10, runs: int = 100) -> dict:
    """The same interleaved comparison on a device over SSH (the budget is meant for ARM boards): each block is
    `edgeconv validate BUNDLE --remote …`, and the device's p50 is taken."""
    bundles = tflite_bundles()
    device = {}

    def p50_of(precision: str) -> float:
        r = subprocess.run([*EDGECONV, "validate", str(bundles[precision]), *[a for h in remote for a in ("--remote", h)],
                            *ssh_args, "--threads", str(THREADS), "--runs", str(runs), "--json"],
                           capture_output=True, text=True, timeout=3600, cwd=ROOT, check=False)
        dev = json.loads(r.stdout)["devices"][0]
        if not dev["ok"]:
            raise SystemExit(f"validate --remote failed on {dev['target']}: {dev.get('error')}")
        device.update(dev["report"]["measured_on"], **dev["report"]["device"])
        return dev["report"]["latency"]["p50_ms"]

    out = interleaved(p50_of, rounds)
    out["device"] = device
    return out


def main() -> dict:
    if sys.argv[1:2] == ["--hand-built-child"]:
        hand_built_child(Path(sys.argv[2]))
        return {"ok": True}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--remote", action="append", default=[], help="measure the LiteRT latency on this device (user@host[:port])")
    ap.add_argument("--remote-python", default=None, help="Python on the device")
    ap.add_argument("--identity", default=None, help="SSH private key")
    ap.add_argument("--ssh-option", action="append", default=[], help="passed to ssh as -o OPTION")
    ap.add_argument("--rounds", type=int, default=20, help="latency rounds per precision")
    ap.add_argument("--runs", type=int, default=25, help="timed runs per latency round")
    ap.add_argument("--convert-rounds", type=int, default=CONVERT_ROUNDS, help="convert rounds each (edgeconv, hand-built)")
    ap.add_argument("--no-oiqt", action="store_true", help="skip the `onnx2tf -oiqt` context figure")
    args = ap.parse_args()
    onnx = onnx_model()
    npz, npy = calibration()
    if args.remote:
        ssh_args = [*(["--remote-python", args.remote_python] if args.remote_python else []),
                    *(["--identity", args.identity] if args.identity else []),
                    *[a for o in args.ssh_option for a in ("--ssh-option", o)]]
        lat = latency_remote(args.remote, ssh_args)
    else:
        lat = latency(args.rounds, args.runs)
    speedup = lat["speedup_median_of_rounds"]
    conv = convert_comparison(onnx, npz, npy, args.convert_rounds, oiqt=not args.no_oiqt)
    result = {
        "method": f"MobileNetV2-sized PyTorch model via ONNX; latency: LiteRT {THREADS} threads, batch 1, "
                  + (f"on {', '.join(args.remote)} through `validate --remote`, 10 rounds of 100" if args.remote
                     else f"here, {args.rounds} rounds of {args.runs}")
                  + " runs per precision, order alternating, speed-up = median of per-round fp32/int8 p50 ratios; convert: wall "
                  f"time of the whole `edgeconv convert model.onnx --target tflite --precision int8 --calib` command vs the same "
                  f"int8 variant built by hand (onnx2tf -> SavedModel -> TFLiteConverter int8, one child process, a copy of the "
                  f"same canonical model.onnx), {args.convert_rounds} rounds each, order alternating, ratio = median of "
                  f"per-round wall-time ratios (CPU time of the process trees recorded beside it); {CALIB_COUNT} calibration "
                  f"images for both; `onnx2tf -oiqt` once, as context",
        "litert": lat, "int8_speedup_vs_fp32": speedup, "ok_int8_1_4x": speedup >= 1.4,
        "convert": conv, "convert_vs_hand_built": conv["ratio_median_of_rounds"], "ok_convert_1_15x": conv["ok"],
    }
    result["ok"] = result["ok_int8_1_4x"] and result["ok_convert_1_15x"]
    write_result("tflite_bench" + (f"_{args.remote[0].split('@')[-1].split(':')[0]}" if args.remote else ""), result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
