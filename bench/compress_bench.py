"""Does `edgeconv compress --prune-channels 0.3` make a MobileNetV2-sized PyTorch model faster where it runs?

The source is samples/mobilenet_torch.py's MobileNetV2 (3.5 M parameters, ~300 M MACs, BatchNorm statistics from data,
random weights: nothing is downloaded) saved as a torch.export program. `edgeconv compress SOURCE -o PRUNED
--prune-channels 0.3 --json` runs as a user runs it (its report gives the MACs of both). Then both models are converted
by `edgeconv convert` (ONNX fp32; LiteRT int8 calibrated on bench/models/mobilenet_calib.npz) and timed in one run,
interleaved, the order alternating every round:

- ONNX Runtime fp32: the bare ONNX Runtime script of bench/common.py (its own process, 2 threads) on each model.onnx,
  the same pruning with `--round-to 1` (exact widths) timed in the same rounds as a third model;
- LiteRT int8: `edgeconv profile BUNDLE --batch-sizes 1 --threads 2 --json` on each tflite bundle.

Budgets (issue 17): MACs <= 0.6x, ORT fp32 p50 >= 1.4x faster (median of per-round ratios), LiteRT int8 of the pruned
model faster than of the original. Accuracy is not measured here (random weights): the digits tests measure it.

    .venv/bin/python bench/compress_bench.py [ROUNDS]

With ``--zoo [NAME_GLOB]`` it runs instead `edgeconv compress --prune-channels 0.3` and `--low-rank 0.9` on each of the
zoo's PyTorch models (.pt2 and state_dict + class, bench/zoo_models.py) and records per model: ran or refused with the
reason, MACs ratio, ONNX Runtime fp32 p50 ratio (compress's report, interleaved) and ONNX parity of the result, in
bench/results/compress.json.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    EDGECONV,
    MODELS,
    ROOT,
    _hash_files,
    _keyed,
    alternating,
    bare_ort,
    bundle,
    median,
    timed_json,
    splice_readme,
    versions,
    write_result,
)

from edgeconv.core.text import shorten

RATIO = 0.3
MAX_MACS = 0.6
MIN_ORT_SPEEDUP = 1.4
THREADS = 2
CALIB = MODELS / "mobilenet_calib.npz"  # x (32, 3, 224, 224) float32, NCHW


def mobilenet_pt2() -> Path:
    """The MobileNetV2-sized model as a torch.export program in bench/models/, remade when the script that defines it or
    torch changes."""
    maker = ROOT / "samples" / "mobilenet_torch.py"
    key = hashlib.sha256((_hash_files([maker, Path(__file__).resolve()], ROOT)
                          + json.dumps(versions(("torch",)))).encode()).hexdigest()[:12]
    out = _keyed("mobilenetv2-export", key, ".pt2")
    if not out.exists():
        MODELS.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp.pt2")
        code = ("import sys, torch; sys.path.insert(0, 'samples'); "
                "from mobilenet_torch import MobileNetV2, with_data_statistics; "
                "m = with_data_statistics(MobileNetV2()); "
                f"torch.export.save(torch.export.export(m, (torch.zeros(1, 3, 224, 224),)), {str(tmp)!r})")
        r = subprocess.run([sys.executable, "-c", code], timeout=600, cwd=ROOT, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise SystemExit(f"exporting {maker.name}'s MobileNetV2 to {tmp.name} failed (exit {r.returncode}):\n"
                             + (r.stderr or r.stdout)[-3000:])
        tmp.replace(out)
    return out


def compress(source: Path, out: Path, *extra: str) -> dict:
    """`edgeconv compress SOURCE -o OUT --prune-channels 0.3 --json`: the report."""
    cmd = [*EDGECONV, "compress", str(source), "-o", str(out), "--prune-channels", str(RATIO), "--threads", str(THREADS),
           "--runs", "40", "--force", "--json", *extra]
    wall, report = timed_json(cmd)
    return {"command": " ".join(["edgeconv", *cmd[3:]]), "wall_s": wall, "report": report}


ORT_METHOD = (f"bare ONNX Runtime script per model and round (own process, {THREADS} intra-op threads, CPU provider, "
              "10 warm-up + 100 timed runs of session.run, batch 1), every model in the same rounds, order reversed each "
              "round; speedup = median of per-round original/compressed p50 ratios")


def ort_fp32(bundles: dict[str, Path], rounds: int) -> list[dict]:
    """The bare ONNX Runtime script on each bundle's model.onnx, all of them in the same rounds, the order reversed each
    round (so every compressed model is timed next to the same original runs). One ``{label: p50_ms}`` per round."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        import numpy as np

        with np.load(CALIB) as z:
            x = z["x"][:1]
        cmds = {}
        for label, b in bundles.items():
            manifest = json.loads((b / "manifest.json").read_text())
            feed = Path(tmp) / f"{label}.npz"
            np.savez(feed, **{manifest["inputs"][0]["name"]: x})
            cmds[label] = bare_ort(b / "model.onnx", feed, THREADS, 10, 100)
        return alternating(lambda label: timed_json(cmds[label])[1]["p50_ms"], tuple(bundles), rounds)


def ort_speedup(rows: list[dict], label: str) -> dict:
    """Original vs ``label`` from the rounds of :func:`ort_fp32`."""
    speedups = [r["original"] / r[label] for r in rows]
    return {"method": ORT_METHOD, "rounds": [{k: r[k] for k in ("original", label)} for r in rows],
            "original_p50_ms": median([r["original"] for r in rows]), f"{label}_p50_ms": median([r[label] for r in rows]),
            "speedup_per_round": speedups, "speedup": median(speedups)}


def litert_int8(original: Path, pruned: Path, rounds: int) -> dict:
    """`edgeconv profile BUNDLE --batch-sizes 1` on each LiteRT int8 bundle (copies: profile writes its report), order
    alternating each round."""
    with tempfile.TemporaryDirectory(prefix="edgeconv-bench-") as tmp:
        copies = {}
        for label, b in (("original", original), ("pruned", pruned)):
            copies[label] = Path(tmp) / label
            shutil.copytree(b, copies[label])

        def measure(label: str) -> float:
            cmd = [*EDGECONV, "profile", str(copies[label]), "--batch-sizes", "1", "--runs", "50", "--warmup", "5",
                   "--threads", str(THREADS), "--json"]
            return timed_json(cmd)[1]["rows"][0]["p50_ms"]

        rows = alternating(measure, ("original", "pruned"), rounds)
    speedups = [r["original"] / r["pruned"] for r in rows]
    return {"method": f"`edgeconv profile BUNDLE --batch-sizes 1 --runs 50 --warmup 5 --threads {THREADS} --json` (LiteRT "
                      "runner) per model and round, order alternating; speedup = median of per-round ratios",
            "rounds": rows, "original_p50_ms": median([r["original"] for r in rows]),
            "pruned_p50_ms": median([r["pruned"] for r in rows]), "speedup_per_round": speedups, "speedup": median(speedups)}


def main() -> dict:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 6  # smoke runs: python bench/compress_bench.py 2
    source = mobilenet_pt2()
    pruned = MODELS / "mobilenetv2-export-pruned.pt2"
    comp = compress(source, pruned)
    rep = comp["report"]
    # Secondary: the same pruning without rounding widths to multiples of 8 (--round-to 1): ONNX Runtime's x86
    # convolutions work in blocks of 8 channels. Timed exactly as the headline, in the same rounds.
    exact_pt2 = MODELS / "mobilenetv2-export-round-to-1.pt2"
    exact = compress(source, exact_pt2, "--round-to", "1")["report"]
    onnx = {label: bundle(p, f"mobilenetv2-{label.replace('_', '-')}-onnx", "--target", "onnx")
            for label, p in (("original", source), ("pruned", pruned), ("round_to_1", exact_pt2))}
    tfl = {label: bundle(p, f"mobilenetv2-{label}-tflite-int8", "--target", "tflite", "--precision", "int8",
                         "--calib", str(CALIB))
           for label, p in (("original", source), ("pruned", pruned))}
    ort_rows = ort_fp32(onnx, rounds)
    ort, ort_exact = ort_speedup(ort_rows, "pruned"), ort_speedup(ort_rows, "round_to_1")
    lite = litert_int8(tfl["original"], tfl["pruned"], rounds)
    macs = rep["ratios"]["macs"]
    checks = {"macs_ratio": {"value": macs, "budget": f"<= {MAX_MACS}", "ok": macs <= MAX_MACS},
              "ort_fp32_speedup": {"value": ort["speedup"], "budget": f">= {MIN_ORT_SPEEDUP}",
                                   "ok": ort["speedup"] >= MIN_ORT_SPEEDUP},
              "litert_int8_speedup": {"value": lite["speedup"], "budget": "> 1.0", "ok": lite["speedup"] > 1.0}}
    result = {
        "model": "samples/mobilenet_torch.py MobileNetV2 (random weights, BatchNorm statistics from data), torch.export .pt2, "
                 "1x3x224x224",
        "compress": {"command": comp["command"], "wall_s": comp["wall_s"], "before": rep["before"], "after": rep["after"],
                     "ratios": rep["ratios"], "round_to": rep["methods"][0].get("round_to"),
                     "groups": rep["methods"][0]["groups"], "compress_own_latency": rep["latency"]},
        "onnxruntime_fp32": ort, "litert_int8": lite,
        "round_to_1": {"what": "the same --prune-channels 0.3 with --round-to 1 (exact ratio, widths not multiples of 8); "
                               "ONNX Runtime fp32 p50 timed as the headline (bare script, the same rounds)",
                       "macs_ratio": exact["ratios"]["macs"], "groups": exact["methods"][0]["groups"],
                       "onnxruntime_fp32": ort_exact},
        "checks": checks, "ok": all(c["ok"] for c in checks.values()),
    }
    write_result("compress_bench", result)
    return result


# -- the zoo's PyTorch models (issue 32): python bench/compress_bench.py --zoo [NAME_GLOB] -----------------------------
ZOO_FORMATS = ("pt2", "state_dict")
ZOO_METHODS = {"prune-channels": ["--prune-channels", "0.3"], "low-rank": ["--low-rank", "0.9"]}


def _shape_args(folder: Path, built) -> list[str]:
    """``--input-shape NAME=AxB…`` from the model's own sample (a state_dict keeps no shapes)."""
    import numpy as np

    sample = folder / built.sample
    if sample.suffix == ".npy":
        return ["--input-shape", "x".join(str(d) for d in np.load(sample).shape)]
    with np.load(sample) as z:
        return [a for k in z.files for a in ("--input-shape", f"{k}=" + "x".join(str(d) for d in z[k].shape))]


def _run_json(cmd: list[str], timeout: float = 900) -> tuple[int | None, dict]:
    """``cmd``'s exit code and JSON; a command past ``timeout`` is killed and recorded (exit None), not the bench's end.
    Run the whole bench under the heavy-run lock (`flock /tmp/edgeconv-heavy.lock python bench/compress_bench.py …`):
    a lock taken per command would count its wait against the timeout."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    except subprocess.TimeoutExpired:
        return None, {"error": {"message": f"timed out after {timeout:.0f} s"}}
    try:
        return r.returncode, json.loads(r.stdout)
    except json.JSONDecodeError:
        return r.returncode, {"error": {"message": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]}}


def zoo_cell(folder: Path, built, method: str, work: Path) -> dict:
    """`edgeconv compress` of one zoo model by one method (its report times source and result on ONNX Runtime,
    interleaved), then `edgeconv convert RESULT --target onnx` (parity of the ONNX artifact against the result)."""
    out = work / f"{folder.name}-{method}.pt2"
    model_args = [str(folder / built.model), *built.args]
    shapes = _shape_args(folder, built) if folder.joinpath(built.model).suffix != ".pt2" else []
    code, rep = _run_json([*EDGECONV, "compress", *model_args, *shapes, "-o", str(out), *ZOO_METHODS[method], "--runs",
                           "100", "--threads", str(THREADS), "--force", "--json"])
    if code != 0:
        err = rep.get("error", {})
        return {"ran": False, "exit": code, "reason": err.get("message") if isinstance(err, dict) else str(err)}
    m = rep["methods"][0]
    cell = {"ran": True, "macs_ratio": rep["ratios"]["macs"], "ort_p50_ratio": rep["ratios"]["p50_ms"],
            "p50_ms": [rep["before"]["p50_ms"], rep["after"]["p50_ms"]], "parameters_ratio": rep["ratios"]["parameters"],
            "kept_whole": m.get("kept_whole"), "kept": m.get("kept"), "undone": m.get("undone"), "notes": rep["notes"]}
    code, conv = _run_json([*EDGECONV, "convert", str(out), "--target", "onnx", "-o", str(work / f"{out.stem}-onnx"),
                            "--force", "--json"])
    parity = [c for c in conv.get("manifest", {}).get("checks", []) if c.get("kind") == "parity"]
    cell["onnx_parity"] = bool(code == 0 and parity and all(c["ok"] for c in parity))
    if code != 0:
        cell["convert_error"] = conv.get("error")
    return cell


def zoo_main(pattern: str) -> dict:
    """The zoo's PyTorch models whose names match one of the comma-separated globs of ``pattern``."""
    import fnmatch

    from zoo import build_model, corpus_key
    from zoo_models import MODELS as ZOO

    key, rows = corpus_key(), {}
    with tempfile.TemporaryDirectory(prefix="edgeconv-compress-zoo-") as tmp:
        patterns = pattern.split(",")
        for m in [m for m in ZOO if m.fmt in ZOO_FORMATS and any(fnmatch.fnmatch(m.name, p) for p in patterns)]:
            folder, built, why = build_model(m, key, rebuild=False)
            if built is None:
                rows[m.name] = {"format": m.fmt, "built": False, "reason": why}
                continue
            rows[m.name] = {"format": m.fmt, "built": True,
                            **{method: zoo_cell(folder, built, method, Path(tmp)) for method in ZOO_METHODS}}
            print(m.name, json.dumps(rows[m.name])[:400], flush=True)
            _zoo_result(rows)  # after every model: a long run stopped early keeps what it measured
    return _zoo_result(rows)


def _zoo_result(rows: dict) -> dict:
    pruned = [r["prune-channels"] for r in rows.values() if r.get("built")]
    result = {"what": "edgeconv compress on the zoo's PyTorch models (.pt2 and state_dict + class): ran or refused with "
                      "the reason, MACs ratio, ONNX Runtime fp32 p50 ratio (compress's own report: source and result "
                      f"interleaved, 4 rounds, 100 runs each, {THREADS} threads), and whether the result converts to onnx "
                      "with parity against itself",
              "models": rows,
              "summary": {"built": len(pruned), "prune_ran": sum(c["ran"] for c in pruned),
                          "prune_onnx_parity": sum(bool(c.get("onnx_parity")) for c in pruned),
                          "prune_slower": [n for n, r in rows.items() if r.get("built") and r["prune-channels"]["ran"]
                                           and r["prune-channels"]["ort_p50_ratio"] > 1.05],
                          "low_rank_slower": [n for n, r in rows.items() if r.get("built") and r["low-rank"]["ran"]
                                              and r["low-rank"]["ort_p50_ratio"] > 1.05]}}
    write_result("compress", result)
    return result


ZOO_BEGIN, ZOO_END = "<!-- compress-zoo:begin -->", "<!-- compress-zoo:end -->"


def _zoo_cell_text(c: dict) -> str:
    if not c.get("ran"):
        why = shorten(re.sub(r"\s+", " ", str(c.get("reason") or "")).replace("|", "/"), 90)
        status = {2: "refused", 3: "refused", None: "timeout"}.get(c.get("exit"), "failed")
        return f"{status} {c.get('exit') or ''}: {why}"
    parity = "onnx parity ✅" if c.get("onnx_parity") else "onnx parity **missed**"
    return f"MACs {c['macs_ratio']:.2f}×, ORT p50 {c['ort_p50_ratio']:.2f}×, {parity}"


def zoo_markdown(result: dict) -> str:
    """The compress column of the zoo: one row per PyTorch model, generated from compress.json."""
    s = result["summary"]
    lines = [f"Generated by `python bench/compress_bench.py --zoo` ({s['prune_ran']} of {s['built']} models pruned, "
             f"{s['prune_onnx_parity']} with ONNX parity; slower than the source: prune {len(s['prune_slower'])}, low-rank "
             f"{len(s['low_rank_slower'])}). Do not edit by hand.", "",
             "| model | format | `--prune-channels 0.3` | `--low-rank 0.9` |", "|---|---|---|---|"]
    for name, r in result["models"].items():
        if r.get("built"):
            lines.append(f"| {name} | {r['format']} | {_zoo_cell_text(r['prune-channels'])} | "
                         f"{_zoo_cell_text(r['low-rank'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--zoo":
        done = zoo_main(sys.argv[2] if len(sys.argv) > 2 and not sys.argv[2].startswith("--") else "*")
        if "--update-readme" in sys.argv:
            splice_readme(zoo_markdown(done), ZOO_BEGIN, ZOO_END)
        sys.exit(0)
    sys.exit(0 if main()["ok"] else 1)
