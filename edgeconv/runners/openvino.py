"""OpenVINO runner: CPU, GPU, NPU or AUTO, with the inference precision pinned and recorded.

On CPUs with AMX/avx512_bf16 OpenVINO computes in bf16 by default; parity checks pin
``INFERENCE_PRECISION_HINT=f32`` (``inference_precision="f32"``), ``"native"`` measures the device default.
Inputs are copied into request-owned tensors once, so a later inference can never overwrite a caller's array.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeconv.core.text import first_line
from edgeconv.errors import ArtifactRefused, BadInput, MissingDependency
from edgeconv.lazy import require
from edgeconv.runners.base import Runner
from edgeconv.specs import TensorSpec


# Some virtual machines advertise AMX in CPUID leaf 7 but cap the CPUID leaves below 0x1D, the leaf that describes
# the tile palette. oneDNN then configures tiles from an empty palette and its first TILEZERO raises #UD, so
# OpenVINO's CPU plugin dies (SIGILL) on bf16 or int8 inference. (Found on a Firecracker VM: max leaf 0x1C; code that
# loads palette 1 itself, as XNNPACK's AMX kernels do, runs fine there.) A tiny bf16 matmul in a subprocess tells;
# the answer is cached.
AMX_CAP = "AVX512_CORE_FP16"
_PROBE = """
import numpy as np, openvino as ov, openvino.opset13 as ops
p = ops.parameter([64, 256], ov.Type.f32)
m = ov.Model([ops.matmul(p, ops.constant(np.ones((256, 256), np.float32)), False, False)], [p])
ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})(np.ones((64, 256), np.float32))
"""
isa_note: dict[str, str] = {}


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _cpuinfo_flags() -> str:
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return ""


def _amx_faults() -> bool:
    from edgeconv.lazy import version_of

    key = hashlib.sha256(f"{_cpuinfo_flags()}|{platform.release()}|{version_of('openvino')}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeconv" / f"amx-probe-{key}.json"
    try:
        return json.loads(cache.read_text())["faults"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        rc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=120, check=False).returncode
    except subprocess.TimeoutExpired:
        return False
    faults = rc == -4  # SIGILL
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"faults": faults, "returncode": rc}))
    except OSError:
        pass
    return faults


def load_openvino():
    """Import openvino; where the CPU advertises AMX that OpenVINO cannot use, cap oneDNN's ISA below AMX first
    (and say so in every report). A user's own ONEDNN_MAX_CPU_ISA is left alone."""
    if (sys.platform == "linux" and "ONEDNN_MAX_CPU_ISA" not in os.environ and " amx_tile" in _cpuinfo_flags()
            and "openvino" not in sys.modules):
        require("openvino", why="to run OpenVINO IR")
        if _amx_faults():
            os.environ["ONEDNN_MAX_CPU_ISA"] = AMX_CAP
            isa_note["cpu_isa_cap"] = (f"{AMX_CAP}: this CPU advertises AMX but OpenVINO's AMX code faults (SIGILL) on it "
                                       "(a virtual machine that hides the AMX palette leaf, CPUID 0x1D); bf16/int8 run on "
                                       "AVX-512 instead")
    elif os.environ.get("ONEDNN_MAX_CPU_ISA") and "cpu_isa_cap" not in isa_note:
        isa_note["cpu_isa_cap"] = f"{os.environ['ONEDNN_MAX_CPU_ISA']} (set by the user)"
    return require("openvino", why="to run OpenVINO IR")


class OpenVinoRunner(Runner):
    runtime = "openvino"
    accepted_options = ("device", "inference_precision", "performance_hint")
    resizes_batch = True

    def load(self) -> None:
        ov = load_openvino()
        self._ov = ov
        self.core = ov.Core()
        device = self.options.get("device", "CPU")
        self.device = device
        present = self.core.available_devices
        base = device.split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO") and not any(d.split(".")[0] == base for d in present):
            raise MissingDependency(
                f"OpenVINO device {device} is not present on this machine (present: {', '.join(present) or 'none'})",
                hint={"NPU": "an Intel NPU (Core Ultra) needs the intel-npu driver; run this on that laptop, or --device CPU",
                      "GPU": "an Intel GPU needs the intel-opencl-icd / level-zero driver; or use --device CPU"}.get(
                          base, "run on a machine with that device, or pick one of the present devices with --device"),
            )
        hint = str(self.options.get("performance_hint", "LATENCY")).upper()
        if hint not in ("LATENCY", "THROUGHPUT"):
            raise BadInput(f"--performance-hint must be latency or throughput, not {hint.lower()!r}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        precision = self.options.get("inference_precision", "f32")
        if precision not in ("f32", "native"):
            raise BadInput(f"--inference-precision must be f32 or native, not {precision!r}")
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self._config = config
        try:
            self.model = self.core.read_model(str(self.artifact))
            self.compiled = self.core.compile_model(self.model, device, config)
        except Exception as exc:
            raise ArtifactRefused(f"OpenVINO cannot load {self.artifact} on {device}: {exc}") from exc
        self.request = self.compiled.create_infer_request()
        # names from the model as read: compiling may merge a no-op's output name into an input's (a Keras graph's
        # leading Reshape), and get_any_name() then picks that one
        self.inputs = [self._spec(p, m) for p, m in zip(self.compiled.inputs, self.model.inputs, strict=True)]
        self.outputs = [self._spec(p, m) for p, m in zip(self.compiled.outputs, self.model.outputs, strict=True)]
        self._requests = {self.fixed_batch(): self.request}  # batch -> request of a model compiled for it

    def _request_for(self, batch: int):
        """An IR with a static batch is reshaped to ``batch`` and compiled once more (what benchmark_app -b does);
        a dynamic batch runs as it is."""
        if self.fixed_batch() is None:
            return self.request
        if batch not in self._requests:
            self._requests[batch] = self._compile_for(batch, self._config).create_infer_request()
        return self._requests[batch]

    def _compile_for(self, batch: int, config: dict[str, Any]):
        """The model compiled with ``config``, reshaped to ``batch`` when its batch is static and another. A reshape the
        model refuses, or a compile failing after it, is the batch asked for (BadInput); a compile failing with no reshape
        (the PERF_COUNT compile for --layers, say) is the runtime refusing the artifact (ArtifactRefused)."""
        model, name = self.model, self.artifact.name
        reshaped = self.fixed_batch() not in (None, batch)
        if reshaped:
            try:
                model = self.model.clone()
                model.reshape({p.get_any_name(): [batch, *p.get_partial_shape()[1:]] for p in model.inputs})
            except Exception as exc:
                raise BadInput(f"OpenVINO cannot reshape {name} to batch {batch}: {_first_line(exc)}") from exc
        how = " with performance counters on (PERF_COUNT, for --layers)" if config.get("PERF_COUNT") else ""
        try:
            return self.core.compile_model(model, self.device, config)
        except Exception as exc:
            if reshaped:
                raise BadInput(f"OpenVINO cannot compile {name} reshaped to batch {batch} on {self.device}{how}: "
                               f"{_first_line(exc)}") from exc
            raise ArtifactRefused(f"OpenVINO cannot compile {name} on {self.device}{how}: {_first_line(exc)}") from exc

    def layer_profiler(self, feed: dict[str, np.ndarray]) -> OpenVinoLayerProfiler:
        """OpenVINO's performance counters on ``feed`` (:class:`OpenVinoLayerProfiler`)."""
        return OpenVinoLayerProfiler(self, feed)

    @staticmethod
    def _spec(port, read_port) -> TensorSpec:
        shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
        return TensorSpec(read_port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name)

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        arrays = super().prepare(feed)
        shaped = next((s.name for s in self.inputs if s.shape), None)  # a 0-d input (a sample rate) has no batch
        request = self._request_for(len(arrays[shaped])) if shaped else self.request
        # Request-owned copies (shared_memory=False): the caller's arrays are never aliased.
        return request, [self._ov.Tensor(np.array(arrays[s.name], copy=True), shared_memory=False) for s in self.inputs]

    def run(self, prepared: tuple) -> list[np.ndarray]:
        request, tensors = prepared
        for i, t in enumerate(tensors):
            request.set_input_tensor(i, t)
        t0 = time.perf_counter()
        request.infer()
        self.last_s = time.perf_counter() - t0
        return [request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]

    def async_throughput(self, feed: dict[str, np.ndarray], seconds: float = 3.0) -> dict[str, Any] | None:
        """With PERFORMANCE_HINT=THROUGHPUT: items/s from an AsyncInferQueue with the device's optimal number of
        requests (the way benchmark_app measures throughput); None under the LATENCY hint."""
        if self.options.get("performance_hint", "LATENCY").upper() != "THROUGHPUT":
            return None
        jobs = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = self._ov.AsyncInferQueue(self.compiled, jobs)
        tensors = self.prepare(feed)[1]
        batch = len(next(iter(feed.values())))
        for _ in range(jobs):  # warm-up
            queue.start_async(tensors)
        queue.wait_all()
        done = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            queue.start_async(tensors)
            done += 1
        queue.wait_all()
        elapsed = time.perf_counter() - t0
        return {"requests": jobs, "inferences": done, "seconds": elapsed, "items_per_s": done * batch / elapsed,
                "method": "AsyncInferQueue with OPTIMAL_NUMBER_OF_INFER_REQUESTS, PERFORMANCE_HINT=THROUGHPUT"}

    def info(self) -> dict[str, Any]:
        unreported: dict[str, str] = {}

        def prop(name):
            try:
                value = self.compiled.get_property(name)
            except Exception as exc:  # noqa: BLE001 - a device that does not report this property (the plugin's own
                # error, of any type): the figure is None, and "unreported_properties" says which and why
                unreported[name] = f"{type(exc).__name__}: {first_line(str(exc), 200)}"
                return None
            return value.to_string() if hasattr(value, "to_string") else str(value)

        info = {
            "runtime": "openvino",
            "version": self._ov.__version__,
            "device": self.device,
            "device_name": (self.core.get_property(self.device.split(".")[0], "FULL_DEVICE_NAME")
                            if self.device not in ("AUTO",) else "AUTO"),
            "threads": prop("INFERENCE_NUM_THREADS"),
            "precision": prop("INFERENCE_PRECISION_HINT"),
            "precision_requested": self.options.get("inference_precision", "f32"),
            "performance_hint": prop("PERFORMANCE_HINT"),
            **isa_note,
        }
        if unreported:
            info["unreported_properties"] = unreported
        return info


class OpenVinoLayerProfiler:
    """Per-node times from OpenVINO's performance counters: the model compiled again with the runner's configuration
    plus ``PERF_COUNT=True``. ``run(n, keep)`` infers n times; after each kept (timed) inference ``get_profiling_info()``
    gives the ``real_time`` of every node with status EXECUTED (nodes fused into a neighbour or optimised out are counted
    apart). Node names and types are those of the compiled graph, after OpenVINO's fusions; ``exec_type`` is the kernel
    that ran (e.g. brgconv_avx2_f32). ``finish()`` returns the device runner's layer-profile shape (see ``execute_layers``)."""

    def __init__(self, runner: OpenVinoRunner, feed: dict[str, np.ndarray]):
        arrays = Runner.prepare(runner, feed)
        shaped = next((s.name for s in runner.inputs if s.shape), None)
        batch = len(arrays[shaped]) if shaped else 1
        self.request = runner._compile_for(batch, {**runner._config, "PERF_COUNT": True}).create_infer_request()
        for i, spec in enumerate(runner.inputs):
            self.request.set_input_tensor(i, runner._ov.Tensor(np.array(arrays[spec.name], copy=True), shared_memory=False))
        self.executed = runner._ov.ProfilingInfo.Status.EXECUTED
        self.wall: list[float] = []
        self.runs: list[dict[str, float]] = []
        self.layers: dict[str, dict[str, Any]] = {}
        self.not_executed = 0

    def run(self, n: int, keep: bool) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            self.request.infer()
            elapsed = time.perf_counter() - t0
            if not keep:
                continue
            self.wall.append(elapsed)
            times: dict[str, float] = {}
            info = self.request.get_profiling_info()
            for node in info:
                if node.status != self.executed:
                    continue
                if node.node_name not in self.layers:
                    self.layers[node.node_name] = {"op": node.node_type, "exec_type": node.exec_type, "order": len(self.layers)}
                times[node.node_name] = times.get(node.node_name, 0.0) + node.real_time.total_seconds()
            self.runs.append(times)
            self.not_executed = len(info) - len(times)

    def close(self) -> None:
        """The PERF_COUNT request released (``execute_layers`` calls it whatever happened; nothing is on disk)."""
        self.request = None

    def finish(self) -> dict[str, Any]:
        return {"wall_s": self.wall, "runs": self.runs, "layers": self.layers, "not_executed": self.not_executed,
                "profiler": "OpenVINO PERF_COUNT=True: InferRequest.get_profiling_info() after each timed inference, real_time "
                            "of the nodes with status EXECUTED (nodes fused away or not run are counted apart)"}
