"""The Jetson's own side: engine build with the TensorRT Python API, and the facts of the device it ran on.

Runs only where JetPack's TensorRT is installed; everything here imports tensorrt / cuda lazily. The pure
parts (release-file parsing, the engine-compatibility rule) are tested on the host.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

from edgeconv.core.backends.tensorrt import engine_mismatch  # noqa: F401  (one rule, shared with the device)
from edgeconv.errors import ConversionFailed, MissingDependency

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
NO_TENSORRT = "tensorrt not installed (needs an NVIDIA GPU/JetPack)"


def parse_tegra_release(text: str) -> str | None:
    """``# R36 (release), REVISION: 4.3, GCID: …`` → ``36.4.3``."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def parse_nvpmodel(text: str) -> dict[str, str] | None:
    """``nvpmodel -q`` → ``{"mode": "MAXN", "id": "0"}``."""
    m = re.search(r"NV Power Mode:\s*(\S+)\s*\n\s*(\d+)", text)
    return {"mode": m.group(1), "id": m.group(2)} if m else None


def _run(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _cuda_device() -> dict[str, Any]:
    """GPU name and compute capability through cuda-python (a maintained binding)."""
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
    except ImportError as exc:
        raise MissingDependency("cuda-python is not installed (needed to talk to the Jetson's GPU)",
                                hint="pip install cuda-python (the version matching JetPack's CUDA)") from exc
    err, prop = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        raise MissingDependency(f"no CUDA device: {err}")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return {"gpu": name.strip("\x00"), "compute_capability": f"{prop.major}.{prop.minor}"}


def tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise MissingDependency(NO_TENSORRT, hint="run this on the Jetson, where JetPack provides tensorrt") from exc
    return trt


def device_info() -> dict[str, Any]:
    """TensorRT version, GPU and compute capability, L4T release, power mode and clocks in force."""
    trt = tensorrt()
    info: dict[str, Any] = {"tensorrt": trt.__version__, **_cuda_device()}
    if TEGRA_RELEASE.exists():
        info["l4t"] = parse_tegra_release(TEGRA_RELEASE.read_text())
    model = Path("/proc/device-tree/model")
    if model.exists():
        info["board"] = model.read_text().strip("\x00\n ")
    nv = _run(["nvpmodel", "-q"])
    info["power_mode"] = parse_nvpmodel(nv) if nv else None
    clocks = _run(["jetson_clocks", "--show"])
    info["clocks"] = clocks.strip().splitlines()[:12] if clocks else None
    return info


class _Progress:
    """TensorRT 10's IProgressMonitor, forwarding phases to edgeconv's step printer."""

    def __new__(cls, trt, steps):
        class Monitor(trt.IProgressMonitor):
            def __init__(self):
                trt.IProgressMonitor.__init__(self)

            def phase_start(self, phase_name, parent_phase, num_steps):
                steps.note(f"{phase_name} ({num_steps} steps)")

            def step_complete(self, phase_name, step):
                return True  # keep building

            def phase_finish(self, phase_name):
                pass

        return Monitor()


def precision_plan(build: dict[str, Any], trt_major: int, strongly_typed: bool = False) -> dict[str, Any]:
    """How the engine is built from the bundle's build record on a TensorRT of ``trt_major``: TensorRT 11 (which drops the
    weakly typed FP16/INT8 builder flags) or ``strongly_typed`` takes the bundle's strongly typed graph and no precision
    flag; TensorRT 10 the graph with the FP16/INT8 flags, and the fp32 layers pinned (ILayer.precision and its output
    types, OBEY_PRECISION_CONSTRAINTS), as build.sh's trtexec line does."""
    typed = build.get("strongly_typed")
    if typed and (strongly_typed or trt_major >= 11):
        return {"onnx": typed["onnx"], "strongly_typed": True, "flags": [], "fp32_layers": []}
    flags = [f for f, on in (("FP16", build["fp16"]), ("INT8", build["int8"])) if on]
    fp32 = list(build.get("fp32_layers") or [])
    if fp32:
        flags.append("OBEY_PRECISION_CONSTRAINTS")
    return {"onnx": build["onnx"], "strongly_typed": False, "flags": flags, "fp32_layers": fp32}


def _pin_fp32(trt, network, names: list[str]) -> list[str]:
    """The network's layers named in ``names`` computed and output in fp32; returns the names not found."""
    wanted = set(names)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name in wanted:
            layer.precision = trt.float32
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.float32)
            wanted.discard(layer.name)
    return sorted(wanted)


def build_engine(bundle_dir: Path, build: dict[str, Any], steps) -> dict[str, Any]:
    """Build ``build['engine']`` from ``build['onnx']`` as the manifest describes; returns the build record."""
    trt = tensorrt()
    device = device_info()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    plan = precision_plan(build, major)
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan["strongly_typed"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse((bundle_dir / plan["onnx"]).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConversionFailed(f"TensorRT {trt.__version__} cannot parse {build['onnx']}", details="\n".join(errors[:10]))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build["workspace_mb"]) << 20)
    for flag in plan["flags"]:  # INT8: explicit Q/DQ in the graph, no calibrator
        config.set_flag(getattr(trt.BuilderFlag, flag))
    missing = _pin_fp32(trt, network, plan["fp32_layers"])
    if missing:
        steps.note(f"layers to keep in fp32 not in TensorRT's network: {', '.join(missing)}")
    if build.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(build["dla_core"])
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if build.get("shapes"):
        profile = builder.create_optimization_profile()
        for name, s in build["shapes"].items():
            profile.set_shape(name, s["min"], s["opt"], s["max"])
        config.add_optimization_profile(profile)
    cache_path = bundle_dir / build["timing_cache"]
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if hasattr(trt, "IProgressMonitor"):
        config.progress_monitor = _Progress(trt, steps)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionFailed(f"TensorRT {trt.__version__} failed to build the engine (see the messages above)")
    (bundle_dir / build["engine"]).write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {**build, "built": True, "build_seconds": time.perf_counter() - t0, "built_on": device, "built_with": plan}
