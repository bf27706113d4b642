"""Static facts the config boundary checks against: GPU models, the EU/EEA, CUDA/driver minimums.

Kept as plain data so the plan, the preflight step and the verification suites share one source.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuModel:
    """One datacenter GPU SKU as it shows up on the PCI bus and in NVML."""

    name: str
    pci_device_id: str  # NVIDIA vendor 10de; device id as lspci -n prints it
    memory_gib: int
    nvml_name_fragment: str  # substring of nvmlDeviceGetName for this SKU


# PCI device ids from the PCI ID repository (pci-ids.ucw.cz, vendor 10de).
GPU_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("H100-SXM5-80GB", "2330", 80, "H100 80GB HBM3"),
        GpuModel("H100-PCIE-80GB", "2331", 80, "H100 PCIe"),
        GpuModel("H100-NVL-94GB", "2321", 94, "H100 NVL"),
        GpuModel("H200-SXM5-141GB", "2335", 141, "H200"),
        GpuModel("H200-NVL-141GB", "233b", 141, "H200 NVL"),
        GpuModel("A100-SXM4-80GB", "20b2", 80, "A100-SXM4-80GB"),
        GpuModel("A100-SXM4-40GB", "20b0", 40, "A100-SXM4-40GB"),
        GpuModel("A100-PCIE-80GB", "20b5", 80, "A100 80GB PCIe"),
        GpuModel("A100-PCIE-40GB", "20f1", 40, "A100-PCIE-40GB"),
        GpuModel("L40S-48GB", "26b9", 48, "L40S"),
        GpuModel("L4-24GB", "27b8", 24, "L4"),
        GpuModel("RTX-6000-ADA-48GB", "26b1", 48, "RTX 6000 Ada"),
        GpuModel("RTX-4000-SFF-ADA-20GB", "27b0", 20, "RTX 4000 SFF Ada"),
    )
}

# EU member states (27) plus the EEA members Iceland, Liechtenstein and Norway, as ISO 3166-1
# alpha-2 codes. GDPR applies across the EEA, so transfers inside this set are not Art. 44 transfers.
EU_EEA_COUNTRIES: frozenset[str] = frozenset(
    {
        "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
        "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
        "IS", "LI", "NO",
    }
)  # fmt: skip

# Minimum Linux driver branch for each CUDA toolkit minor release, from NVIDIA's CUDA Toolkit
# release notes, table "CUDA Toolkit and Corresponding Driver Versions" (GA driver of each release).
CUDA_MIN_DRIVER_BRANCH: dict[tuple[int, int], int] = {
    (12, 0): 525,
    (12, 1): 530,
    (12, 2): 535,
    (12, 3): 545,
    (12, 4): 550,
    (12, 5): 555,
    (12, 6): 560,
    (12, 8): 570,
    (12, 9): 575,
    (13, 0): 580,
}
