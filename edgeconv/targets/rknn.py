"""Rockchip RKNN target (RK3588, RK3576, RK3566/RK3568, RV1106): a ``.rknn`` built by rknn-toolkit2 in its own venv.

rknn-toolkit2's pins clash with edgeconv's, so it lives in the ``rknn`` toolchain (``edgeconv toolchain install
rknn``; docs/architecture.md, "NPU toolchains") and its work runs there as a job (edgeconv/toolchains/jobs/rknn_job.py):
load the canonical ONNX, build (int8 calibrated on the same samples every int8 target gets, or fp16), export the
``.rknn`` and start the simulator in that same process, the only one that can run the model on a host. The job
simulates the reference inputs, writes their outputs beside the artifact and stays up while convert checks the
artifact (``--data`` included); every sample it answers is stored with the artifact's sha256
(edgeconv/runners/rknn.py). On the board, RKNNLite runs the ``.rknn`` on the NPU.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv import toolchains
from edgeconv.errors import ConversionFailed, PreflightError
from edgeconv.runners.rknn import SIM_LABEL, STORE_ARRAYS, STORE_DIR, STORE_INDEX, sample_keys, store_paths, write_store
from edgeconv.specs import sha256_of
from edgeconv.targets.base import Artifact, Conversion, Target, TargetContext, TargetOptions

TOOLCHAIN = "rknn"
JOB = "rknn_job.py"
JOB_TIMEOUT_S = 1800
# the build job stays up this long without a request while convert checks the artifact (its checks follow at once)
SIM_IDLE_S = 600
MODEL_FILE = "model.rknn"
LATENCY_NOTE = ("the NPU's latency is measured on the board (RKNNLite; rknn-toolkit2's eval_perf needs a board too); here "
                "only the simulator's recorded time per inference on this host")
ANALYSIS_TXT, ANALYSIS_JSON, ANALYSIS_NPZ = "accuracy_analysis.txt", "accuracy_analysis.json", "accuracy_analysis.npz"
ANALYSIS_WHAT = ("rknn-toolkit2 accuracy_analysis on the first reference sample: per layer, the simulator against the fp32 "
                 "model (cosine, euclidean), accumulated (entire) and of the layer alone (single)")
# ops that pass their input's values on unchanged (the range of what a layer reads is that of the tensor before them)
MOVES_VALUES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "MaxPool", "Relu", "Dropout"}
# ONNX ops rknn-toolkit2 2.5.0 cannot place on any RKNN NPU (its op-support list); refused before building
NEVER_ON_NPU = {"Loop", "Scan", "If", "NonMaxSuppression", "TopK", "Unique", "STFT", "DFT", "RNN", "SequenceAt",
                "SequenceConstruct", "StringNormalizer"}


class RknnTarget(Target):
    name = "rknn"
    precisions = ("int8", "fp16")
    dynamic_batch = False
    needs_calibration = ("int8",)
    static_shapes = True
    float_fallback = True  # int8: hybrid quantization keeps the int8 guard's float layers in float16 (rknn_job.hybrid)

    def check_options(self, profile, opts: TargetOptions) -> None:
        super().check_options(profile, opts)
        toolchains.require(TOOLCHAIN)  # exit 3 with the install command, before any export

    def graph_problems(self, proto, profile, opts: TargetOptions) -> list[str]:
        problems = super().graph_problems(proto, profile, opts)
        ops = sorted({n.op_type for n in proto.graph.node} & NEVER_ON_NPU)
        if ops:
            problems.append(f"rknn-toolkit2 has no {profile.name} NPU op for {', '.join(ops)}")
        for value in proto.graph.input:
            dims = value.type.tensor_type.shape.dim
            if any(not d.HasField("dim_value") for d in dims):
                problems.append(f"input {value.name!r} has an open dimension: the RKNN NPU builds static shapes "
                                "(give --input-shape)")
            elif dims and dims[0].dim_value != 1:
                problems.append(f"input {value.name!r} has batch {dims[0].dim_value}: the .rknn is built for batch 1")
        return problems

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        tc = toolchains.require(TOOLCHAIN)
        scratch = Path(tempfile.mkdtemp(prefix="edgeconv-rknn-"))
        platform = profile.raw.get("device", {}).get("target_platform", profile.name)
        inputs = [{"name": n, "shape": [int(d) for d in s], "dtype": "float32", "layout": ctx.layouts.get(n)}
                  for n, s in ctx.input_shapes.items()]
        model_for_rknn, folded = onnx_for_rknn(onnx_path, scratch)
        request = {"onnx": str(model_for_rknn), "rknn": str((workdir / MODEL_FILE).resolve()), "platform": platform,
                   "precision": opts.precision, "inputs": inputs, "feeds": str(scratch / "feeds.npz"),
                   "outputs": str(scratch / "outputs.npz")}
        if opts.precision == "int8":
            request["dataset"] = str(write_dataset(ctx.calibration, inputs, scratch))
            request["analysis"] = analysis_request(ctx.reference_inputs, inputs, scratch)
            if ctx.float_layers:
                request["float_layers"] = float_layers(onnx_path, ctx.float_layers)
        feed = {s["name"]: np.asarray(ctx.reference_inputs[s["name"]], dtype=np.float32) for s in inputs}
        np.savez(scratch / "feeds.npz", **feed)
        toolchains.close_all(JOB)  # an earlier conversion's simulator in this process: its checks are over
        try:
            server = toolchains.start_job(tc, JOB, request, workdir=scratch, timeout=JOB_TIMEOUT_S,
                                          key=str((workdir / MODEL_FILE).resolve()), idle_timeout=SIM_IDLE_S,
                                          remove_workdir=True)
        except ConversionFailed as exc:
            kept = ctx.failed_build_dir / "rknn"
            ctx.failed_build_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(scratch, kept, dirs_exist_ok=True)  # the job's log, its request
            shutil.rmtree(scratch, ignore_errors=True)
            raise ConversionFailed(exc.message.replace(str(scratch), str(kept)), details=exc.details,
                                   hint=f"the job's files are kept in {kept}") from exc
        resp = server.response
        artifact = workdir / MODEL_FILE
        if not artifact.exists() or sha256_of(artifact) != resp["rknn_sha256"]:
            raise ConversionFailed(f"the rknn job reported {MODEL_FILE} (sha256 {resp['rknn_sha256'][:12]}…) but the file "
                                   "in the bundle is not that one")
        with np.load(resp["outputs"]) as f:
            rows = [f[f"out{j}"] for j in range(len(ctx.output_shapes))]
        index = {"artifact": MODEL_FILE, "artifact_sha256": resp["rknn_sha256"], "made_by": SIM_LABEL,
                 "toolkit_version": resp["versions"].get("rknn-toolkit2"), "precision": opts.precision,
                 "platform": platform, "sim_seconds": resp["sim_seconds"], "inputs": inputs,
                 "outputs": [{"name": n, "shape": [int(d) if isinstance(d, int) else None for d in s], "dtype": "float32"}
                             for n, s in ctx.output_shapes.items()],
                 "made_for": ["reference.npz", "the samples convert checked (--data)"],
                 "samples": {k: i for i, k in enumerate(sample_keys(feed, [s["name"] for s in inputs]))}}
        write_store(artifact, index, rows)
        shutil.copyfile(server.log, store_paths(artifact)[0].parent / "build.log")
        if resp.get("analysis"):
            write_analysis(resp["analysis"], onnx_path, artifact.parent / STORE_DIR)
        notes = [f"{MODEL_FILE} for {platform} ({opts.precision}) built by rknn-toolkit2 {index['toolkit_version']} in the "
                 f"{TOOLCHAIN} toolchain; its parity and accuracy here are {SIM_LABEL}"]
        if folded:
            notes.append(f"{len(folded)} zero Pad(s) folded into the Conv that reads each before rknn-toolkit2 (whose own "
                         f"fold of them crashes): {', '.join(folded[:5])}{' …' if len(folded) > 5 else ''}")
        return Conversion(self._artifacts(tc, resp, platform, opts, ctx), notes=notes)

    def _artifacts(self, tc: toolchains.Toolchain, resp: dict[str, Any], platform: str, opts: TargetOptions,
                   ctx: TargetContext) -> list[Artifact]:
        version = resp["versions"].get("rknn-toolkit2")
        extra = {"converter": f"rknn-toolkit2 {version}", "toolchain": tc.record(), "host_emulation": True,
                 "host_emulation_note": f"{SIM_LABEL}: rknn-toolkit2's simulator ran this artifact in the job that built "
                                        "it; its outputs are recorded beside it (rknn/simulator.*) by sha256; its latency "
                                        "is the simulator's recorded time per inference on this host, not the NPU's",
                 "rknn": {"target_platform": platform, "precision": opts.precision, "sha256": resp["rknn_sha256"],
                          "calibration_samples": len(ctx.calibration or []) if opts.precision == "int8" else 0,
                          "quantized_algorithm": "normal" if opts.precision == "int8" else None,
                          # hybrid quantization: the float layers' tensors, float16 (int16 past fp16's range)
                          "hybrid_layers": resp.get("hybrid_layers") or {},
                          "runs_on": "the board's NPU through RKNNLite (rknn-toolkit-lite2); the host only simulates"},
                 "latency_device_only": LATENCY_NOTE, "runner_options": {}}
        store = f"{STORE_DIR}/"
        analysis = [Artifact(store + ANALYSIS_JSON, "report", opts.precision, None, {"what": ANALYSIS_WHAT}),
                    Artifact(store + ANALYSIS_TXT, "report", opts.precision),
                    Artifact(store + ANALYSIS_NPZ, "report", opts.precision)] if resp.get("analysis") else []
        return [Artifact(MODEL_FILE, "model", opts.precision, "rknn", extra),
                Artifact(store + STORE_INDEX, "simulator-record", opts.precision),
                Artifact(store + STORE_ARRAYS, "simulator-record", opts.precision),
                Artifact(store + "build.log", "log", opts.precision), *analysis]


def onnx_for_rknn(onnx_path: Path, folder: Path) -> tuple[Path, list[str]]:
    """The graph rknn-toolkit2 loads: the canonical one, or a copy in ``folder`` with its zero Pads folded into the Convs
    that read them (:func:`edgeconv.onnx_tools.fold_pads_into_convs`); the Pads folded."""
    import onnx

    from edgeconv.onnx_tools import fold_pads_into_convs

    proto = onnx.load(str(onnx_path))
    folded = fold_pads_into_convs(proto)
    if not folded:
        return onnx_path.resolve(), []
    out = folder / "model-for-rknn.onnx"
    onnx.save(proto, str(out))
    return out.resolve(), folded


def float_layers(onnx_path: Path, layers: list[dict[str, Any]]) -> list[dict[str, list[str]]]:
    """The int8 guard's float layers as the job takes them (docs/architecture.md, "RKNN"): per layer, the tensors it
    writes (every output of its canonical ONNX nodes and the toolkit's own names, ``artifact_names``) and those it reads
    from other layers; the job keeps those of its quantization config out of int8."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = []
    for layer in layers:
        nodes = [n for n in graph.node if n.name in set(layer["nodes"])]
        writes = list(dict.fromkeys([o for n in nodes for o in n.output] + list(layer.get("artifact_names") or [])))
        reads = [i for n in nodes for i in n.input if i and i not in weights and i not in writes]
        for t in list(reads):  # the toolkit drops a reshape: the range is that of the tensor before it
            while t in producer and producer[t].op_type in MOVES_VALUES and producer[t].input:
                t = producer[t].input[0]
                reads.append(t)
        out.append({"tensors": writes, "inputs": list(dict.fromkeys(reads))})
    return out


def analysis_request(reference: dict[str, np.ndarray], inputs: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """accuracy_analysis on the first reference sample (one .npy per input, NCHW as the ONNX takes it)."""
    paths = []
    for j, spec in enumerate(inputs):
        path = folder / f"analysis_in_{j}.npy"
        np.save(path, np.ascontiguousarray(np.asarray(reference[spec["name"]][:1], dtype=np.float32)))
        paths.append(str(path))
    return {"inputs": paths, "output_dir": str(folder / "analysis")}


def write_analysis(analysis: dict[str, Any], onnx_path: Path, folder: Path) -> None:
    """rknn-toolkit2's per-layer table (simulator vs fp32) into the bundle, each row with the ONNX node that writes its
    tensor, and the layers ranked by the simulator's cosine on the layer alone (what `debug` reads first)."""
    import json

    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    writer = {out: n for n in graph.node for out in n.output}
    rows = analysis["rows"]
    for row in rows:
        tensor = row["tensor"]
        for suffix in ("_int8", "-rs", "_mm"):  # the toolkit's names for its own conversions of an ONNX tensor
            tensor = tensor.removesuffix(suffix)
        node = writer.get(tensor)
        row["onnx_node"], row["onnx_op"] = (node.name, node.op_type) if node is not None else (None, None)
        row["onnx_tensor"] = tensor if node is not None else None
    ranked = sorted((r for r in rows if "single_cos" in r), key=lambda r: r["single_cos"])
    shutil.copyfile(analysis["file"], folder / ANALYSIS_TXT)
    _keep_dumps(rows, Path(analysis["file"]).parent, folder / ANALYSIS_NPZ)
    doc = {"what": ANALYSIS_WHAT, "rows": rows, "worst": ranked[:5], "arrays": ANALYSIS_NPZ}
    (folder / ANALYSIS_JSON).write_text(json.dumps(doc, indent=1) + "\n")


def _keep_dumps(rows: list[dict[str, Any]], dumps: Path, dest: Path) -> None:
    """The fp32 ("golden") and simulator values accuracy_analysis dumped for each tensor it measured (a row with
    figures, or all zeros in int8), one per ONNX tensor: what `edgeconv debug` compares layer by layer as it does for
    other runtimes (docs/architecture.md, "RKNN"). A row gets ``arrays``: its index in ``dest``. The ONNX tensor's own
    name wins over the toolkit's conversions of it (``output`` over ``output_int8``)."""
    files = _dump_files(dumps)
    chosen: dict[str, dict[str, Any]] = {}
    for row in rows:
        tensor, name = row.get("onnx_tensor"), row["tensor"]
        if tensor is None or not ("entire_cos" in row or row.get("q_zero")):
            continue
        if not all((dumps / kind / "npy" / f"{files.get(name, name)}.npy").exists() for kind in ("golden", "simulator")):
            continue
        if tensor not in chosen or name == tensor:
            chosen[tensor] = row
    arrays: dict[str, np.ndarray] = {}
    for i, row in enumerate(chosen.values()):
        row["arrays"] = i
        for kind in ("golden", "simulator"):
            arrays[f"{kind}_{i}"] = np.load(dumps / kind / "npy" / f"{files.get(row['tensor'], row['tensor'])}.npy")
    np.savez_compressed(dest, **arrays)


def _dump_files(dumps: Path) -> dict[str, str]:
    """accuracy_analysis's map_name_to_file.txt: tensor name → the stem of its dump files (a name with ``/`` is
    written under another)."""
    path = dumps / "map_name_to_file.txt"
    pairs = [ln.split() for ln in path.read_text().splitlines()] if path.exists() else []
    return {p[0]: p[1].removesuffix(".txt") for p in pairs if len(p) == 2 and p[1].endswith(".txt")}


def write_dataset(calibration: list[dict[str, np.ndarray]] | None, inputs: list[dict[str, Any]], folder: Path) -> Path:
    """rknn-toolkit2's dataset.txt: one line per calibration sample, one .npy per input (NCHW, batch 1, as the ONNX
    takes it), separated by spaces."""
    if not calibration:
        raise PreflightError("int8 for RKNN needs calibration samples: pass --calib DATA.npz (or --data)")
    lines = []
    folder = folder / "calib"
    folder.mkdir()
    for i, sample in enumerate(calibration):
        paths = []
        for j, spec in enumerate(inputs):
            a = np.asarray(sample[spec["name"]], dtype=np.float32)
            a = a.reshape(spec["shape"]) if a.size == int(np.prod(spec["shape"])) else a
            path = folder / f"{i:05d}_{j}.npy"
            np.save(path, np.ascontiguousarray(a))
            paths.append(str(path))
        lines.append(" ".join(paths))
    (folder / "dataset.txt").write_text("\n".join(lines) + "\n")
    return folder / "dataset.txt"
