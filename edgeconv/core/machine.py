"""Where the numbers were measured: host, distribution, Python, numpy, the runtime, and whether this process runs
under a user-mode emulator (then its timing is not the device's). See docs/architecture.md."""

import platform
import socket

import numpy as np

EMULATED_LABEL = "emulated on this host (qemu), not device timing"
ISA_FAMILY = {"x86_64": "x86", "amd64": "x86", "i386": "x86", "i686": "x86", "aarch64": "arm", "arm64": "arm",
              "armv7l": "arm", "armv8l": "arm", "armv6l": "arm"}  # a 64-bit kernel runs its 32-bit sibling natively


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def cpuinfo_family(text):
    """The instruction-set family of the CPU /proc/cpuinfo describes ("x86", "arm"), or None when it does not say."""
    keys = set(line.split(":", 1)[0].strip() for line in (text or "").splitlines() if ":" in line)
    if "vendor_id" in keys and "flags" in keys:
        return "x86"
    if "CPU implementer" in keys or "CPU architecture" in keys:
        return "arm"
    return None


def emulation(machine=None, read=_read):
    """Evidence, read on this machine, that this process runs under a user-mode emulator (qemu-user through binfmt): the
    kernel's own architecture, or the CPU /proc/cpuinfo describes, is of another instruction set than this process;
    or a qemu binfmt handler for this process's own architecture is registered. None on a real board.

    What qemu-user 7.2 (Debian bookworm) shows an aarch64 process in a chroot on an x86-64 host: ``platform.machine()``
    and ``uname -m`` say aarch64 (qemu rewrites uname), /proc/sys/kernel/arch says x86_64 (the kernel's), /proc/cpuinfo is
    the host's (vendor_id, flags); the auxv/hwcaps are the emulated CPU's, so they prove nothing; binfmt_misc is not
    mounted inside the chroot. A real Raspberry Pi says aarch64 everywhere and its cpuinfo has "CPU implementer"."""
    machine = machine or platform.machine()
    mine = ISA_FAMILY.get(machine, machine)
    evidence = []
    kernel = (read("/proc/sys/kernel/arch") or "").strip()
    if kernel and ISA_FAMILY.get(kernel, kernel) != mine:
        evidence.append("the kernel is %s (/proc/sys/kernel/arch) but this process is %s" % (kernel, machine))
    cpu = cpuinfo_family(read("/proc/cpuinfo"))
    if cpu and cpu != mine:
        evidence.append("/proc/cpuinfo describes an %s CPU but this process is %s" % (cpu, machine))
    handler = read("/proc/sys/fs/binfmt_misc/qemu-%s" % machine)
    if handler and handler.startswith("enabled"):
        evidence.append("qemu's binfmt handler for %s is registered here (/proc/sys/fs/binfmt_misc/qemu-%s)" % (machine, machine))
    if not evidence:
        return None
    return {"label": EMULATED_LABEL, "emulator": "qemu-user (binfmt)", "evidence": evidence}


def distribution(read=_read):
    """The OS distribution's name (/etc/os-release PRETTY_NAME), or None."""
    for line in (read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


HOST_EMULATION = "host emulation, not device"  # the kind of a figure measured here for another device
ARCH_NAMES = {"x86_64": "x86-64", "amd64": "x86-64", "AMD64": "x86-64"}


def arch_name(machine=None, read=_read):
    """This machine's architecture as people write it ("x86-64", "aarch64"): the kernel's, which qemu-user cannot hide."""
    kernel = (read("/proc/sys/kernel/arch") or "").strip() or machine or platform.machine()
    return ARCH_NAMES.get(kernel, kernel)


def is_the_device(native, info, machine=None, read=_read):
    """Whether this machine is the device a profile describes, by its ``[native]`` table (docs/architecture.md, "Measurements
    carry their quality"): ``machines`` (architectures, "*" for any CPU; [] for none: a device no host can be),
    ``device_model`` (the start of /proc/device-tree/model: "Raspberry Pi 5"), ``runtime_device`` (the device the
    runtime ran on: OpenVINO's "NPU", TensorRT's "GPU") and ``runtime_delegate`` (a word of the delegate that ran:
    "edgetpu"). Every key given must hold; a profile without the table names no device here."""
    if not native or not native.get("machines", ["*"]):
        return False
    machine = machine or platform.machine()
    machines = native.get("machines", ["*"])
    if "*" not in machines and machine not in machines and ARCH_NAMES.get(machine) not in machines:
        return False
    model = native.get("device_model")
    if model and not (read("/proc/device-tree/model") or "").strip("\x00 \n").startswith(model):
        return False
    info = info or {}
    device, delegate = native.get("runtime_device"), native.get("runtime_delegate")
    if device and str(info.get("device") or "").split(".")[0] != device:
        return False
    return not (delegate and delegate not in str(info.get("delegate") or "").lower())


def where_label(target, art, where, info, machine=None, read=_read):
    """``(kind, label)`` of a figure: ``label`` is the same words in every table and report, e.g. "host emulation on
    x86-64, not raspberry-pi-5", "native on x86-64" (this machine is the device), "on the device (jetson-nano)". ``target``: the
    manifest's target section (None: an older caller, judged by ``art`` and ``where`` alone)."""
    profile = (target or {}).get("profile") or "the device"
    here = arch_name(machine, read)
    if emulation(machine, read):
        return EMULATED_LABEL, "host emulation on %s (qemu-user), not %s" % (here, profile)
    # a target may name its emulator (qnn: QNN's HTP emulator), unless its runtime ran on the NPU itself
    if art.get("host_emulation") and info.get("emulated", True):
        return HOST_EMULATION, art.get("host_emulation_label") or "host emulation on %s, not %s" % (here, profile)
    if where == "device":
        return "device", "on the device (%s)" % profile
    if target is None or is_the_device((target.get("profile_data") or {}).get("native"), info, machine, read):
        return where, "native on %s" % here
    return HOST_EMULATION, "host emulation on %s, not %s" % (here, profile)


def measured_on(art, backend, where, target=None):
    """Where and on what the numbers were measured. ``kind``: "host" (this machine is the profile's device), "device",
    :data:`HOST_EMULATION` (measured here for another device) or, under qemu, :data:`EMULATED_LABEL` with the
    evidence (see :func:`emulation`; ``emulation`` is None on a real machine, so that a report has the same fields
    wherever it was measured). ``label``: the words every table prints (:func:`where_label`)."""
    mo = {"host": socket.gethostname(), "machine": platform.machine(), "platform": platform.platform(),
          "distribution": distribution(), "python": platform.python_version(), "numpy": np.__version__}
    mo.update(backend.info())
    mo["kind"], mo["label"] = where_label(target, art, where, mo)
    if art.get("host_emulation") and mo.get("emulated", True):
        mo["note"] = art.get("host_emulation_note")
    mo["emulation"] = emulation()
    return mo
