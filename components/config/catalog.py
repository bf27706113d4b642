"""Static facts the config boundary checks against: GPU models, the EU/EEA, CUDA/driver minimums,
and where each provider's regions and datacenters are.

Kept as plain data so the plan, the preflight step, the policy pack and the verification suites
share one source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sovereign_weights.units import GIB


@dataclass(frozen=True)
class GpuModel:
    """One datacenter GPU SKU as it shows up on the PCI bus and in NVML."""

    name: str
    pci_device_id: str  # NVIDIA vendor 10de; device id as lspci -n prints it
    memory_gib: int  # the marketing size
    nvml_name_fragment: str  # substring of nvmlDeviceGetName for this SKU
    # What CUDA reports as the device's total (cudaMemGetInfo, torch.cuda.mem_get_info()[1]): the
    # figure vLLM multiplies by --gpu-memory-utilization. The driver keeps back part of the
    # marketing size (and, on GDDR6 with ECC on, a sixteenth of it), so sizing on memory_gib
    # overstates what a server can allocate.
    usable_bytes: int
    usable_source: str  # where usable_bytes comes from, with the quoted figure

    @property
    def compute_capability(self) -> tuple[int, int]:
        """The SKU's CUDA compute capability (kernels and weight layouts depend on it)."""
        return COMPUTE_CAPABILITIES[self.name.split("-")[0]]


# CUDA compute capability by GPU family, from NVIDIA's "CUDA GPUs" table
# (developer.nvidia.com/cuda-gpus): Hopper 9.0, Ada Lovelace 8.9, Ampere A100 8.0.
COMPUTE_CAPABILITIES: dict[str, tuple[int, int]] = {
    "H100": (9, 0),
    "H200": (9, 0),
    "A100": (8, 0),
    "L40S": (8, 9),
    "L4": (8, 9),
    "RTX": (8, 9),
}


def _gib(value: float) -> int:
    """Bytes in ``value`` GiB, for totals that logs print in GiB to two decimals."""
    return round(value * GIB)


def _mib(value: int) -> int:
    return value * 2**20


# Where a figure is logged in GiB to two decimals it is exact to about 5 MiB. Totals vary by a few
# tens of MiB between driver releases (an H100 80GB HBM3 reports 79.11 to 79.25 GiB); the lowest
# figure found is kept, so a plan that fits it fits the others.
_H100_80GB = (
    "vllm-project/vllm#27508 (nvidia-smi: NVIDIA H100 80GB HBM3, 81559MiB): 'GPU 0 has a total capacity of 79.11 GiB'"
    " (torch OOM message, cudaMemGetInfo total); other H100 80GB logs read 79.19 and 79.22 GiB"
    " (vllm-project/vllm#10511: 'total_gpu_memory 79.22GiB')"
)
_H200 = (
    "vllm-project/vllm#23192 (141 GB H200 node): 'Free memory on device (7.34/139.72 GiB) on"
    " startup' (vLLM MemorySnapshot.total_memory); other H200 logs read 139.80 and 139.81 GiB"
)
_A100_80GB = (
    "vllm-project/vllm-omni#276 (2x A100 80GB): 'Free memory on device (0.49/79.32 GiB) on"
    " startup' (vLLM MemorySnapshot.total_memory)"
)
_A100_40GB = (
    "bottlerocket-os/bottlerocket#3873, deviceQuery on 'NVIDIA A100-SXM4-40GB': 'Total amount"
    " of global memory: 40339 MBytes (42298834944 bytes)' (cudaDeviceProp.totalGlobalMem)"
)
_L40S = (
    "Wan-Video/Wan2.1#205 ('GPU:L40S 48GB'): 'GPU 0 has a total capacity of 44.53 GiB'"
    " (torch OOM message); nvidia-smi shows 46068MiB with ECC on (modal-labs/modal-client#2797)"
)


# PCI device ids from the PCI ID repository (pci-ids.ucw.cz, vendor 10de).
GPU_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("H100-SXM5-80GB", "2330", 80, "H100 80GB HBM3", _gib(79.11), _H100_80GB),
        GpuModel(
            "H100-PCIE-80GB",
            "2331",
            80,
            "H100 PCIe",
            _gib(79.11),
            "derived: no CUDA total found for the PCIe card; it has the SXM card's nvidia-smi"
            " total (81559MiB, modal-labs/modal-client#2797), so the SXM figure is used: "
            + _H100_80GB,
        ),
        GpuModel(
            "H100-NVL-94GB",
            "2321",
            94,
            "H100 NVL",
            _gib(93.00),
            "ali-vilab/VACE#56 ('H100 NVL 94GB VRAM (RunPod)'): 'GPU 0 has a total capacity of"
            " 93.00 GiB' (torch OOM message, cudaMemGetInfo total)",
        ),
        GpuModel("H200-SXM5-141GB", "2335", 141, "H200", _gib(139.72), _H200),
        GpuModel(
            "H200-NVL-141GB",
            "233b",
            141,
            "H200 NVL",
            _gib(139.72),
            "derived: no CUDA total found for the NVL card; it carries the SXM card's 141 GB of"
            " HBM3e (nvidia-smi 143771MiB, vllm-project/recipes#381), so the SXM figure is used: "
            + _H200,
        ),
        GpuModel("A100-SXM4-80GB", "20b2", 80, "A100-SXM4-80GB", _gib(79.32), _A100_80GB),
        GpuModel("A100-SXM4-40GB", "20b0", 40, "A100-SXM4-40GB", 42298834944, _A100_40GB),
        GpuModel(
            "A100-PCIE-80GB",
            "20b5",
            80,
            "A100 80GB PCIe",
            _gib(79.32),
            "derived: the source does not name the form factor; both 80GB cards show 81920MiB"
            " in nvidia-smi (modal-labs/modal-client#2797): " + _A100_80GB,
        ),
        GpuModel(
            "A100-PCIE-40GB",
            "20f1",
            40,
            "A100-PCIE-40GB",
            42298834944,
            "derived: no CUDA total found for the PCIe card; it has the SXM4 card's nvidia-smi"
            " total (40960MiB, modal-labs/modal-client#2797), so the SXM4 figure is used: "
            + _A100_40GB,
        ),
        GpuModel("L40S-48GB", "26b9", 48, "L40S", _gib(44.53), _L40S),
        GpuModel(
            "L4-24GB",
            "27b8",
            24,
            "L4",
            _gib(22.05),
            "pytorch/pytorch#175666 (vLLM CI, 24 GB cards): 'Free memory on device cuda:1"
            " (19.77/22.05 GiB) on startup' (vLLM MemorySnapshot.total_memory); nvidia-smi shows"
            " 23034MiB for the L4 (modal-labs/modal-client#2797), 0.44 GiB above it",
        ),
        GpuModel(
            "RTX-6000-ADA-48GB",
            "26b1",
            48,
            "RTX 6000 Ada",
            _gib(44.53),
            "derived: no CUDA total found; same AD102 die and 48 GB of GDDR6 as the L40S, so with"
            " ECC on (a sixteenth of GDDR6 kept for it) the L40S figure applies; with ECC off"
            " CUDA reports about a sixteenth more: " + _L40S,
        ),
        GpuModel(
            "RTX-4000-SFF-ADA-20GB",
            "27b0",
            20,
            "RTX 4000 SFF Ada",
            _mib(18740),
            "derived: nvidia-smi shows 20475MiB with ECC off; ECC on keeps a sixteenth"
            " (19195MiB, as 46068 of 49152MiB on the L40S and 23034 of 24576MiB on the L4), less"
            " the 455MiB the driver keeps from CUDA on the L4 (23034MiB in nvidia-smi, 22.05 GiB"
            " in pytorch/pytorch#175666) = 18740MiB",
        ),
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

# Where each provider's regions, zones and sites are (the providers' own location lists), as
# ISO 3166-1 alpha-2 codes. Zones and numbered sites map through their region (see
# :func:`region_country`). The config boundary refuses a host whose region or datacenter this table
# places outside the residency policy, whatever its ``country`` says; the policy pack refuses cloud
# resources placed there.
PROVIDER_LOCATIONS: dict[str, dict[str, str]] = {
    "aws": {
        "eu-central-1": "DE", "eu-central-2": "CH", "eu-west-1": "IE", "eu-west-2": "GB",
        "eu-west-3": "FR", "eu-north-1": "SE", "eu-south-1": "IT", "eu-south-2": "ES",
        "us-east-1": "US", "us-east-2": "US", "us-west-1": "US", "us-west-2": "US",
    },
    "gcp": {
        "europe-west1": "BE", "europe-west2": "GB", "europe-west3": "DE", "europe-west4": "NL",
        "europe-west6": "CH", "europe-west8": "IT", "europe-west9": "FR", "europe-west10": "DE",
        "europe-west12": "IT", "europe-north1": "FI", "europe-north2": "SE",
        "europe-central2": "PL", "europe-southwest1": "ES", "us-central1": "US",
    },
    "azure": {
        "westeurope": "NL", "northeurope": "IE", "germanywestcentral": "DE", "germanynorth": "DE",
        "francecentral": "FR", "francesouth": "FR", "swedencentral": "SE", "polandcentral": "PL",
        "italynorth": "IT", "spaincentral": "ES", "norwayeast": "NO", "norwaywest": "NO",
        "switzerlandnorth": "CH", "uksouth": "GB", "eastus": "US",
    },
    "hetzner": {"fsn1": "DE", "nbg1": "DE", "hel1": "FI", "ash": "US", "hil": "US", "sin": "SG"},
    "scaleway": {"fr-par": "FR", "nl-ams": "NL", "pl-waw": "PL"},
    "ovh": {
        "gra": "FR", "sbg": "FR", "rbx": "FR", "waw": "PL", "lim": "DE", "bhs": "CA", "uk": "GB",
    },
    "ionos": {"de/fra": "DE", "de/txl": "DE", "es/vit": "ES", "fr/par": "FR", "gb/lhr": "GB"},
}  # fmt: skip

# Other spellings of the providers above, as stack files and Pulumi packages name them.
PROVIDER_ALIASES: dict[str, str] = {
    "amazon": "aws",
    "google": "gcp",
    "googlecloud": "gcp",
    "microsoft": "azure",
    "hcloud": "hetzner",
    "hetzner-cloud": "hetzner",
    "hetzner-online": "hetzner",
    "ovhcloud": "ovh",
    "ionos-cloud": "ionos",
}

# Every provider's locations in one map (no two providers name one location differently).
REGION_COUNTRIES: dict[str, str] = {
    name: country for table in PROVIDER_LOCATIONS.values() for name, country in table.items()
}


def provider_locations(provider: str) -> dict[str, str] | None:
    """One provider's location table, or None for a provider the table does not know."""
    key = provider.strip().lower()
    return PROVIDER_LOCATIONS.get(PROVIDER_ALIASES.get(key, key))


def region_country(value: str, provider: str | None = None) -> str | None:
    """The country of a region, zone or datacenter name, or None when it is not known.

    A known ``provider``'s own table is asked first, then every provider's (a name no provider
    shares: a stack that calls a Hetzner host's region ``us-east-1`` still placed it in the US).
    """
    own = provider_locations(provider) if provider else None
    name = value.strip().lower()
    candidates = (
        name,
        re.sub(r"(?<=[0-9])[a-z]$", "", name),  # eu-central-1a
        re.sub(r"-[0-9]+$", "", name),  # fr-par-1
        re.sub(r"-[a-z]$", "", name),  # europe-west3-a
        name.split("-")[0],  # fsn1-dc14
        re.sub(r"[0-9]+$", "", name),  # gra11, waw1
    )
    for table in (own or {}, REGION_COUNTRIES):
        for candidate in candidates:
            if candidate in table:
                return table[candidate]
    return None


# The entry points the Traefik chart's values define for HTTP (port 80) and HTTPS (port 443).
TRAEFIK_WEB_ENTRY_POINT = "web"
TRAEFIK_WEBSECURE_ENTRY_POINT = "websecure"


@dataclass(frozen=True)
class PackagedTraefik:
    """The Traefik Helm chart one K3s release line installs, and what the edge plan relies on in
    it (its values' entry-point names and the port the ``websecure`` Service exposes)."""

    chart_version: str  # as K3s serves it from /static/charts (k3s-io/k3s-charts)
    upstream_chart_version: str  # the traefik/traefik-helm-chart tag it is built from
    traefik_major: int
    first_patch: int  # earlier patch releases of the line packaged another chart
    web_entry_point: str = TRAEFIK_WEB_ENTRY_POINT
    websecure_entry_point: str = TRAEFIK_WEBSECURE_ENTRY_POINT
    websecure_exposed_port: int = 443


# K3s minor -> the Traefik chart its releases package (K3s ``manifests/traefik.yaml``), checked
# against the chart's own template in tests/data/traefik-chart-<upstream version>/.
# v1.31: chart 27.0.201+up27.0.2 (Traefik v2.11) from v1.31.2; v1.31.0 and v1.31.1 came before it.
# Not listed: v1.32 and later change the packaged chart inside the line (k3s-io/k3s #11744:
# Traefik v3 from v1.32.1; #13805 and its backports #13812-#13815: chart 39.0.501+up39.0.5 in the
# 2026-03 patches of v1.32 to v1.35), so a minor alone does not name their chart.
K3S_PACKAGED_TRAEFIK: dict[str, PackagedTraefik] = {
    "1.31": PackagedTraefik(
        chart_version="27.0.201+up27.0.2",
        upstream_chart_version="27.0.2",
        traefik_major=2,
        first_patch=2,
    ),
}

# A K3s release as its tags spell it: v<minor>.<patch>+k3s<n> (v1.31.6+k3s1).
K3S_RELEASE = re.compile(r"v(1\.[0-9]{2})\.([0-9]{1,2})\+k3s[0-9]", re.ASCII)


def packaged_traefik(k3s_version: str) -> PackagedTraefik:
    """The Traefik chart K3s ``k3s_version`` (``v1.31.6+k3s1``) packages.

    Raises ValueError naming the releases the table knows when it does not know this one: the
    edge timeouts are set in a form only a known chart is checked to pass through."""
    match = K3S_RELEASE.fullmatch(k3s_version)
    known = "; ".join(
        f"v{minor}.{entry.first_patch} or a later v{minor} patch (Traefik chart "
        f"{entry.chart_version})"
        for minor, entry in sorted(K3S_PACKAGED_TRAEFIK.items())
    )
    if not match:
        raise ValueError(f"expected a K3s release like v1.31.6+k3s1: {known}")
    minor, patch = match.group(1), int(match.group(2))
    entry = K3S_PACKAGED_TRAEFIK.get(minor)
    if entry is None or patch < entry.first_patch:
        raise ValueError(
            f"K3s v{minor}.{patch} packages a Traefik chart this toolkit has not checked its edge "
            f"settings against; expected {known}"
        )
    return entry
