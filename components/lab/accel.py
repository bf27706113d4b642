"""Choosing QEMU's accelerator: KVM only where the CPU offers hardware virtualisation, else TCG.

A ``/dev/kvm`` alone is not enough: on the lab's CI machines it is a paravirtual KVM on which stock
guests hang, and those machines show neither ``vmx`` nor ``svm`` in ``/proc/cpuinfo``.
"""

from __future__ import annotations

import enum
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
KVM_DEVICE = Path("/dev/kvm")
HARDWARE_VIRTUALISATION_FLAGS = frozenset({"vmx", "svm"})
# TCG translation-block cache: QEMU's default (1 GiB on 64-bit hosts) is what makes a guest cost
# more memory than it has; 256 MiB keeps a 1 GiB guest near 0.75 GB resident at no visible cost.
TCG_TRANSLATION_CACHE_MIB = 256


class Accel(enum.StrEnum):
    KVM = "kvm"
    TCG = "tcg"


def cpu_has_hardware_virtualisation(cpuinfo: str) -> bool:
    """True when any ``flags`` line of a ``/proc/cpuinfo`` text lists vmx or svm."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and HARDWARE_VIRTUALISATION_FLAGS & set(value.split()):
            return True
    return False


def choose_accel(cpuinfo: str, kvm_device_present: bool) -> Accel:
    """KVM when the CPU flags show vmx/svm and /dev/kvm exists; TCG otherwise."""
    if kvm_device_present and cpu_has_hardware_virtualisation(cpuinfo):
        return Accel.KVM
    return Accel.TCG


def detect_accel() -> Accel:
    """:func:`choose_accel` for this machine."""
    try:
        cpuinfo = CPUINFO.read_text()
    except OSError:
        cpuinfo = ""
    return choose_accel(cpuinfo, KVM_DEVICE.exists())


def accel_args(accel: Accel) -> list[str]:
    """QEMU arguments selecting the accelerator and a CPU model that suits it."""
    if accel is Accel.KVM:
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", f"tcg,tb-size={TCG_TRANSLATION_CACHE_MIB}"]
