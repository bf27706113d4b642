"""Static facts the config boundary checks against: GPU models, the EU/EEA, CUDA/driver minimums,
and where each provider's regions and datacenters are.

Kept as plain data so the plan, the preflight step, the policy pack and the verification suites
share one source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sovereign_weights.units import GIB

from components.config.systems import SUPPORTED_OS


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
# ISO 3166-1 alpha-2 codes, keys lower-cased. Zones and numbered sites not listed map through their
# region (see :func:`region_country`). The config boundary refuses a host whose region or
# datacenter this table places outside the residency policy, whatever its ``country`` says; the
# policy pack refuses cloud resources placed there. Non-EU/EEA places are listed on purpose: a
# place the table knows is refused by name, a place it does not know is only as good as the
# stack's ``country``.

# Scaleway: "Product availability guide" (scaleway/docs-content,
# pages/account/reference-content/products-availability.mdx, validated 2025-12-04; read
# 2026-12-02; https://www.scaleway.com/en/docs/account/reference-content/products-availability/):
# regions Paris, Amsterdam, Warsaw with Availability Zones PAR1-3, AMS1-3, WAW1-3, which the API
# and the Pulumi provider spell fr-par-1 .. pl-waw-3.
_SCALEWAY_LOCATIONS: dict[str, str] = {
    "fr-par": "FR", "fr-par-1": "FR", "fr-par-2": "FR", "fr-par-3": "FR",
    "nl-ams": "NL", "nl-ams-1": "NL", "nl-ams-2": "NL", "nl-ams-3": "NL",
    "pl-waw": "PL", "pl-waw-1": "PL", "pl-waw-2": "PL", "pl-waw-3": "PL",
}  # fmt: skip

# OVHcloud, read 2026-12-02:
# - Public Cloud regions: OVHcloud's "Available datacenters, worker nodes and persistent storage
#   flavors" guide (ovh/docs, Managed Kubernetes, updated 2026-02-03) lists GRA5, GRA7, GRA9,
#   GRA11 (Gravelines), SBG5 (Strasbourg), DE1 (Frankfurt), UK1 (London), WAW1 (Warsaw),
#   EU-WEST-RBX (Roubaix), EU-WEST-PAR (Paris, 3-AZ), EU-SOUTH-MIL (Milan, 3-AZ), SGP1 (Singapore),
#   SYD1 (Sydney), AP-SOUTH-MUM (Mumbai), BHS5 (Montreal), US-WEST-OR-1 (Oregon), US-EAST-VA-1
#   (Virginia); its "Deploying a GPU instance" guide (updated 2024-07-17) names GRA7, GRA9, GRA11,
#   BHS5. GRA1, BHS1 and the 3-AZ zones eu-west-par-a/-b/-c are the pulumi_ovh 2.22.0 SDK's own
#   examples.
# - OVHcloud API v2 location names (the API's common RegionEnum, as generated into TypeScript
#   types from OVHcloud's API schema): ca-east-bhs, ca-east-tor, eu-central-waw, eu-south-mil,
#   eu-west-eri, eu-west-gra, eu-west-lim, eu-west-par, eu-west-rbx, eu-west-sbg, ap-south-mum,
#   ap-southeast-sgp, ap-southeast-syd, us-east-vin, us-west-hil, and Local Zones
#   (eu-*-lz-<city>, us-*-lz-<city>, af-north-lz-rba; Public Cloud spells them EU-WEST-LZ-LUX-A,
#   the pulumi_ovh SDK's example). A Local Zone is placed by the city its code names;
#   eu-west-lz-dln and eu-west-lz-mnc are left out because their codes name no city
#   unambiguously (a stack that names them is placed by its ``country``; the policy pack refuses
#   them as unknown).
# - Dedicated-server datacenters: the site part of a server's datacenter (the SDK documents it as
#   "bhs1,bhs2,..."; "gra3", "rbx8"). The order datacenters public OVHcloud configurations select
#   (vin, hil, bhs, tor, gra, rbx, sbg, par, fra, lon, waw, mil, sgp, syd, ynm: Mumbai) and the
#   API v2 sites lim (Limburg) and eri (Erith, London).
_OVH_LOCATIONS: dict[str, str] = {
    # Public Cloud regions (1-AZ)
    "gra1": "FR", "gra5": "FR", "gra7": "FR", "gra9": "FR", "gra11": "FR", "sbg5": "FR",
    "de1": "DE", "uk1": "GB", "waw1": "PL", "bhs1": "CA", "bhs5": "CA",
    "sgp1": "SG", "syd1": "AU", "us-east-va-1": "US", "us-west-or-1": "US",
    # API v2 locations and the Public Cloud regions named after them (3-AZ Paris and Milan)
    "eu-west-gra": "FR", "eu-west-rbx": "FR", "eu-west-sbg": "FR", "eu-west-par": "FR",
    "eu-west-par-a": "FR", "eu-west-par-b": "FR", "eu-west-par-c": "FR",
    "eu-west-lim": "DE", "eu-central-waw": "PL", "eu-south-mil": "IT", "eu-west-eri": "GB",
    "ca-east-bhs": "CA", "ca-east-tor": "CA", "us-east-vin": "US", "us-west-hil": "US",
    "ap-south-mum": "IN", "ap-southeast-sgp": "SG", "ap-southeast-syd": "AU",
    # Local Zones
    "eu-west-lz-ams": "NL", "eu-west-lz-bru": "BE", "eu-west-lz-lux": "LU",
    "eu-west-lz-mrs": "FR", "eu-west-lz-vie": "AT", "eu-west-lz-zrh": "CH",
    "eu-central-lz-buh": "RO", "eu-central-lz-prg": "CZ", "eu-central-lz-sof": "BG",
    "eu-north-lz-cph": "DK", "eu-north-lz-hel": "FI", "eu-north-lz-osl": "NO",
    "eu-north-lz-sto": "SE", "eu-south-lz-lis": "PT", "eu-south-lz-mad": "ES",
    "eu-south-lz-mil": "IT", "af-north-lz-rba": "MA",
    "us-central-lz-slc": "US", "us-central-lz-stl": "US", "us-east-lz-atl": "US",
    "us-east-lz-bos": "US", "us-east-lz-chi": "US", "us-east-lz-dal": "US",
    "us-east-lz-mia": "US", "us-east-lz-nyc": "US", "us-west-lz-den": "US",
    "us-west-lz-lax": "US", "us-west-lz-pao": "US", "us-west-lz-phx": "US",
    "us-west-lz-sea": "US",
    # dedicated-server datacenters (and the bare site names older stacks use)
    "gra": "FR", "sbg": "FR", "rbx": "FR", "par": "FR", "lim": "DE", "fra": "DE", "waw": "PL",
    "mil": "IT", "eri": "GB", "lon": "GB", "uk": "GB", "bhs": "CA", "tor": "CA", "vin": "US",
    "hil": "US", "sgp": "SG", "syd": "AU", "ynm": "IN",
}  # fmt: skip

# Hetzner, read 2026-12-02:
# - Cloud locations (Hetzner Cloud API /locations): fsn1 Falkenstein, nbg1 Nuremberg, hel1
#   Helsinki, ash Ashburn (VA), hil Hillsboro (OR), sin Singapore; the cloud datacenters named in
#   the hcloud provider's docs (fsn1-dc8, fsn1-dc14) and in its datacenter list (nbg1-dc3,
#   hel1-dc2, ash-dc1, hil-dc1).
# - Dedicated (Robot) datacenter parks, "Data centers and connection"
#   (https://docs.hetzner.com/general/others/data-centers-and-connection, changed 2024-10-24):
#   NBG1 Nuremberg (6 datacenters), FSN1 Falkenstein (20), HEL1 Helsinki (8). The page names the
#   parks, not each FSN1-DCnn, so a datacenter maps through its park (fsn1-dc14 -> fsn1).
_HETZNER_LOCATIONS: dict[str, str] = {
    "fsn1": "DE", "nbg1": "DE", "hel1": "FI", "ash": "US", "hil": "US", "sin": "SG",
    "fsn1-dc8": "DE", "fsn1-dc14": "DE", "nbg1-dc3": "DE", "hel1-dc2": "FI",
    "ash-dc1": "US", "hil-dc1": "US",
}  # fmt: skip

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
    "hetzner": _HETZNER_LOCATIONS,
    "scaleway": _SCALEWAY_LOCATIONS,
    "ovh": _OVH_LOCATIONS,
    "ionos": {"de/fra": "DE", "de/txl": "DE", "es/vit": "ES", "fr/par": "FR", "gb/lhr": "GB"},
}  # fmt: skip

# Other spellings of the providers above, as stack files and Pulumi packages name them.
PROVIDER_ALIASES: dict[str, str] = {
    "amazon": "aws",
    "google": "gcp",
    "googlecloud": "gcp",
    "microsoft": "azure",
    "azure-native": "azure",
    "google-native": "gcp",
    "hcloud": "hetzner",
    "hetzner-cloud": "hetzner",
    "hetzner-online": "hetzner",
    "ovhcloud": "ovh",
    "ionos-cloud": "ionos",
    "ionoscloud": "ionos",
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


@dataclass(frozen=True)
class MachineType:
    """One orderable machine: a provider's instance type, flavour or bare-metal offer, and the
    GPUs it carries (``gpu_model`` is a :data:`GPU_MODELS` key)."""

    provider: str  # a PROVIDER_LOCATIONS key
    kind: str  # the source's kind: "instance", "elastic-metal", "cloud-instance", ...
    name: str  # as the provider's API spells it
    gpu_model: str
    gpu_count: int
    source: str  # where the GPU model and count come from


def _types(
    provider: str, kind: str, source: str, *entries: tuple[str, str, int]
) -> tuple[MachineType, ...]:
    return tuple(
        MachineType(provider, kind, n, model, count, source) for n, model, count in entries
    )


# Scaleway GPU Instances: "Choosing the right GPU Instance type" (scaleway/docs-content,
# pages/gpu/reference-content/choosing-gpu-instance-type.mdx, validated 2025-04-22; read
# 2026-12-02). H100-1/2-80G carry "H100 PCIe5" cards with 80 GB HBM2E (2 TB/s): the PCIe card;
# H100-SXM-2/4/8-80G carry "H100-SXM" with 80 GB HBM3 (3.35 TB/s) and NVLink: SXM5; L40S-n-48G
# "L40S 48GB PCIe"; L4-n-24G "L4 PCIe4". Not listed: RENDER-S (P100), GPU-3070-S (RTX 3070) and
# B300-SXM-n-288G, whose GPUs are not in GPU_MODELS.
_SCALEWAY_GPU_GUIDE = (
    "scaleway/docs-content pages/gpu/reference-content/choosing-gpu-instance-type.mdx "
    "(validated 2025-04-22, read 2026-12-02)"
)
_SCALEWAY_INSTANCE_TYPES = _types(
    "scaleway",
    "instance",
    _SCALEWAY_GPU_GUIDE,
    ("H100-1-80G", "H100-PCIE-80GB", 1),
    ("H100-2-80G", "H100-PCIE-80GB", 2),
    ("H100-SXM-2-80G", "H100-SXM5-80GB", 2),
    ("H100-SXM-4-80G", "H100-SXM5-80GB", 4),
    ("H100-SXM-8-80G", "H100-SXM5-80GB", 8),
    ("L40S-1-48G", "L40S-48GB", 1),
    ("L40S-2-48G", "L40S-48GB", 2),
    ("L40S-4-48G", "L40S-48GB", 4),
    ("L40S-8-48G", "L40S-48GB", 8),
    ("L4-1-24G", "L4-24GB", 1),
    ("L4-2-24G", "L4-24GB", 2),
    ("L4-4-24G", "L4-24GB", 4),
    ("L4-8-24G", "L4-24GB", 8),
)

# Scaleway Elastic Metal GPU offers (the Titanium range): changelog "New Titanium and Iridium
# offers!" (scaleway/docs-content, changelog/november2024/
# 2024-11-29-elastic-metal-added-new-titanium-and-iridium-offers.mdx; read 2026-12-02):
# EM-T220E-L40S "2x NVIDIA L40S 48 GB" (the L40S has one form factor, PCIe). Not listed:
# EM-T620E-H100 ("2x NVIDIA H100 80 GB"): neither the changelog nor the Elastic Metal datasheet
# (pages/elastic-metal/reference-content/elastic-metal-datasheet.mdx) says whether its cards are
# PCIe or SXM, and the GPU model decides usable memory and NVLink; until a source says which,
# ordering it is refused rather than guessed.
_SCALEWAY_ELASTIC_METAL_OFFERS = _types(
    "scaleway",
    "elastic-metal",
    "scaleway/docs-content changelog 2024-11-29 'New Titanium and Iridium offers!' (read 2026-12-02)",
    ("EM-T220E-L40S", "L40S-48GB", 2),
)

# OVHcloud Public Cloud GPU flavours: l4-90/180/360 carry 1/2/4 L4 (24 GB), l40s-90/180/360
# carry 1/2/4 L40S (48 GB), as transcribed from https://www.ovhcloud.com/fr/public-cloud/instances/gpu/
# (feoche/public-cost-indicator docs/catalogue-produits-complet, generated 2025-01-27; read
# 2026-12-02), with the flavour families in OVHcloud's Managed Kubernetes flavour guide (ovh/docs,
# updated 2026-02-03: A100-180, H100-*, L4-*, L40s-* in GRA11). Both cards have one form factor.
# Not listed: h100-380/760/1520 (1/2/4 H100 80 GB) and a100-180/360/720 (1/2/4 A100 80 GB): no
# source read says whether OVHcloud's H100 and A100 are PCIe or SXM cards, and GPU_MODELS keeps
# them apart; until one does, ordering them is refused rather than guessed. a10-* and the V100
# t1-*/t2-* flavours carry GPUs that are not in GPU_MODELS.
_OVH_GPU_FLAVOURS = (
    "https://www.ovhcloud.com/fr/public-cloud/instances/gpu/ as transcribed by "
    "feoche/public-cost-indicator (2025-01-27, read 2026-12-02)"
)
_OVH_CLOUD_INSTANCE_FLAVORS = _types(
    "ovh",
    "cloud-instance",
    _OVH_GPU_FLAVOURS,
    ("l4-90", "L4-24GB", 1),
    ("l4-180", "L4-24GB", 2),
    ("l4-360", "L4-24GB", 4),
    ("l40s-90", "L40S-48GB", 1),
    ("l40s-180", "L40S-48GB", 2),
    ("l40s-360", "L40S-48GB", 4),
)

# (provider, kind) -> the machines that kind orders. OVHcloud dedicated servers are not in it: a
# dedicated host is a server the team already rents (or a plan code to order), named by its
# service name, not a flavour with a fixed GPU fit-out.
MACHINE_TYPES: dict[tuple[str, str], tuple[MachineType, ...]] = {
    ("scaleway", "instance"): _SCALEWAY_INSTANCE_TYPES,
    ("scaleway", "elastic-metal"): _SCALEWAY_ELASTIC_METAL_OFFERS,
    ("ovh", "cloud-instance"): _OVH_CLOUD_INSTANCE_FLAVORS,
}


_FORM_FACTOR_UNKNOWN = (
    "no source read says whether its cards are PCIe or SXM, which decides their usable memory "
    "and NVLink; it is left out rather than guessed"
)

# Types the providers offer that the tables above leave out on purpose, with the reason, so that
# validate says why instead of calling them unknown.
UNLISTED_MACHINE_TYPES: dict[tuple[str, str], dict[str, str]] = {
    ("scaleway", "elastic-metal"): {"EM-T620E-H100": _FORM_FACTOR_UNKNOWN},
    ("ovh", "cloud-instance"): dict.fromkeys(
        ("h100-380", "h100-760", "h100-1520", "a100-180", "a100-360", "a100-720"),
        _FORM_FACTOR_UNKNOWN,
    ),
}


def unlisted_reason(provider: str, kind: str, name: str) -> str | None:
    """Why the catalog leaves a type the provider offers out, or None."""
    wanted = name.strip().casefold()
    for unlisted, reason in UNLISTED_MACHINE_TYPES.get((_provider_key(provider), kind), {}).items():
        if unlisted.casefold() == wanted:
            return reason
    return None


def _provider_key(provider: str) -> str:
    key = provider.strip().lower()
    return PROVIDER_ALIASES.get(key, key)


def machine_types_known(provider: str, kind: str) -> bool:
    """Whether the catalog has a table of ``provider``'s ``kind`` of machine."""
    return (_provider_key(provider), kind) in MACHINE_TYPES


def machine_type(provider: str, kind: str, name: str) -> MachineType | None:
    """The machine ``name`` (letter case ignored: Scaleway's API spells its offers in upper case,
    its examples sometimes not) of a provider's ``kind``, or None when the table does not know it."""
    wanted = name.strip().casefold()
    for entry in MACHINE_TYPES.get((_provider_key(provider), kind), ()):
        if entry.name.casefold() == wanted:
            return entry
    return None


def machine_types_for(provider: str, kind: str, gpu_model: str, gpu_count: int) -> tuple[str, ...]:
    """The names of a provider's ``kind`` of machine that carry exactly ``gpu_count`` GPUs of
    ``gpu_model``, in table order (what a validate error offers instead of a mismatched type)."""
    return tuple(
        entry.name
        for entry in MACHINE_TYPES.get((_provider_key(provider), kind), ())
        if entry.gpu_model == gpu_model and entry.gpu_count == gpu_count
    )


@dataclass(frozen=True)
class OsImage:
    """How a provider names one operating system: ``name`` alone, or ``name`` and ``version``
    where its API selects by both (Scaleway Elastic Metal's ``get_os``)."""

    name: str
    version: str | None = None


# Scaleway Instances: marketplace image labels, the ``image`` a scaleway.instance.Server takes.
# ubuntu_jammy and ubuntu_noble are the pulumiverse_scaleway 1.60.0 SDK's own examples;
# debian_bookworm is the label public Terraform configurations of scaleway_instance_server use
# (read 2026-12-02). Labels follow <distribution>_<codename>.
# Scaleway Elastic Metal: ``elasticmetal.get_os(name=..., version=...)``. Ubuntu 22.04 is the SDK's
# own example (name "Ubuntu", version "22.04 LTS (Jammy Jellyfish)"); Ubuntu 24.04 is "24.04 LTS
# (Noble Numbat)" (OpenNebula/one share/providers/scaleway/terraform/host/data.tf). Debian 12 is
# not listed: no source read gives the name and version the Elastic Metal OS catalogue uses for
# it (``scw baremetal os list`` shows them), so it is refused for Elastic Metal until one does.
# OVHcloud Public Cloud: image names. "Debian 12" is the pulumi_ovh 2.22.0 SDK's own example of an
# image name; "Ubuntu 22.04" and "Ubuntu 24.04" are the names public OVHcloud Public Cloud
# configurations select beside it (read 2026-12-02).
# OVHcloud dedicated: installation template names. debian12_64 is the pulumi_ovh 2.22.0 SDK's own
# example (get_installation_template); ubuntu2204-server_64 and ubuntu2404-server_64 are the
# templates public OVHcloud dedicated-server configurations install (a public test's recorded
# /dedicated/server/{serviceName}/install/compatibleTemplates answer lists debian12_64 and
# ubuntu2404-server_64; read 2026-12-02).
OS_IMAGES: dict[tuple[str, str], dict[str, OsImage]] = {
    ("scaleway", "instance"): {
        "debian-12": OsImage("debian_bookworm"),
        "ubuntu-22.04": OsImage("ubuntu_jammy"),
        "ubuntu-24.04": OsImage("ubuntu_noble"),
    },
    ("scaleway", "elastic-metal"): {
        "ubuntu-22.04": OsImage("Ubuntu", "22.04 LTS (Jammy Jellyfish)"),
        "ubuntu-24.04": OsImage("Ubuntu", "24.04 LTS (Noble Numbat)"),
    },
    ("ovh", "cloud-instance"): {
        "debian-12": OsImage("Debian 12"),
        "ubuntu-22.04": OsImage("Ubuntu 22.04"),
        "ubuntu-24.04": OsImage("Ubuntu 24.04"),
    },
    ("ovh", "dedicated"): {
        "debian-12": OsImage("debian12_64"),
        "ubuntu-22.04": OsImage("ubuntu2204-server_64"),
        "ubuntu-24.04": OsImage("ubuntu2404-server_64"),
    },
}

# Systems a provider's kind cannot install because no source gives its name there (see above);
# OS_IMAGES covers every other supported system, and a test holds the two to SUPPORTED_OS.
OS_IMAGES_NOT_FOUND: dict[tuple[str, str], frozenset[str]] = {
    ("scaleway", "elastic-metal"): frozenset({"debian-12"}),
}


def os_image(provider: str, kind: str, os_id: str) -> OsImage | None:
    """How ``provider``'s ``kind`` names the supported system ``os_id``, or None when it is not
    known there (an unsupported system, or one of :data:`OS_IMAGES_NOT_FOUND`)."""
    if os_id not in SUPPORTED_OS:
        return None
    return OS_IMAGES.get((_provider_key(provider), kind), {}).get(os_id)


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
