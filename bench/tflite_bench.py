"""TFLite/LiteRT on the MobileNetV2-sized PyTorch model (NCHW, through ONNX and onnx2tf):

1. LiteRT int8 p50 against fp32 at 2 threads, interleaved blocks in one run. Budget: int8 ≥ 1.4x faster.
2. Wall time of `edgeconv convert --target tflite --precision int8` against `onnx2tf -oiqt` (which builds
   seven variants) with the same calibration data on the same ONNX, interleaved. Budget: ≤ 0.6x.

The latency budget is meant for the ARM boards LiteRT targets: `--remote user@pi [--remote-python …]` measures part 1
on such a device over SSH (through `edgeconv validate --remote`; results in tflite_bench_<host>.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import EDGECONV, MODELS, ROOT, bundle, mobilenet, write_result  # noqa: E402

THREADS = 2
CALIB_COUNT = 32


def onnx_model() -> Path:
    return bundle(mobilenet(".pt"), "mobilenetv2-torch-onnx") / "model.onnx"


def calibration() -> tuple[Path, Path]:
    """The same images twice: NCHW .npz for edgeconv, NHWC .npy for onnx2tf -cind."""
    npz, npy = MODELS / "mobilenet_calib.npz", MODELS / "mobilenet_calib_nhwc.npy"
    if not npz.exists():
        x = np.random.default_rng(0).uniform(-1, 1, (CALIB_COUNT, 3, 224, 224)).astype(np.float32)
        np.savez(npz, x=x)
        np.save(npy, x.transpose(0, 2, 3, 1))
    return npz, npy


def time_edgeconv(onnx: Path, calib: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([*EDGECONV, "convert", str(onnx), "--target", "tflite", "--precision", "int8", "--calib", str(calib),
                    "--calib-count", str(CALIB_COUNT), "-o", str(out), "--force"], check=True, timeout=3600, cwd=ROOT,
                   capture_output=True)
    return time.perf_counter() - t0


def time_onnx2tf(onnx: Path, npy: Path, work: Path) -> float:
    from edgeconv.targets.tflite import ONNX2TF_SAMPLE_FILE

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copyfile(onnx, work / "model.onnx")
    # offline, onnx2tf needs its sample file in the working directory (it would download it otherwise)
    np.save(work / ONNX2TF_SAMPLE_FILE, np.resize(np.load(npy)[:, ::2, ::2], (20, 128, 128, 3)).astype(np.float32))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from onnx2tf import main; main()", "-i", "model.onnx", "-o", "out", "-oiqt",
                    "-cind", "image", str(npy), "[[[[0.0,0.0,0.0]]]]", "[[[[1.0,1.0,1.0]]]]", "-n"],
                   check=True, timeout=3600, cwd=work, capture_output=True)
    return time.perf_counter() - t0


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
    for precision, b in tflite_bundles().items():
        art = Bundle.open(b).model_artifact
        runners[precision] = open_runner("litert", b / "model.tflite", threads=THREADS, options=art["runner_options"])
        sizes[precision] = art["bytes"]
    feed = {k: v[:1] for k, v in Bundle.open(MODELS / "mobilenetv2-tflite-fp32").reference()[0].items()}
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--remote", action="append", default=[], help="measure the LiteRT latency on this device (user@host[:port])")
    ap.add_argument("--remote-python", default=None, help="Python on the device")
    ap.add_argument("--identity", default=None, help="SSH private key")
    ap.add_argument("--ssh-option", action="append", default=[], help="passed to ssh as -o OPTION")
    args = ap.parse_args()
    onnx = onnx_model()
    npz, npy = calibration()
    if args.remote:
        ssh_args = [*(["--remote-python", args.remote_python] if args.remote_python else []),
                    *(["--identity", args.identity] if args.identity else []), *[a for o in args.ssh_option for a in ("--ssh-option", o)]]
        lat = latency_remote(args.remote, ssh_args)
    else:
        lat = latency()
    speedup = lat["speedup_median_of_rounds"]
    ours, theirs = [], []
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        for i in range(2):
            ours.append(time_edgeconv(onnx, npz, Path(tmp) / f"ours{i}"))
            theirs.append(time_onnx2tf(onnx, npy, Path(tmp) / f"onnx2tf{i}"))
    ratio = min(ours) / min(theirs)
    result = {
        "method": f"MobileNetV2-sized PyTorch model via ONNX; latency: LiteRT {THREADS} threads, batch 1, "
                  + (f"on {', '.join(args.remote)} through `validate --remote`, 10 rounds of 100" if args.remote else "here, 20 rounds of 25")
                  + " runs per precision, order alternating, speed-up = median of per-round fp32/int8 p50 ratios; convert: "
                  f"wall time, 2 interleaved rounds each, best of 2, "
                  f"{CALIB_COUNT} calibration images for both",
        "litert": lat, "int8_speedup_vs_fp32": speedup, "ok_int8_1_4x": speedup >= 1.4,
        "convert_int8_s": ours, "onnx2tf_oiqt_s": theirs, "convert_vs_onnx2tf": ratio, "ok_convert_0_6x": ratio <= 0.6,
    }
    result["ok"] = result["ok_int8_1_4x"] and result["ok_convert_0_6x"]
    write_result("tflite_bench" + (f"_{args.remote[0].split('@')[-1].split(':')[0]}" if args.remote else ""), result)
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
