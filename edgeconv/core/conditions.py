"""The conditions a latency was measured under, read before and after the timed runs: CPU governor and frequency per
core, thermal zones, the platform's throttling flags (Raspberry Pi ``vcgencmd get_throttled``, Jetson ``nvpmodel -q``
and ``jetson_clocks --show``), load average, the other processes that used the CPU during the runs, threads. What
cannot be read on a platform is said ("not readable here: why"), never guessed. See docs/architecture.md."""

import glob
import os
import shutil
import subprocess
import time

NOT_READABLE = "not readable here"
TOOL_TIMEOUT_S = 5
BUSIEST = 5  # other processes listed, by CPU used during the timed runs
TOOLS = (("vcgencmd", "get_throttled"), ("nvpmodel", "-q"), ("jetson_clocks", "--show"))


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _number(path, scale=1.0):
    text = _read(path)
    try:
        return float(text) * scale if text is not None else None
    except ValueError:
        return None


def _cpus():
    """Per core: governor, current and max frequency (MHz) from /sys/devices/system/cpu/cpu*/cpufreq."""
    out = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*"), key=lambda p: int(p.rsplit("cpu", 1)[1])):
        f = os.path.join(d, "cpufreq")
        if os.path.isdir(f):
            out.append({"cpu": os.path.basename(d), "governor": _read(os.path.join(f, "scaling_governor")),
                        "cur_mhz": _number(os.path.join(f, "scaling_cur_freq"), 1e-3),
                        "max_mhz": _number(os.path.join(f, "cpuinfo_max_freq"), 1e-3)})
    return out


def _thermal():
    out = []
    for d in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        out.append({"zone": os.path.basename(d), "type": _read(os.path.join(d, "type")),
                    "temp_c": _number(os.path.join(d, "temp"), 1e-3)})
    return out


def _cpu_ticks():
    """utime + stime (clock ticks) and the name of every process /proc lets us read."""
    ticks = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        text = _read(stat)
        if not text or ")" not in text:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text[text.rindex(")") + 2:].split()
        try:
            ticks[int(stat.split("/")[2])] = (name, int(fields[11]) + int(fields[12]))
        except (IndexError, ValueError):
            continue
    return ticks


def snapshot():
    """What is read before and after the timed runs."""
    return {"t": time.time(), "cpus": _cpus(), "thermal": _thermal(), "ticks": _cpu_ticks()}


def _tool(argv, which=shutil.which):
    """One platform tool's answer, or why there is none."""
    if which(argv[0]) is None:
        return "%s: %s is not installed" % (NOT_READABLE, argv[0])
    try:
        res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                             timeout=TOOL_TIMEOUT_S, check=True)
    except subprocess.CalledProcessError as exc:
        return "%s: %s exited %d: %s" % (NOT_READABLE, " ".join(argv), exc.returncode, (exc.stderr or "").strip()[:200])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "%s: %s: %s" % (NOT_READABLE, " ".join(argv), exc)
    return res.stdout.strip()


def _busiest(before, after):
    """The other processes that used the most CPU between the two snapshots (one started in between: all its CPU), as
    "name (pid N): P% of one CPU"."""
    elapsed = after["t"] - before["t"]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    me = os.getpid()
    used = []
    for pid, (name, ticks) in after["ticks"].items():
        earlier = before["ticks"].get(pid, (name, 0))[1]
        if pid != me and ticks > earlier:
            used.append((ticks - earlier, pid, name))
    used.sort(reverse=True)
    return ["%s (pid %d): %.0f%% of one CPU" % (name, pid, 100.0 * t / hz / elapsed) for t, pid, name in used[:BUSIEST]
            if elapsed > 0]


def _threads():
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return None


def conditions(before, after, runtime_threads=None):
    """The report's ``conditions``: per core (governor, MHz before/after, max), thermal zones before/after, throttling
    tools, load average, the busiest other processes during the runs, threads; ``not_readable`` says what was not."""
    freq_after = dict((c["cpu"], c["cur_mhz"]) for c in after["cpus"])
    temp_after = dict((z["zone"], z["temp_c"]) for z in after["thermal"])
    load = _read("/proc/loadavg")
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    out = {
        "cpus": [{"cpu": c["cpu"], "governor": c["governor"], "cur_mhz_before": c["cur_mhz"],
                  "cur_mhz_after": freq_after.get(c["cpu"]), "max_mhz": c["max_mhz"]} for c in before["cpus"]],
        "thermal": [{"zone": z["zone"], "type": z["type"], "before_c": z["temp_c"], "after_c": temp_after.get(z["zone"])}
                    for z in before["thermal"]],
        "throttling": dict((" ".join(argv), _tool(list(argv))) for argv in TOOLS),
        "load_average": [float(v) for v in load.split()[:3]] if load else None,
        "busiest_other_processes": _busiest(before, after) if after["ticks"] else None,
        "cpus_online": os.cpu_count(), "cpus_allowed": affinity,
        "process_threads": _threads(), "runtime_threads": runtime_threads,
    }
    out["not_readable"] = _not_readable(out)
    return out


def _not_readable(out):
    missing = []
    if not out["cpus"]:
        missing.append("CPU governor and frequency: no /sys/devices/system/cpu/cpu*/cpufreq (a container or VM hides it)")
    if not out["thermal"]:
        missing.append("temperatures: no /sys/class/thermal/thermal_zone*")
    if out["load_average"] is None:
        missing.append("load average: no /proc/loadavg")
    if out["busiest_other_processes"] is None:
        missing.append("other processes' CPU: /proc/*/stat not readable")
    return missing


def summary(cond):
    """One line for people: governors, frequency and temperature ranges, load, the busiest other process."""
    parts = []
    govs = sorted(set(c["governor"] for c in cond["cpus"] if c["governor"]))
    parts.append("governor %s" % "/".join(govs) if govs else "governor %s" % NOT_READABLE)
    temps = [z["after_c"] for z in cond["thermal"] if z["after_c"] is not None]
    parts.append("max %.0f °C after" % max(temps) if temps else "temperature %s" % NOT_READABLE)
    if cond["load_average"]:
        parts.append("load %.2f" % cond["load_average"][0])
    if cond["busiest_other_processes"]:
        parts.append("busiest other: %s" % cond["busiest_other_processes"][0])
    return "; ".join(parts)
