"""The provider catalog the machine sources order from: every place of every provider's location
table is judged by the config boundary and by the policy pack alike, and the machine-type and OS
tables hold only what the rest of the toolkit can use."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi_policy import PolicyResourceOptions, ResourceValidationArgs

from components.config import StackConfigError
from components.config.catalog import (
    EU_EEA_COUNTRIES,
    GPU_MODELS,
    MACHINE_TYPES,
    OS_IMAGES,
    OS_IMAGES_NOT_FOUND,
    PROVIDER_LOCATIONS,
    REGION_COUNTRIES,
    MachineType,
    machine_type,
    machine_types_for,
    os_image,
    region_country,
)
from components.config.loader import load_stack_data
from components.config.systems import SUPPORTED_OS
from components.policy.residency import pack_config, resource_provider, validate_regions

ROOT = Path(__file__).resolve().parents[2]
NS = "sovereign-inference:"
EU = sorted(EU_EEA_COUNTRIES)

# A resource of each provider's Pulumi package that carries a location key (the type tokens of
# pulumiverse_scaleway 1.60.0 and pulumi_ovh 2.22.0 as their SDKs register them).
PROVIDER_RESOURCES: dict[str, tuple[str, str]] = {
    "scaleway": ("scaleway:instance/server:Server", "zone"),
    "ovh": ("ovh:CloudProject/instance:Instance", "region"),
    "hetzner": ("hcloud:index/server:Server", "location"),
    "aws": ("aws:ec2/instance:Instance", "availabilityZone"),
    "gcp": ("gcp:compute/instance:Instance", "zone"),
    "azure": ("azure-native:resources:ResourceGroup", "location"),
    "ionos": ("ionoscloud:compute/datacenter:Datacenter", "location"),
}


def _every_place() -> list[Any]:
    return [
        pytest.param(provider, name, country, id=f"{provider}:{name}")
        for provider, table in PROVIDER_LOCATIONS.items()
        for name, country in table.items()
    ]


def one_host_stack(provider: str, datacenter: str, country: str) -> dict[str, Any]:
    """The staging stack cut down to one byo host placed at ``datacenter`` of ``provider``, with
    the EU/EEA as its residency policy."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())
    config = data["config"]
    host = copy.deepcopy(config[f"{NS}hosts"][0])
    host.update(provider=provider, datacenter=datacenter, country=country)
    config[f"{NS}hosts"] = [host]
    config[f"{NS}residency"]["allowedCountries"] = EU
    return data


def pack_violations(resource_type: str, props: dict[str, Any]) -> list[str]:
    violations: list[str] = []
    opts = PolicyResourceOptions(False, [], None, [], None, [], None)  # type: ignore[arg-type]
    args = ResourceValidationArgs(
        resource_type,
        props,
        f"urn:pulumi:s::p::{resource_type}::gpu-1",
        "gpu-1",
        opts,
        None,
        pack_config(EU, [], [])["eu-regions-only"],
    )

    def report(message: str, _urn: str | None = None) -> None:
        violations.append(message)

    validate_regions(args, report)
    return violations


def test_every_provider_of_the_table_has_a_resource_for_the_pack_walk() -> None:
    assert set(PROVIDER_RESOURCES) == set(PROVIDER_LOCATIONS)
    for provider, (resource_type, _) in PROVIDER_RESOURCES.items():
        assert region_country(
            next(iter(PROVIDER_LOCATIONS[provider])), resource_provider(resource_type)
        )


@pytest.mark.parametrize(("provider", "name", "country"), _every_place())
def test_each_place_lies_where_its_table_says_in_any_letter_case(
    provider: str, name: str, country: str
) -> None:
    assert name == name.lower()
    assert len(country) == 2
    assert country.isupper()
    for spelling in (name, name.upper(), f" {name.title()} "):
        assert region_country(spelling, provider) == country
        assert region_country(spelling) == country  # the merged table agrees


@pytest.mark.parametrize(("provider", "name", "country"), _every_place())
def test_the_config_boundary_admits_eu_places_and_refuses_the_others(
    provider: str, name: str, country: str
) -> None:
    if "/" in name:
        pytest.skip("IONOS names a location de/fra, never a datacenter label value")
    in_eu = country in EU_EEA_COUNTRIES
    data = one_host_stack(provider, name.upper(), country if in_eu else "DE")
    if in_eu:
        config = load_stack_data(data, "case", ROOT)
        assert config.hosts[0].datacenter == name.upper()
        return
    with pytest.raises(StackConfigError) as info:
        load_stack_data(data, "case", ROOT)
    messages = {p.path: p.message for p in info.value.problems}
    assert "hosts[0].datacenter" in messages, messages
    assert name.upper() in messages["hosts[0].datacenter"]
    assert f"in {country}" in messages["hosts[0].datacenter"]


@pytest.mark.parametrize(("provider", "name", "country"), _every_place())
def test_the_policy_pack_admits_eu_places_and_refuses_the_others(
    provider: str, name: str, country: str
) -> None:
    resource_type, key = PROVIDER_RESOURCES[provider]
    violations = pack_violations(resource_type, {key: name.upper()})
    if country in EU_EEA_COUNTRIES:
        assert violations == []
        return
    (violation,) = violations
    assert resource_type in violation
    assert "'gpu-1'" in violation
    assert f"{key} {name.upper()!r} is in {country}, outside the allowed countries" in violation
    assert "DE, DK, EE" in violation  # the allowed places, named


def test_no_two_providers_place_a_shared_name_in_different_countries() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for provider, table in PROVIDER_LOCATIONS.items():
        for name, country in table.items():
            if name in seen:
                assert seen[name][1] == country, (name, seen[name][0], provider)
            seen.setdefault(name, (provider, country))
    assert {name: country for name, (_, country) in seen.items()} == REGION_COUNTRIES
    assert REGION_COUNTRIES["hil"] == "US"  # Hetzner Hillsboro and OVHcloud Hillsboro


@pytest.mark.parametrize(
    ("value", "provider", "country"),
    [
        ("fsn1-dc14", "hetzner", "DE"),
        ("FSN1-DC7", "hetzner", "DE"),  # a Robot datacenter the table does not name: its park
        ("NBG1-DC5", "hetzner", "DE"),
        ("hel1-dc6", "hetzner", "FI"),
        ("GRA3", "ovh", "FR"),  # a dedicated server's datacenter: its site
        ("rbx8", "ovh", "FR"),
        ("bhs1", "ovh", "CA"),
        ("vin1", "ovh", "US"),
        ("sgp1", "ovh", "SG"),
        ("ynm1", "ovh", "IN"),
        ("EU-SOUTH-MIL-B", "ovh", "IT"),  # a 3-AZ zone: its region
        ("EU-WEST-LZ-LUX-A", "ovh", "LU"),  # a Local Zone as Public Cloud spells it
        ("EU-WEST-LZ-ZRH-A", "ovh", "CH"),
        ("fr-par-2", "scaleway", "FR"),
        ("PL-WAW-3", "scaleway", "PL"),
    ],
)
def test_sites_and_zones_the_tables_do_not_name_map_through_their_region(
    value: str, provider: str, country: str
) -> None:
    assert region_country(value, provider) == country


def test_the_pack_asks_the_resource_providers_table_first() -> None:
    assert resource_provider("scaleway:instance/server:Server") == "scaleway"
    assert resource_provider("ovh:CloudProject/instance:Instance") == "ovh"
    # a Hetzner Cloud server in Hillsboro and an OVHcloud instance in Milan's zone b
    (us,) = pack_violations("hcloud:index/server:Server", {"location": "hil"})
    assert "is in US" in us
    assert pack_violations("ovh:CloudProject/instance:Instance", {"region": "eu-south-mil-b"}) == []
    (unknown,) = pack_violations("scaleway:instance/server:Server", {"zone": "fr-lyo-1"})
    assert "'fr-lyo-1' is not a region known" in unknown


def test_a_dedicated_server_without_a_location_key_is_left_to_validate() -> None:
    props = {"serviceName": "ns1234567.ip-1-2-3.eu", "displayName": "gpu-1"}
    assert pack_violations("ovh:Dedicated/server:Server", props) == []


def _every_machine() -> list[Any]:
    return [
        pytest.param(entry, id=f"{entry.provider}:{entry.kind}:{entry.name}")
        for entries in MACHINE_TYPES.values()
        for entry in entries
    ]


@pytest.mark.parametrize("entry", _every_machine())
def test_each_machine_type_carries_a_known_gpu_and_is_found_by_name(entry: MachineType) -> None:
    assert (entry.provider, entry.kind) in MACHINE_TYPES
    assert entry.provider in PROVIDER_LOCATIONS
    assert entry.gpu_model in GPU_MODELS
    assert 1 <= entry.gpu_count <= 16
    assert entry.source
    assert machine_type(entry.provider, entry.kind, entry.name) is entry
    assert machine_type(entry.provider, entry.kind, entry.name.swapcase()) is entry
    assert entry.name in machine_types_for(
        entry.provider, entry.kind, entry.gpu_model, entry.gpu_count
    )


def test_machine_type_names_are_unique_within_each_kind() -> None:
    for key, entries in MACHINE_TYPES.items():
        names = [e.name.casefold() for e in entries]
        assert len(names) == len(set(names)), key
        assert all((e.provider, e.kind) == key for e in entries)


def test_form_factor_decides_the_scaleway_h100_types() -> None:
    assert machine_types_for("scaleway", "instance", "H100-PCIE-80GB", 2) == ("H100-2-80G",)
    assert machine_types_for("scaleway", "instance", "H100-SXM5-80GB", 2) == ("H100-SXM-2-80G",)
    assert machine_types_for("scaleway", "instance", "H100-SXM5-80GB", 1) == ()
    sxm = machine_type("scaleway", "instance", "h100-sxm-8-80g")
    assert sxm is not None
    assert (sxm.gpu_model, sxm.gpu_count) == ("H100-SXM5-80GB", 8)


def test_lookups_answer_none_or_nothing_for_what_the_tables_do_not_hold() -> None:
    assert machine_type("scaleway", "instance", "RENDER-S") is None
    assert machine_type("scaleway", "elastic-metal", "H100-1-80G") is None  # another kind's type
    assert machine_type("ovh", "dedicated", "24rise01") is None
    assert machine_type("ovhcloud", "cloud-instance", "L40S-180") is not None  # alias, any case
    assert machine_types_for("ovh", "cloud-instance", "L4-24GB", 3) == ()
    assert machine_types_for("ovh", "cloud-instance", "L40S-48GB", 4) == ("l40s-360",)


def test_os_images_cover_every_supported_system_but_the_ones_no_source_names() -> None:
    for key, images in OS_IMAGES.items():
        assert set(images) <= set(SUPPORTED_OS), key
        missing = set(SUPPORTED_OS) - set(images)
        assert missing == set(OS_IMAGES_NOT_FOUND.get(key, ())), key
        for os_id, image in images.items():
            assert image.name, (key, os_id)
            assert image.name.strip() == image.name, (key, os_id)
            assert os_image(*key, os_id) is image
    assert set(OS_IMAGES_NOT_FOUND) <= set(OS_IMAGES)
    assert set(MACHINE_TYPES) <= set(OS_IMAGES)  # every kind that orders can install a system


def test_os_image_spellings_follow_each_providers_scheme() -> None:
    assert os_image("scaleway", "instance", "ubuntu-24.04") is not None
    em = os_image("scaleway", "elastic-metal", "ubuntu-22.04")
    assert em is not None
    assert (em.name, em.version) == ("Ubuntu", "22.04 LTS (Jammy Jellyfish)")
    assert os_image("scaleway", "elastic-metal", "debian-12") is None
    dedicated = os_image("ovhcloud", "dedicated", "debian-12")
    assert dedicated is not None
    assert dedicated.name == "debian12_64"
    assert os_image("ovh", "cloud-instance", "debian-13") is None  # not a supported system


@pytest.mark.parametrize(
    ("provider", "place", "country"),
    [
        # the non-EU places the machine sources must refuse, as the providers' own lists place them
        ("hetzner", "ash", "US"),
        ("hetzner", "hil", "US"),
        ("hetzner", "sin", "SG"),
        ("ovh", "UK1", "GB"),
        ("ovh", "BHS5", "CA"),
        ("ovh", "SGP1", "SG"),
        ("ovh", "SYD1", "AU"),
        ("ovh", "US-EAST-VA-1", "US"),
        ("ovh", "US-WEST-OR-1", "US"),
        ("ovh", "AP-SOUTH-MUM", "IN"),
        ("ovh", "eri", "GB"),
        ("ovh", "vin", "US"),
        ("ovh", "ynm", "IN"),
        # and EU ones that must pass
        ("ovh", "EU-SOUTH-MIL", "IT"),
        ("ovh", "DE1", "DE"),
        ("ovh", "lim", "DE"),
        ("scaleway", "nl-ams-3", "NL"),
        ("hetzner", "hel1", "FI"),
    ],
)
def test_places_sit_in_the_country_their_provider_names(
    provider: str, place: str, country: str
) -> None:
    assert region_country(place, provider) == country


# Scaleway names a GPU Instance <GPU>-[SXM-]<count>-<memory>G; OVHcloud names a GPU flavour
# <gpu>-<RAM>, its RAM growing with the GPU count from the one-GPU flavour's.
_SCALEWAY_TYPE = re.compile(
    r"(?P<family>[A-Z0-9]+)(?P<sxm>-SXM)?-(?P<count>[0-9]+)-(?P<gib>[0-9]+)G"
)
_OVH_FLAVOUR = re.compile(r"(?P<family>[a-z0-9]+)-(?P<ram>[0-9]+)")


@pytest.mark.parametrize("entry", MACHINE_TYPES[("scaleway", "instance")], ids=lambda e: e.name)
def test_each_scaleway_type_carries_what_its_name_says(entry: MachineType) -> None:
    match = _SCALEWAY_TYPE.fullmatch(entry.name)
    assert match, entry.name
    gpu = GPU_MODELS[entry.gpu_model]
    assert entry.gpu_count == int(match["count"])
    assert gpu.memory_gib == int(match["gib"])
    assert entry.gpu_model.split("-")[0] == match["family"]
    if match["family"] == "H100":
        assert ("SXM" in entry.gpu_model) == bool(match["sxm"])


@pytest.mark.parametrize("entry", MACHINE_TYPES[("ovh", "cloud-instance")], ids=lambda e: e.name)
def test_each_ovh_flavour_carries_what_its_name_says(entry: MachineType) -> None:
    match = _OVH_FLAVOUR.fullmatch(entry.name)
    assert match, entry.name
    family = [
        e
        for e in MACHINE_TYPES[("ovh", "cloud-instance")]
        if e.name.startswith(f"{match['family']}-")
    ]
    smallest = min(int(e.name.split("-")[1]) for e in family)
    assert entry.gpu_count == int(match["ram"]) // smallest
    assert entry.gpu_model.split("-")[0].lower() == match["family"]
