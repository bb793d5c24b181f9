"""Coral Edge TPU target: full-integer TFLite, a preflight that predicts what the TPU will run, and the Edge TPU
compiler where it exists.

The compiler partitions a model once: everything from the first op it cannot map runs on the CPU, and it
still exits 0 when nothing maps. So before compiling, edgeconv walks the quantized model in execution order
against Coral's supported-ops table (data in edgeconv/device_data/edgetpu_ops.toml, with its source) and
predicts the split; after compiling, it parses the compiler's own op table and compares.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from edgeconv.core.text import shorten
from edgeconv.errors import ConversionFailed, PreflightError
from edgeconv.targets.base import Artifact, Conversion, TargetContext, TargetOptions
from edgeconv.targets.tflite import TfliteTarget, tflite_graph

TABLE = Path(__file__).resolve().parents[1] / "device_data" / "edgetpu_ops.toml"
COMPILER = "edgetpu_compiler"
COMPILE_TIMEOUT_S = 600
MAPPED = "Mapped to Edge TPU"
# ONNX ops with no Edge TPU counterpart after conversion (seen before any conversion work).
ONNX_NEVER_MAPPED = {"Erf", "Gelu", "Elu", "Selu", "Softplus", "Mish", "Sin", "Cos", "Exp", "Log", "Pow", "Sqrt", "Div",
                     "NonMaxSuppression", "TopK", "ArgMax", "ArgMin", "Where", "Einsum", "GatherND", "ScatterND", "Range",
                     "CumSum", "Round", "Floor", "Ceil", "LayerNormalization", "HardSwish", "HardSigmoid"}


def load_table() -> dict[str, Any]:
    return tomllib.loads(TABLE.read_text())


def op_macs(op: dict[str, Any], tensors: dict[int, dict[str, Any]]) -> int:
    out = tensors[op["outputs"][0]]["shape"] if op["outputs"] else []
    if op["op"] in ("CONV_2D", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV") and len(op["inputs"]) > 1:
        w = tensors[op["inputs"][1]]["shape"]
        if op["op"] == "CONV_2D":
            return int(np.prod(out)) * int(np.prod(w[1:]))
        if op["op"] == "DEPTHWISE_CONV_2D":
            return int(np.prod(out)) * int(np.prod(w[1:3]))
        if op["op"] == "FULLY_CONNECTED":
            return int(np.prod(out)) * int(w[-1])
        return int(np.prod(tensors[op["inputs"][2]]["shape"])) * int(np.prod(w[1:])) if len(op["inputs"]) > 2 else 0
    return 0


def _op_problem(op: dict[str, Any], tensors: dict[int, dict[str, Any]], table: dict[str, Any],
                activations: set[int]) -> str | None:
    name = op["op"]
    if name not in table["ops"]:
        return "operation not supported by the Edge TPU" + (" (it always runs on the CPU)"
                                                            if name in table.get("not_in_table", {}) else "")
    for i in op["inputs"] + op["outputs"]:
        t = tensors[i]
        if t["dtype"] not in ("int8", "uint8", "int32"):
            return f"tensor {t['name']!r} is {t['dtype']} (the Edge TPU runs 8-bit quantized tensors only)"
        if any(s < 0 for s in t["shape_signature"]):
            return f"tensor {t['name']!r} has a dynamic shape {t['shape_signature']}"
        rank_limit = table["requirements"]["max_mapped_rank"]
        # the rank rule is about activations; 4-D convolution filters are fine
        if i in activations and len(t["shape"]) > rank_limit and any(d > 1 for d in t["shape"][:-rank_limit]):
            return f"tensor {t['name']!r} {t['shape']} has more than {rank_limit} dimensions larger than 1"
    return None


def predict(path: Path, table: dict[str, Any] | None = None) -> dict[str, Any]:
    """The compiler's partition as the docs describe it: ops up to the first unmappable one go to the TPU."""
    table = table or load_table()
    ops, tensors, subgraphs, graph_inputs = tflite_graph(path)
    activations = {o for op in ops for o in op["outputs"]} | graph_inputs  # weights and biases are neither
    rows, split = [], None
    for i, op in enumerate(ops):
        problem = _op_problem(op, tensors, table, activations)
        if problem and split is None:
            split = i
        status = "Mapped to Edge TPU (predicted)" if split is None else ("not mapped: " + problem if problem else
                                                                        "runs on the CPU: after the split")
        rows.append({"index": i, "op": op["op"], "macs": op_macs(op, tensors), "tpu": split is None, "status": status})
    total_macs = sum(r["macs"] for r in rows) or 1
    tpu_ops = sum(r["tpu"] for r in rows)
    summary: dict[str, list] = {}
    for r in rows:
        summary.setdefault((r["op"], r["status"]), []).append(r)
    return {
        "ops": len(rows),
        "tpu_ops": tpu_ops,
        "tpu_share_ops": tpu_ops / max(len(rows), 1),
        "tpu_share_macs": sum(r["macs"] for r in rows if r["tpu"]) / total_macs,
        "split_at": None if split is None else {"index": split, "op": rows[split]["op"],
                                                "reason": _op_problem(ops[split], tensors, table, activations)},
        "subgraphs": subgraphs,
        "table": [{"op": op, "count": len(rs), "status": st} for (op, st), rs in summary.items()],
        "source": table["source"],
    }


def onnx_findings(proto) -> list[str]:
    """Ops of the ONNX graph that have no Edge TPU counterpart, named before any conversion work."""
    found: dict[str, list[str]] = {}
    for n in proto.graph.node:
        if n.op_type in ONNX_NEVER_MAPPED:
            found.setdefault(n.op_type, []).append(n.name or "(unnamed)")
    return [f"{op} ({', '.join(names[:3])}) has no Edge TPU op: the TPU part will end there" for op, names in found.items()]


# -- the compiler's own report ----------------------------------------------------------------------------
_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
_MEMORY = {
    "on_chip_used": r"On-chip memory used for caching model parameters:\s*([\d.]+\s*[KMG]?i?B)",
    "on_chip_remaining": r"On-chip memory remaining for caching model parameters:\s*([\d.]+\s*[KMG]?i?B)",
    "off_chip_used": r"Off-chip memory used for streaming uncached model parameters:\s*([\d.]+\s*[KMG]?i?B)",
}


def parse_compiler_log(text: str) -> dict[str, Any]:
    """The compiler's stdout / .log: version, memory lines, subgraphs, and the op table (op, count, status)."""
    out: dict[str, Any] = {"rows": []}
    m = re.search(r"Edge TPU Compiler version\s+(\S+)", text)
    out["compiler_version"] = m.group(1) if m else None
    for key, pat in _MEMORY.items():
        m = re.search(pat, text)
        out[key] = m.group(1) if m else None
    for key, pat in (("subgraphs", r"Number of Edge TPU subgraphs:\s*(\d+)"),
                     ("total_ops", r"Total number of operations:\s*(\d+)"),
                     ("tpu_ops_reported", r"Number of operations that will run on Edge TPU:\s*(\d+)"),
                     ("cpu_ops_reported", r"Number of operations that will run on CPU:\s*(\d+)")):
        m = re.search(pat, text)
        out[key] = int(m.group(1)) if m else None
    in_table = False
    for line in text.splitlines():
        if re.match(r"^Operator\s+Count\s+Status", line):
            in_table = True
            continue
        if in_table:
            m = _ROW.match(line)
            if m:
                out["rows"].append({"op": m.group(1), "count": int(m.group(2)), "status": m.group(3)})
            elif line.strip() and out["rows"]:
                in_table = False
    out["mapped_ops"] = sum(r["count"] for r in out["rows"] if r["status"] == MAPPED)
    out["table_ops"] = sum(r["count"] for r in out["rows"])
    out["success"] = "compiled successfully" in text
    return out


def compare_with_prediction(log: dict[str, Any], prediction: dict[str, Any]) -> str | None:
    if log["mapped_ops"] == prediction["tpu_ops"]:
        return None
    return (f"the compiler mapped {log['mapped_ops']} of {log['table_ops']} ops; edgeconv predicted {prediction['tpu_ops']} "
            f"of {prediction['ops']} (the compiler's table is the truth; the prediction follows Coral's published rules)")


def find_compiler(explicit: str | None = None) -> str | None:
    return explicit if explicit and Path(explicit).exists() else shutil.which(explicit or COMPILER)


def compile_model(compiler: str, tflite: Path, outdir: Path, prediction: dict[str, Any]) -> dict[str, Any]:
    """Run the compiler (argument list, timeout, check=True), keep its log, parse it, refuse zero mapped ops."""
    cmd = [compiler, "-s", "-o", str(outdir), str(tflite)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=True)
    except subprocess.CalledProcessError as exc:
        raise ConversionFailed(f"{Path(compiler).name} failed (exit {exc.returncode})",
                               details=shorten(exc.stdout + exc.stderr, 3000, keep="tail")) from exc
    except subprocess.TimeoutExpired as exc:
        raise ConversionFailed(f"{Path(compiler).name} did not finish in {COMPILE_TIMEOUT_S} s") from exc
    (outdir / "edgetpu_compiler.log").write_text(proc.stdout + proc.stderr)
    log = parse_compiler_log(proc.stdout)
    compiled = outdir / f"{tflite.stem}_edgetpu.tflite"
    if not compiled.exists():
        raise ConversionFailed(f"{Path(compiler).name} exited 0 but wrote no {compiled.name}",
                               details=shorten(proc.stdout, 3000, keep="tail"))
    if log["mapped_ops"] == 0:
        raise ConversionFailed("the Edge TPU compiler mapped no operation to the TPU (it exited 0 all the same): the model "
                               "would run entirely on the CPU", details=shorten(proc.stdout, 3000, keep="tail"))
    return {"compiled": True, "compiler": compiler, "command": cmd, "log": "edgetpu_compiler.log", "file": compiled.name,
            "report": log, "prediction_mismatch": compare_with_prediction(log, prediction)}


class CoralTarget(TfliteTarget):
    name = "coral"
    int16_activations = False  # the accelerator's compiler takes int8 only
    precisions = ("int8",)
    dynamic_batch = False
    needs_calibration = ("int8",)
    float_ops_reported = True  # the CPU runs them; the mapping report and --min-*-share decide
    static_shapes = True  # the accelerator's compiler maps no op whose tensors have a dynamic dimension

    def graph_problems(self, proto, profile, opts: TargetOptions) -> list[str]:
        # Unmappable ONNX ops do not stop the conversion (the CPU runs the rest); they are reported with the
        # prediction, and --min-tpu-share decides.
        self._onnx_findings = onnx_findings(proto)
        return super().graph_problems(proto, profile, opts)

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        conv = super().convert(onnx_path, workdir, profile, opts, ctx)
        model = next(a for a in conv.artifacts if a.role == "model")
        prediction = predict(workdir / model.file)
        prediction["onnx_findings"] = getattr(self, "_onnx_findings", [])
        if prediction["subgraphs"] > 1:
            raise PreflightError(f"the model has {prediction['subgraphs']} subgraphs; the Edge TPU compiles one")
        min_share = opts.extra.get("min_tpu_share")
        ok = prediction["tpu_ops"] > 0 if min_share is None else prediction["tpu_share_ops"] >= min_share
        conv.checks.append({
            "kind": "edgetpu-mapping", "ok": ok, "min_tpu_share": min_share, **prediction,
            "reason": None if ok else (f"predicted TPU share {prediction['tpu_share_ops']:.0%} of ops is below --min-tpu-share "
                                       f"{min_share}" if min_share is not None else "no op would map to the Edge TPU")
                                      + (f"; the split comes at {prediction['split_at']['op']}: "
                                         f"{prediction['split_at']['reason']}"
                                         if prediction["split_at"] else ""),
        })
        model.extra["host_emulation"] = True
        model.extra["host_emulation_note"] = ("int8 TFLite on this host's CPU through LiteRT; the Edge TPU's numbers match "
                                              "closely, its latency does not")
        compiler = find_compiler(opts.extra.get("compiler"))
        if compiler is None:
            model.extra["device_build"] = {
                "format": "edgetpu-compile", "compiled": False, "built": False,
                "reason": "edgetpu_compiler is not on PATH (Google ships it for x86-64 Debian/Ubuntu from its own apt "
                          "repository)",
                "command": f"edgetpu_compiler -s -o BUNDLE BUNDLE/{model.file}  (or: edgeconv build BUNDLE where it is "
                           "installed)",
                "tflite": model.file,
            }
            return conv
        record = compile_model(compiler, workdir / model.file, workdir, prediction)
        model.extra["device_build"] = {"format": "edgetpu-compile", "built": True, "tflite": model.file, **record}
        conv.artifacts.append(Artifact(record["file"], "edgetpu-model", "int8", "litert",
                                       {"runner_options": model.extra["runner_options"]}))
        conv.artifacts.append(Artifact(record["log"], "log", "int8"))
        return conv
