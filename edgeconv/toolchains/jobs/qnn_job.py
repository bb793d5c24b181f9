"""The qnn toolchain's job (run by that venv's python, never importing edgeconv; see docs/architecture.md, "NPU
toolchains"): the canonical ONNX graph → QNN's QDQ ONNX (int8: onnxruntime.quantization's get_qnn_qdq_config after
qnn_preprocess_model, uint8 activations and weights, or uint16 activations) or the float graph computed in fp16, then
the offline context binary for the profile's Hexagon arch (``ep.context_enable=1``), built and run on QNN's HTP
backend, which on x86-64 is an emulator.

onnxruntime-qnn is a plugin execution provider: registered with ``register_execution_provider_library`` and chosen
with ``add_provider_for_devices``. The old ``providers=["QNNExecutionProvider"]`` form only warns and runs the whole
graph on the CPU EP, so it is never used. Every node must run on QNN: the job first builds a session that records
which EP took each node (CPU fallback allowed, so the answer names the nodes) and refuses any node the CPU EP took;
then it builds the context and runs the check samples with ``session.disable_cpu_ep_fallback=1``.

    python qnn_job.py REQUEST.json RESPONSE.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (stdlib-only helpers beside this file)

EP = "QNNExecutionProvider"
CPU_EP = "CPUExecutionProvider"
NO_FALLBACK = {"session.disable_cpu_ep_fallback": "1"}
# graph-input Quantize / graph-output Dequantize on QNN too (its default hands them to the CPU EP)
BASE_OPTIONS = {"backend_type": "htp", "offload_graph_io_quantization": "0"}


def register(ort) -> list:
    """The QNN EP's devices, its plugin library registered once in this process."""
    import onnxruntime_qnn

    if not any(d.ep_name == EP for d in ort.get_ep_devices()):
        ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
    devices = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not devices:
        raise RuntimeError(f"onnxruntime-qnn {onnxruntime_qnn.__version__} registered no {EP} device")
    return devices


def session(ort, devices: list, path: Path, options: dict[str, str], config: dict[str, str]):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for key, value in config.items():
        so.add_session_config_entry(key, value)
    so.add_provider_for_devices(devices, options)
    return ort.InferenceSession(str(path), so)


def load_feeds(path: str) -> list[dict[str, np.ndarray]]:
    """Feeds saved as ``s<i>__<input name>`` arrays (one feed per sample, in order)."""
    data = np.load(path)
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for key in data.files:
        index, name = key.split("__", 1)
        feeds.setdefault(int(index[1:]), {})[name] = data[key]
    return [feeds[i] for i in sorted(feeds)]


def quantize_qdq(req: dict, src: Path, dest: Path) -> dict:
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config, qnn_preprocess_model

    feeds = load_feeds(req["calibration"])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    pre = dest.with_name("qnn-preprocessed.onnx")
    changed = bool(qnn_preprocess_model(str(src), str(pre)))
    model = pre if changed else src
    activation = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}[req["activations"]]
    config = get_qnn_qdq_config(str(model), Reader(), activation_type=activation, weight_type=QuantType.QUInt8,
                                calibrate_method=getattr(CalibrationMethod, req["calibration_method"]))
    quantize(str(model), str(dest), config)
    if changed:
        pre.unlink()
    return {"tool": f"onnxruntime.quantization {ort_version}: qnn_preprocess_model + get_qnn_qdq_config + quantize (QDQ)",
            "preprocessed": changed, "activations": f"{req['activations']}, asymmetric, per tensor",
            "weights": "uint8, asymmetric (QNN's default)", "calibration_method": req["calibration_method"],
            "samples": len(feeds)}


def assignment(ort, devices: list, path: Path, options: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """Which EP takes each node of ``path`` (ONNX Runtime's own record of its partitioning), by EP name."""
    sess = session(ort, devices, path, options, {"session.record_ep_graph_assignment_info": "1"})
    out: dict[str, list[dict[str, str]]] = {}
    for sub in sess.get_provider_graph_assignment_info():
        out.setdefault(sub.ep_name, []).extend({"name": n.name, "op": n.op_type} for n in sub.get_nodes())
    return out


def in_batches(feed: dict[str, np.ndarray], sess) -> list[dict[str, np.ndarray]]:
    """``feed`` cut to the model's fixed batch (the context binary's shapes are static)."""
    fixed = [i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int)]
    total = len(next(iter(feed.values())))
    step = fixed[0] if fixed else total
    return [{k: v[i:i + step] for k, v in feed.items()} for i in range(0, total, step)]


def run_checks(ort, devices: list, ctx_model: Path, graph: Path, feeds: list[dict[str, np.ndarray]]) -> dict:
    """The check samples on the HTP emulator (the context binary, no CPU fallback) and on the CPU EP (the same graph):
    the largest difference and the emulator's time per run (this host's, not the device's)."""
    emu = session(ort, devices, ctx_model, dict(BASE_OPTIONS), NO_FALLBACK)
    cpu = ort.InferenceSession(str(graph), providers=[CPU_EP])
    worst, runs, seconds = 0.0, 0, 0.0
    for feed in feeds:
        for part in in_batches(feed, emu):
            t0 = time.perf_counter()
            got = emu.run(None, part)
            seconds += time.perf_counter() - t0
            runs += 1
            want = cpu.run(None, part)
            worst = max([worst] + [float(np.max(np.abs(g.astype(np.float64) - w))) for g, w in zip(got, want) if g.size])
    return {"runs": runs, "max_abs_vs_cpu_ep": worst, "emulator_ms_per_run": 1000 * seconds / max(runs, 1),
            "providers": emu.get_providers()}


def cpu_refusal(nodes: dict[str, list[dict[str, str]]], arch: str) -> str | None:
    """The refusal naming every node the CPU EP took (the ops; then how many Q/DQ nodes around them), or None."""
    cpu = nodes.get(CPU_EP, [])
    if not cpu:
        return None
    ops = [n for n in cpu if n["op"] not in ("QuantizeLinear", "DequantizeLinear")] or cpu
    named = ", ".join(f"{n['name']} ({n['op']})" for n in ops[:12]) + (" …" if len(ops) > 12 else "")
    qdq = len(cpu) - len(ops)
    return (f"QNN's HTP backend (htp_arch {arch}) does not take {named}"
            + (f" (nor {qdq} Quantize/Dequantize node(s) around it)" if qdq else "")
            + "; it would run on the CPU EP, which this target refuses")


def convert(req: dict) -> dict:
    import onnxruntime as ort

    devices = register(ort)
    out = Path(req["outdir"])
    src = Path(req["onnx"])
    arch = str(req["htp_arch"])
    options = {**BASE_OPTIONS, "htp_arch": arch}
    if req.get("soc_model"):
        options["soc_model"] = str(req["soc_model"])
    response: dict = {"provider_options": options}
    if req["precision"] == "int8":
        graph = out / req["qdq_name"]
        response["quantization"] = quantize_qdq(req, src, graph)
    else:  # fp16: the float graph, computed in fp16 by the HTP
        graph = src
        options["enable_htp_fp16_precision"] = "1"
    nodes = assignment(ort, devices, graph, options)
    response["assignment"] = {ep: len(v) for ep, v in nodes.items()}
    response["cpu_nodes"] = nodes.get(CPU_EP, [])
    refusal = cpu_refusal(nodes, arch)
    if refusal:
        return {**response, "error": refusal}
    ctx_model = out / req["context_name"]
    session(ort, devices, graph, options, {**NO_FALLBACK, "ep.context_enable": "1", "ep.context_embed_mode": "0",
                                          "ep.context_file_path": str(ctx_model)})
    binaries = sorted(p.name for p in out.glob(ctx_model.stem + "*.bin"))
    if not ctx_model.is_file() or not binaries:
        return {**response, "error": f"onnxruntime-qnn wrote no context binary beside {ctx_model.name}"}
    response.update(context_onnx=ctx_model.name, context_binaries=binaries, qnn_nodes=len(nodes.get(EP, [])),
                    checks=run_checks(ort, devices, ctx_model, graph, load_feeds(req["check_samples"])))
    return response


if __name__ == "__main__":
    _common.main(convert)
