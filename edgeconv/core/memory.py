"""Memory per phase of a run: peak resident memory of this process for the runtime's import, the model's load, the
first inference and the steady state (the timed runs). On Linux the kernel's high-water mark (VmHWM) is reset to the
current RSS between phases by writing "5" to /proc/self/clear_refs, so each phase's peak is the kernel's own figure;
where that cannot be done the peak is sampled at the phase's start and end, and the report says which (a peak inside
the phase is then missed). See docs/architecture.md ("Measurements carry their quality")."""

import contextlib
import importlib
import os
import sys
import time

from .stats import rss_bytes

MB = 2.0 ** 20
# The module a runner imports for its runtime, in the order tried (the first that imports is the runtime's import cost).
RUNTIME_MODULES = {"onnxruntime": ("onnxruntime",), "litert": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
                   "tensorrt": ("tensorrt",), "openvino": ("openvino",), "ncnn": ("ncnn",),
                   "executorch": ("executorch.runtime",)}
METHOD_RESET = "peak RSS (VmHWM) per phase, the high-water mark reset between phases through /proc/self/clear_refs"
METHOD_SAMPLED = ("peak RSS sampled at each phase's start and end (no resettable high-water mark here: "
                  "/proc/self/clear_refs not writable); a peak inside a phase is missed")


def _status_kb(key):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak():
    """Reset this process's high-water mark to its current RSS; False where the kernel does not let us."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_kb("VmHWM") is not None


class PhaseMemory(object):
    """Peak RSS per named phase (``with memory.phase("model_load"): ...``), and the report's ``memory``."""

    def __init__(self):
        self.resettable = reset_peak()
        self.phases = []
        self.notes = []
        self.backend = None  # the backend opened under open_measured (its runtime's own memory figure, its cache state)

    @contextlib.contextmanager
    def phase(self, name, note=None):
        before = rss_bytes()
        reset = self.resettable and reset_peak()
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
        after = rss_bytes()
        hwm = _status_kb("VmHWM") if reset else None
        peak = max(hwm * 1024, after) if hwm is not None else max(before, after)
        self.phases.append({"phase": name, "rss_before_mb": before / MB, "rss_after_mb": after / MB, "peak_mb": peak / MB,
                            "peak_by": "VmHWM" if hwm is not None else "sampled", "seconds": seconds, "note": note})

    def import_runtime(self, runner):
        """The runtime's import as its own phase (already imported in this process: said, its cost is not in it)."""
        names = RUNTIME_MODULES.get(runner, ())
        loaded = next((n for n in names if n in sys.modules), None)
        note = ("%s was already imported in this process: its cost is in the process's baseline" % loaded if loaded
                else None)
        with self.phase("runtime_import", note):
            if loaded is None:
                note = _import_first(names)
        if note and not loaded:
            self.phases[-1]["note"] = note

    def report(self, model_files=(), limit_mb=None, manifest=None):
        """The report's ``memory``: the phases, the process's peak over them, the model's size on disk, the method, and
        the runtime's own figure where it reports one (:func:`runtime_own_figure`)."""
        peak = max([p["peak_mb"] for p in self.phases] or [rss_bytes() / MB])
        size = sum(os.path.getsize(p) for p in model_files if os.path.isfile(p))
        return {"phases": self.phases, "peak_mb": peak, "model_file_mb": size / MB,
                "method": METHOD_RESET if self.resettable else METHOD_SAMPLED, "max_memory_mb": limit_mb,
                "runtime_own_figure": runtime_own_figure(self.backend, manifest), "notes": self.notes}

    def load_report(self, later):
        """Cold vs warm load, reported apart: the first load (this process's ``model_load`` phase: a fresh process's
        first load when the runtime was not imported before it) against a later load of the same artifact in the same
        process (``later``: :func:`edgeconv.core.stats.cold_start`'s figures, or None when the backend cannot reopen),
        with the runtime's model cache as it was (OpenVINO's CACHE_DIR; none configured is said)."""
        first = next((p for p in self.phases if p["phase"] == "model_load"), None)
        imported = next((p for p in self.phases if p["phase"] == "runtime_import"), None)
        fresh = imported is not None and not (imported["note"] or "").endswith("baseline")
        return {"first_load_ms": first["seconds"] * 1e3 if first else None, "first_load_fresh_process": fresh,
                "later_load_ms": later["load_ms"] if later else None,
                "later_first_inference_ms": later["first_inference_ms"] if later else None,
                "model_cache": _model_cache(self.backend),
                "method": "first: the model_load phase of this run (wall time, the runtime already imported); later: the "
                          "same artifact opened again in the same process (cold_start)"}


def _import_first(names):
    """Import the first of ``names`` that imports; a note when none does (its import is then in the model's load)."""
    for name in names:
        try:
            importlib.import_module(name)
            return None
        except ImportError:
            continue
    return "no runtime module imported on its own (%s): its import is in model_load" % (", ".join(names) or "unknown runner")


def peak_since_reset():
    """This process's peak RSS in bytes since the last :func:`reset_peak` (VmHWM), or None where /proc has none."""
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * 1024


def memory_budget(memory, limit_mb):
    """The peak-RSS budget (``--max-memory-mb``): the process's peak over every phase against the limit."""
    return {"name": "max_memory_mb", "limit": limit_mb, "value": memory["peak_mb"], "ok": memory["peak_mb"] <= limit_mb,
            "compared": "peak RSS %.1f MB (largest phase: %s) %s %s MB" % (
                memory["peak_mb"], max(memory["phases"], key=lambda p: p["peak_mb"])["phase"] if memory["phases"] else "-",
                "<=" if memory["peak_mb"] <= limit_mb else ">", limit_mb)}


def open_measured(memory, runner, open_backend):
    """Open a backend with its runtime's import and the model's load as two phases of ``memory``."""
    memory.import_runtime(runner)
    with memory.phase("model_load"):
        memory.backend = open_backend()
    return memory.backend


def _compiled_property(backend, name):
    """An OpenVINO compiled model's property as text, None where the backend has no compiled model or the plugin does
    not report it."""
    compiled = getattr(backend, "compiled", None)
    if compiled is None:
        return None
    try:
        return str(compiled.get_property(name))
    except RuntimeError:  # the plugin does not report this property (its own error)
        return None


def _model_cache(backend):
    """The runtime's model cache as this load saw it (OpenVINO: CACHE_DIR and LOADED_FROM_CACHE)."""
    if getattr(backend, "compiled", None) is None:
        return "no model cache for this runtime"
    core = getattr(backend, "core", None)
    try:
        cache_dir = core.get_property("CACHE_DIR") if core is not None else ""
    except RuntimeError:
        cache_dir = ""
    if not cache_dir:
        return "OpenVINO: no CACHE_DIR configured (every load compiles the IR)"
    return "OpenVINO CACHE_DIR %s; this load from the cache: %s" % (cache_dir, _compiled_property(backend, "LOADED_FROM_CACHE"))


def runtime_own_figure(backend, manifest=None):
    """The runtime's own memory figure where it reports one, else why there is none: Vela's SRAM/off-chip estimate of
    an Ethos-U bundle (from the manifest), a TensorRT engine's device memory, an OpenVINO compiled model's memory
    properties; LiteRT's Python API does not expose its arena, ONNX Runtime reports none."""
    for check in (manifest or {}).get("checks") or []:
        est = check.get("estimate") if isinstance(check, dict) else None
        if isinstance(est, dict) and "sram_used_kib" in est:
            return {"source": "Vela estimate (static, from the bundle's manifest)", "sram_kib": est["sram_used_kib"],
                    "off_chip_kib": est.get("off_chip_used_kib"), "arena_cache_bytes": est.get("arena_cache_size_bytes")}
    inner = getattr(backend, "backend", None) or backend  # a host runner wraps the device's backend
    engine = getattr(inner, "engine", None)
    if engine is not None and hasattr(engine, "device_memory_size"):
        return {"source": "TensorRT engine.device_memory_size", "device_memory_mb": engine.device_memory_size / MB}
    names = _compiled_property(backend, "SUPPORTED_PROPERTIES")
    if names is not None:
        found = sorted(set(n for n in names.replace("'", " ").replace(",", " ").split() if "MEMORY" in n))
        if found:
            return {"source": "OpenVINO compiled model", "properties": dict((n, _compiled_property(backend, n)) for n in found)}
        return {"source": None, "why": "OpenVINO's %s plugin reports no memory property on a compiled model"
                % getattr(backend, "device", "CPU")}
    if getattr(inner, "interp", None) is not None:
        return {"source": None, "why": "LiteRT's Python Interpreter does not expose its arena size (benchmark_model does)"}
    return {"source": None, "why": "this runtime reports no memory figure of its own"}
