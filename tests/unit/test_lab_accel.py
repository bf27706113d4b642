"""Accelerator choice: KVM only with vmx/svm in the CPU flags and /dev/kvm present."""

from __future__ import annotations

import pytest

from components.lab.accel import Accel, accel_args, choose_accel

INTEL_WITH_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx ssse3 avx2\n"
AMD_WITH_SVM = "processor\t: 0\nflags\t\t: fpu svm lm\n"
# The lab's CI machines: a paravirtual /dev/kvm, but no virtualisation flags for guests.
PARAVIRTUAL_GUEST = "processor\t: 0\nflags\t\t: fpu vme hypervisor avx512f\n"


@pytest.mark.parametrize(
    ("cpuinfo", "kvm_device", "expected"),
    [
        (INTEL_WITH_VMX, True, Accel.KVM),
        (AMD_WITH_SVM, True, Accel.KVM),
        (INTEL_WITH_VMX, False, Accel.TCG),
        (PARAVIRTUAL_GUEST, True, Accel.TCG),
        ("", False, Accel.TCG),
    ],
)
def test_kvm_needs_both_cpu_flags_and_the_device(
    cpuinfo: str, kvm_device: bool, expected: Accel
) -> None:
    assert choose_accel(cpuinfo, kvm_device) is expected


def test_a_flag_name_inside_another_word_does_not_count() -> None:
    assert choose_accel("flags\t\t: fpu vmxnet avx_svmish\n", True) is Accel.TCG


def test_tcg_caps_its_translation_cache() -> None:
    assert accel_args(Accel.TCG) == ["-accel", "tcg,tb-size=256"]
    assert accel_args(Accel.KVM) == ["-accel", "kvm", "-cpu", "host"]
