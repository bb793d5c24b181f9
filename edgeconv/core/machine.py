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


def measured_on(art, backend, where):
    """Where and on what the numbers were measured. Under emulation the kind is :data:`EMULATED_LABEL`, whatever the
    request said, with the evidence (see :func:`emulation`); ``emulation`` is None on a real machine, so that a report
    has the same fields wherever it was measured."""
    mo = {"host": socket.gethostname(), "machine": platform.machine(), "platform": platform.platform(),
          "distribution": distribution(), "python": platform.python_version(), "numpy": np.__version__,
          "kind": "host emulation, not device" if art.get("host_emulation") else where}
    mo.update(backend.info())
    if art.get("host_emulation"):
        mo["note"] = art.get("host_emulation_note")
    mo["emulation"] = emulation()
    if mo["emulation"]:
        mo["kind"] = EMULATED_LABEL
    return mo
