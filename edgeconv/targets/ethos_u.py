"""Arm Ethos-U NPU target (Ethos-U55 / U65 / U85): full-int8 TFLite, compiled by Arm's Vela.

The int8 model is built exactly as for Coral (the TFLite target's path, calibration required, int8 I/O from the
profile). Vela (``ethos-u-vela`` from PyPI) then runs in a subprocess with the profile's accelerator config,
system config and memory mode passed explicitly, together with the vela.ini they come from: without them Vela
quietly falls back to its internal defaults (a different memory system) with only a warning.

Vela does not refuse what the NPU cannot run: a float model compiles with exit 0 and every operator left on
the CPU. So edgeconv reads Vela's own report (stdout for the NPU/CPU operator split and the reason for each CPU
operator, the summary CSV for cycles, time and memory) and turns it into a check, like the Edge TPU mapping.
Vela's figures are its static performance model, labelled "Vela estimate", never a measured latency: the
compiled model needs an Ethos-U NPU (or Arm's FVP) to run, neither of which is here. What runs on this host is
the int8 TFLite before Vela, on LiteRT.
"""

from __future__ import annotations

import configparser
import csv
import hashlib
import math
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from edgeconv.core.text import shorten
from edgeconv.errors import ConversionFailed, MissingDependency, PreflightError
from edgeconv.lazy import version_of
from edgeconv.targets.base import Artifact, Conversion, TargetContext, TargetOptions
from edgeconv.targets.tflite import TfliteTarget

VELA_DIST = "ethos-u-vela"
VELA_TESTED = "5.2.0"  # the Vela this code was written against (its stdout wording and CSV columns)
VELA_TIMEOUT_S = 600
VELA_DIR = "vela"  # Vela's --output-dir, inside the bundle
DEFAULT_VELA_CONFIG = "Arm/vela.ini"  # relative to the ethosu package's config_files folder
NPU_OP = "ethos-u"  # the TFLite custom op Vela puts in place of each NPU part
ESTIMATE_LABEL = "Vela estimate (Vela's static performance model of the configured NPU and memory system; not a measured latency)"
HOST_EMULATION_NOTE = "host emulation of the int8 graph on LiteRT; the Vela NPU binary itself was not executed"


# -- Vela's configuration -----------------------------------------------------------------------------------
def vela_config_file(name: str = DEFAULT_VELA_CONFIG) -> Path:
    """A vela.ini shipped inside the installed ethosu package (``vela --list-config-files`` names them)."""
    from importlib import resources

    try:
        root = resources.files("ethosu") / "config_files"
    except ModuleNotFoundError as exc:
        raise MissingDependency(f"{VELA_DIST} is not installed (needed to compile for the Ethos-U NPU)",
                                hint="install it with: pip install 'edgeconv[ethos-u]'") from exc
    path = Path(str(root.joinpath(*name.split("/"))))
    if not path.is_file():
        raise PreflightError(f"Vela's configuration file {name!r} is not in {root} (vela --list-config-files lists them)")
    return path


def device_settings(profile) -> dict[str, str]:
    """The three Vela settings a profile must name, plus the vela.ini they are defined in."""
    dev = profile.raw.get("device", {})
    missing = [k for k in ("accelerator_config", "system_config", "memory_mode") if not dev.get(k)]
    if missing:
        raise PreflightError(f"device profile {profile.name} lacks [device] {', '.join(missing)} (Vela would fall back to its "
                             "internal defaults, a different memory system)")
    return {"accelerator_config": dev["accelerator_config"], "system_config": dev["system_config"],
            "memory_mode": dev["memory_mode"], "vela_config": dev.get("vela_config", DEFAULT_VELA_CONFIG)}


def settings_problems(settings: dict[str, str], ini: Path) -> list[str]:
    """What Vela would reject (an unknown section) or silently accept (a system config of another NPU)."""
    parser = configparser.ConfigParser()
    parser.read(ini)
    problems = []
    for key, section in (("system_config", "System_Config"), ("memory_mode", "Memory_Mode")):
        if f"{section}.{settings[key]}" not in parser.sections():
            known = sorted(s.split(".", 1)[1] for s in parser.sections() if s.startswith(section + "."))
            problems.append(f"{key} {settings[key]!r} is not defined in {ini.name} (defined: {', '.join(known)})")
    npu = re.match(r"ethos-(u\d+)-\d+$", settings["accelerator_config"])
    sys_npu = re.match(r"Ethos_(U\d+)_", settings["system_config"])
    if npu is None:
        problems.append(f"accelerator_config {settings['accelerator_config']!r} is not an Ethos-U configuration "
                        "(e.g. ethos-u55-128)")
    elif sys_npu and sys_npu.group(1).lower() != npu.group(1):
        # Vela compiles such a pair without a word; its estimate would then describe a system that cannot exist.
        problems.append(f"system_config {settings['system_config']!r} describes an Ethos-{sys_npu.group(1)} system, "
                        f"not the {settings['accelerator_config']} accelerator")
    return problems


# -- running Vela -------------------------------------------------------------------------------------------
def vela_command(tflite: Path, outdir: Path, settings: dict[str, str], config: Path) -> list[str]:
    """Vela's command line (the ``vela`` console script's arguments)."""
    return ["--accelerator-config", settings["accelerator_config"], "--system-config", settings["system_config"],
            "--memory-mode", settings["memory_mode"], "--config", str(config), "--output-dir", str(outdir),
            "--show-cpu-operations", str(tflite)]


def run_vela(tflite: Path, outdir: Path, settings: dict[str, str], config: Path,
             failed_dir: Path | None = None) -> dict[str, Any]:
    """Compile with Vela (this interpreter's ethosu package; argument list, timeout, check=True), keep its log."""
    args = vela_command(tflite, outdir, settings, config)
    # ``python -c`` rather than the ``vela`` script: the Vela of this environment, whether or not its bin/ is on PATH.
    cmd = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=VELA_TIMEOUT_S, check=True)
    except subprocess.CalledProcessError as exc:
        log = (exc.stdout or "") + (exc.stderr or "")
        hint = None
        if failed_dir is not None:
            failed_dir.mkdir(parents=True, exist_ok=True)
            (failed_dir / "vela.log").write_text(log)
            hint = f"full log: {failed_dir / 'vela.log'}"
        last = next((ln for ln in reversed((exc.stderr or exc.stdout or "").strip().splitlines()) if ln.strip()), "")
        raise ConversionFailed(f"Vela {version_of(VELA_DIST)} failed (exit {exc.returncode}): {shorten(last, 400)}",
                               details=shorten(log, 3000, keep="tail"), hint=hint) from exc
    except subprocess.TimeoutExpired as exc:
        raise ConversionFailed(f"Vela did not finish in {VELA_TIMEOUT_S} s") from exc
    (outdir / "vela.log").write_text(proc.stdout + (("\n--- stderr ---\n" + proc.stderr) if proc.stderr.strip() else ""))
    compiled = outdir / f"{tflite.stem}_vela.tflite"
    summary = outdir / f"{tflite.stem}_summary_{settings['system_config']}.csv"
    for f in (compiled, summary):
        if not f.exists():
            raise ConversionFailed(f"Vela exited 0 but wrote no {f.name}", details=shorten(proc.stdout, 3000, keep="tail"))
    return {"command": ["vela", *args], "stdout": proc.stdout, "compiled": compiled, "summary_csv": summary,
            "log": outdir / "vela.log"}


# -- Vela's report ------------------------------------------------------------------------------------------
def _num(value: str) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def parse_summary_csv(path: Path) -> dict[str, Any]:
    """Vela's ``<model>_summary_<system config>.csv`` (one row per network): configuration, cycles, time, memory.

    Memory columns are KiB in Vela's CSV; inference_time is seconds (cycles_total / core_clock)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != 1:
        raise ConversionFailed(f"Vela's summary {Path(path).name} has {len(rows)} rows; edgeconv expects one network")
    r = rows[0]
    clock = _num(r.get("core_clock"))
    t = _num(r.get("inference_time"))
    cycles = _num(r.get("cycles_total"))
    out = {
        "label": ESTIMATE_LABEL,
        "network": r.get("network"),
        "accelerator_config": r.get("accelerator_configuration"),
        "system_config": r.get("system_config"),
        "memory_mode": r.get("memory_mode"),
        "core_clock_hz": clock,
        "core_clock_mhz": clock / 1e6 if clock else None,
        "batch_size": int(_num(r.get("batch_size")) or 1),
        "cycles_total": int(cycles) if cycles is not None else None,
        "cycles_npu": int(_num(r.get("cycles_npu")) or 0),
        "inference_time_ms": t * 1e3 if t is not None else None,
        "inferences_per_second": _num(r.get("inferences_per_second")),
        "nn_macs": int(_num(r.get("nn_macs")) or 0),
        "weights_storage_area": r.get("weights_storage_area"),
        "feature_map_storage_area": r.get("feature_map_storage_area"),
        "arena_cache_size_bytes": _num(r.get("arena_cache_size")),
    }
    for mem in ("sram", "dram", "on_chip_flash", "off_chip_flash"):
        out[f"{mem}_used_kib"] = _num(r.get(f"{mem}_memory_used"))
    out["off_chip_used_kib"] = sum(out[f"{m}_used_kib"] or 0.0 for m in ("dram", "off_chip_flash"))
    return out


_OP_SPLIT = re.compile(r"^(CPU|NPU) operators\s*=\s*(\d+)\s*\(\s*([\d.]+)%\)", re.M)
_OP_LINE = re.compile(r"^\s+(CPU|NPU): (\S+) = (.*?)(?: \(outputs \[[^\]]*\]\))?\s*$")
_WARNING = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'$")


def parse_vela_stdout(text: str) -> dict[str, Any]:
    """Vela's network summary on stdout (with --show-cpu-operations): the NPU/CPU operator counts as Vela counts
    them (after its own graph rewriting), the operators on each side, and its reason for each CPU operator."""
    out: dict[str, Any] = {"npu_ops": None, "cpu_ops": None, "npu_list": [], "cpu_list": []}
    for side, n, _pct in _OP_SPLIT.findall(text):
        out[f"{side.lower()}_ops"] = int(n)
    reasons: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _WARNING.match(line.strip())
        if m:
            # "Reason: ..." then optional detail lines, up to the next blank line
            body = []
            for nxt in lines[i + 1:]:
                if not nxt.strip():
                    break
                body.append(nxt.strip().removeprefix("Reason: "))
            reasons.setdefault(m.group(2), []).append({"op": m.group(1), "reason": " — ".join(body)})
            continue
        m = _OP_LINE.match(line)
        if m:
            out[f"{m.group(1).lower()}_list"].append({"op": m.group(2), "name": m.group(3)})
    for row in out["cpu_list"]:
        row["reasons"] = reasons.get(row["name"], [])
    out["warnings"] = sum(len(v) for v in reasons.values())
    m = re.search(r"^Accelerator clock\s+([\d.]+)\s*MHz", text, re.M)
    out["clock_mhz_reported"] = float(m.group(1)) if m else None
    return out


def mapping_check(report: dict[str, Any], estimate: dict[str, Any], graph_ops: list[str],
                  min_share: float | None) -> dict[str, Any]:
    """The ``ethos-u-npu-mapping`` check: ok when the NPU share reaches ``min_share`` (default: when any operator
    maps), with the CPU operators and Vela's reason for each, and Vela's estimate."""
    npu, cpu = report["npu_ops"], report["cpu_ops"]
    if npu is None or cpu is None:
        raise ConversionFailed(f"Vela's output has no 'NPU operators = N' / 'CPU operators = N' lines (this code was written "
                               f"against Vela {VELA_TESTED}; installed: {version_of(VELA_DIST)})")
    share = npu / max(npu + cpu, 1)
    ok = npu > 0 if min_share is None else share >= min_share
    cpu_left = [{"name": r["name"], "vela_op": r["op"], "ops": [w["op"] for w in r["reasons"]],
                 "reason": "; ".join(f"{w['op']}: {w['reason']}" for w in r["reasons"]) or "no reason given by Vela"}
                for r in report["cpu_list"]]
    reason = None
    if not ok:
        reason = ("Vela placed no operator on the Ethos-U NPU (it exited 0 all the same): the model would run entirely on the CPU"
                  if npu == 0 else f"NPU share {share:.0%} of operators is below the minimum {min_share}")
        if cpu_left:
            # the same reason for many operators, told once (without the tensor names Vela puts in parentheses)
            generic = [re.sub(r"\s*\((?:[^()]|\([^()]*\))*\)", "", w["reason"]) for r in report["cpu_list"] for w in r["reasons"]]
            kinds = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in Counter(o for r in cpu_left for o in r["ops"]).items())
            reason += (f"; {len(cpu_left)} operator(s) left on the CPU" + (f" ({kinds})" if kinds else "")
                       + (": " + " | ".join(list(dict.fromkeys(generic))[:3]) if generic else ""))
    return {
        "kind": "ethos-u-npu-mapping", "ok": ok, "reason": reason, "min_npu_share": min_share,
        "ops": npu + cpu, "npu_ops": npu, "cpu_ops": cpu, "npu_share_ops": share,
        "ops_counted_by": "Vela, after its graph rewriting (e.g. a fused activation counts as its own operator)",
        "cpu_operators": cpu_left,
        "compiled_graph_ops": graph_ops,
        "npu_custom_ops": graph_ops.count(NPU_OP),
        "estimate": estimate,
    }


# -- the target ---------------------------------------------------------------------------------------------
class EthosUTarget(TfliteTarget):
    name = "ethos-u"
    int16_activations = False  # Vela compiles 16x8 TFLite models too, but the guard does not offer it here yet
    precisions = ("int8",)
    dynamic_batch = False
    needs_calibration = ("int8",)
    float_ops_reported = True  # the CPU runs them; the mapping report and --min-*-share decide
    static_shapes = True  # the accelerator's compiler maps no op whose tensors have a dynamic dimension

    def check_options(self, profile, opts: TargetOptions) -> None:
        try:
            super().check_options(profile, opts)
        except PreflightError as exc:
            if opts.precision in profile.precisions and opts.precision in self.precisions:
                raise
            raise PreflightError(exc.message, hint="the Ethos-U NPU runs quantized operators only (Vela leaves every float "
                                                   "operator on the CPU): use --precision int8 with --calib DATA.npz") from exc
        if version_of(VELA_DIST) is None:
            raise MissingDependency(f"{VELA_DIST} (Arm's Vela compiler) is not installed (needed for {profile.name})",
                                    hint="install it with: pip install 'edgeconv[ethos-u]'")
        settings = device_settings(profile)
        problems = settings_problems(settings, vela_config_file(settings["vela_config"]))
        if problems:
            raise PreflightError(f"device profile {profile.name} does not describe a system Vela can compile for:\n  - "
                                 + "\n  - ".join(problems), hint=f"the profile is {profile.path}")

    def convert(self, onnx_path: Path, workdir: Path, profile, opts: TargetOptions, ctx: TargetContext) -> Conversion:
        from edgeconv.targets.tflite import tflite_graph

        conv = super().convert(onnx_path, workdir, profile, opts, ctx)
        model = next(a for a in conv.artifacts if a.role == "model")
        settings = device_settings(profile)
        outdir = workdir / VELA_DIR
        outdir.mkdir()
        # The bundle keeps the exact vela.ini used (and Vela does not warn about a copy outside its package).
        config = outdir / "vela.ini"
        source_ini = vela_config_file(settings["vela_config"])
        shutil.copyfile(source_ini, config)
        run = run_vela(workdir / model.file, outdir, settings, config, ctx.failed_build_dir)
        report = parse_vela_stdout(run["stdout"])
        estimate = parse_summary_csv(run["summary_csv"])
        # The LiteRT interpreter loads a model with a custom op (it only refuses at allocate_tensors), so the
        # compiled graph can be listed like any other.
        graph_ops = [op["op"] for op in tflite_graph(run["compiled"])[0]]
        check = mapping_check(report, estimate, graph_ops, opts.extra.get("min_npu_share"))
        if (check["npu_ops"] > 0) != (check["npu_custom_ops"] > 0):
            raise ConversionFailed(f"Vela reports {check['npu_ops']} NPU operator(s) but its output holds "
                                   f"{check['npu_custom_ops']} {NPU_OP!r} custom op(s)",
                                   details=shorten(run["stdout"], 3000, keep="tail"))
        clock = profile.raw.get("device", {}).get("core_clock_mhz")
        if clock is not None and estimate["core_clock_mhz"] is not None and abs(clock - estimate["core_clock_mhz"]) > 1e-6:
            check["clock_note"] = (f"the profile says {clock} MHz; Vela's system config {settings['system_config']} runs "
                                   f"{estimate['core_clock_mhz']:g} MHz, which the estimate uses")
        vela_version = version_of(VELA_DIST)
        check.update({"vela_version": vela_version, **settings})
        conv.checks.append(check)
        model.extra["host_emulation"] = True
        model.extra["host_emulation_note"] = HOST_EMULATION_NOTE

        def rel(p: Path) -> str:
            return p.relative_to(workdir).as_posix()

        record = {
            "compiler": f"vela {vela_version}", "vela_tested": VELA_TESTED, **settings,
            "vela_config_source": str(source_ini), "vela_config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
            # Vela's command line as it can be re-run from the bundle's parent directory (the bundle is built in a
            # temporary directory and renamed, so its absolute paths would be wrong)
            "command": [("BUNDLE/" + rel(Path(a))) if a.startswith(str(workdir)) else a for a in run["command"]],
            "tflite": model.file, "summary_csv": rel(run["summary_csv"]), "log": rel(run["log"]),
            "npu_custom_ops": check["npu_custom_ops"],
            "runs_on": "an Ethos-U NPU (or Arm's Corstone FVP) through TensorFlow Lite Micro's ethos-u kernel; not this host",
        }
        model.extra["npu_build"] = {"format": "vela", "built": True, "file": rel(run["compiled"])}
        conv.artifacts += [Artifact(rel(run["compiled"]), "npu-model", "int8", None, {"vela": record, "estimate": estimate}),
                           Artifact(rel(run["summary_csv"]), "report", "int8"), Artifact(rel(run["log"]), "log", "int8"),
                           Artifact(rel(config), "config", "int8")]
        return conv
