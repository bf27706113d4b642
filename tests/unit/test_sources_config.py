"""Ordered hosts at the config boundary, through the real ``sovereign validate``: the ordered
type holds the host to its ``gpu``, the order's place is checked against the provider's location
table, and every field a source needs (or refuses) is named by its path."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import load_stack_file
from components.config.catalog import EU_EEA_COUNTRIES, PROVIDER_LOCATIONS
from components.config.errors import StackConfigError
from tests.conftest import ROOT, sovereign

SCW = ROOT / "stacks" / "Pulumi.scw-par.yaml"
OVH = ROOT / "stacks" / "Pulumi.ovh-gra.yaml"
PREFIX = "sovereign-inference:"


def variant(source: Path, tmp_path: Path, change: Any) -> Path:
    """A copy of an example stack with ``change(hosts)`` applied to its hosts."""
    data = yaml.safe_load(source.read_text())
    hosts = copy.deepcopy(data["config"][PREFIX + "hosts"])
    change(hosts)
    data["config"][PREFIX + "hosts"] = hosts
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def refused(path: Path) -> list[str]:
    result = sovereign("validate", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    prefix = f"{path}: "
    return [line.removeprefix(prefix) for line in result.stderr.splitlines()]


def test_the_example_stacks_validate_with_their_placement_from_the_order() -> None:
    for path in (SCW, OVH):
        result = sovereign("validate", str(path))
        assert result.returncode == 0, result.stderr
    scw = load_stack_file(SCW).hosts[0]
    assert (scw.provider, scw.datacenter, scw.country) == ("scaleway", "fr-par-2", "FR")
    ovh = load_stack_file(OVH).hosts[0]
    assert (ovh.provider, ovh.datacenter, ovh.country) == ("ovh", "gra11", "FR")


def set_gpu(model: str, count: int) -> Any:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0]["gpu"] = {"model": model, "count": count}

    return change


def test_a_type_that_carries_other_gpus_is_refused_naming_the_types_that_would_match(
    tmp_path: Path,
) -> None:
    lines = refused(variant(SCW, tmp_path, set_gpu("L40S-48GB", 1)))
    assert lines == [
        "hosts[0].scaleway.type: H100-1-80G carries 1 x H100-PCIE-80GB but gpu says 1 x "
        "L40S-48GB; expected gpu.model H100-PCIE-80GB and gpu.count 1, or types that carry "
        "1 x L40S-48GB: L40S-1-48G"
    ]


def test_an_ovh_flavour_with_another_gpu_count_is_refused(tmp_path: Path) -> None:
    lines = refused(variant(OVH, tmp_path, set_gpu("L40S-48GB", 2)))
    assert len(lines) == 1
    assert lines[0].startswith("hosts[0].ovh.flavor: l40s-90 carries 1 x L40S-48GB but gpu says 2")
    assert lines[0].endswith("types that carry 2 x L40S-48GB: l40s-180")


def test_an_unknown_type_is_refused_with_the_types_that_carry_the_gpus(tmp_path: Path) -> None:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0]["scaleway"]["type"] = "H100-3-80G"

    (line,) = refused(variant(SCW, tmp_path, change))
    assert line == (
        "hosts[0].scaleway.type: scaleway instance type 'H100-3-80G' unknown; types that carry "
        "1 x H100-PCIE-80GB: H100-1-80G"
    )


def test_a_type_left_out_of_the_catalog_says_why(tmp_path: Path) -> None:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0]["ovh"]["flavor"] = "h100-380"
        hosts[0]["gpu"] = {"model": "H100-PCIE-80GB", "count": 1}

    (line,) = refused(variant(OVH, tmp_path, change))
    assert line.startswith(
        "hosts[0].ovh.flavor: ovh cloud-instance type 'h100-380' not in the catalog: no source "
        "read says whether its cards are PCIe or SXM"
    )
    assert line.endswith("ovh cloud-instance has no type with 1 x H100-PCIE-80GB in the catalog")


def test_an_os_the_kind_does_not_offer_is_refused(tmp_path: Path) -> None:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[1]["scaleway"] = {
            "kind": "elastic-metal",
            "type": "EM-T220E-L40S",
            "zone": "fr-par-2",
            "os": "debian-12",
        }
        hosts[1]["gpu"] = {"model": "L40S-48GB", "count": 2}

    (line,) = refused(variant(SCW, tmp_path, change))
    assert line == (
        "hosts[1].scaleway.os: debian-12 is not an image the toolkit knows for scaleway "
        "elastic-metal; expected one of ubuntu-22.04, ubuntu-24.04"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda h: h[0].update(address="51.159.1.2"),
            "hosts[0].address: known after the scaleway order",
        ),
        (
            lambda h: h[0]["ssh"].pop("publicKey"),
            "hosts[0].ssh.publicKey: required for source scaleway",
        ),
        (
            lambda h: h[0]["ssh"].update(publicKey="ssh-ed25519 AAAAC3NzaC1yc2E="),
            "hosts[0].ssh.publicKey: the key data is not a ssh-ed25519 key",
        ),
        (
            lambda h: h[0]["ssh"].update(
                publicKey="-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
            ),
            "hosts[0].ssh.publicKey: holds key material",
        ),
        (lambda h: h[0].pop("scaleway"), "hosts[0].scaleway: required for source scaleway"),
        (
            lambda h: h[0].update(
                source="byo",
                address="51.159.1.2",
                provider="scaleway",
                datacenter="fr-par-2",
                country="FR",
            ),
            "hosts[0].scaleway: only for source scaleway; this host's source is byo",
        ),
        (
            lambda h: h[0].update(provider="ovh"),
            "hosts[0].provider: is 'ovh' but source scaleway orders from scaleway",
        ),
        (
            lambda h: h[0].update(country="DE"),
            "hosts[0].country: is DE but the provider location table places the zone in FR",
        ),
        (
            lambda h: h[0]["scaleway"].update(zone="fr-lyo-1"),
            "hosts[0].scaleway.zone: 'fr-lyo-1' is not a scaleway location the toolkit knows",
        ),
    ],
    ids=[
        "address",
        "no-public-key",
        "bad-public-key",
        "private-key",
        "no-order",
        "order-on-byo",
        "provider",
        "country",
        "unknown-zone",
    ],
)
def test_each_field_an_ordered_host_needs_or_refuses_is_named(
    tmp_path: Path, change: Any, expected: str
) -> None:
    lines = refused(variant(SCW, tmp_path, change))
    assert any(line.startswith(expected) for line in lines), lines


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (
            {"kind": "cloud-instance", "serviceName": "p1", "region": "GRA11", "os": "debian-12"},
            "hosts[0].ovh.flavor: required for kind cloud-instance",
        ),
        (
            {"kind": "dedicated", "os": "debian-12"},
            "hosts[0].ovh.serviceName: kind dedicated takes either serviceName",
        ),
        (
            {"kind": "dedicated", "serviceName": "ns1.ip-1-2-3.eu", "plan": "x", "os": "debian-12"},
            "hosts[0].ovh.serviceName: kind dedicated takes either serviceName",
        ),
        (
            {
                "kind": "dedicated",
                "serviceName": "ns1.ip-1-2-3.eu",
                "flavor": "l4-90",
                "os": "debian-12",
            },
            "hosts[0].ovh.flavor: not used for kind dedicated",
        ),
    ],
    ids=["no-flavour", "neither", "both", "flavour-on-dedicated"],
)
def test_ovh_kinds_take_their_own_fields(
    tmp_path: Path, order: dict[str, str], expected: str
) -> None:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0]["ovh"] = order
        hosts[0]["datacenter"] = "gra3"
        hosts[0]["country"] = "FR"

    lines = refused(variant(OVH, tmp_path, change))
    assert any(line.startswith(expected) for line in lines), lines


def test_an_ovh_region_outside_the_eu_is_refused_naming_the_allowed_places(tmp_path: Path) -> None:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0]["ovh"]["region"] = "BHS5"

    lines = refused(variant(OVH, tmp_path, change))
    region = [line for line in lines if line.startswith("hosts[0].ovh.region: ")]
    assert len(region) == 1, lines
    assert "places 'BHS5' in CA, outside the residency policy" in region[0]
    allowed = region[0].partition("in the allowed countries: ")[2].split(", ")
    assert "gra11" in allowed
    assert "bhs5" not in allowed


def byo_at(address: str | None) -> Any:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0].update(source="byo", provider="scaleway", datacenter="fr-par-2", country="FR")
        hosts[0].pop("scaleway")
        if address is not None:
            hosts[0]["address"] = address
        hosts[0]["ssh"]["hostKey"] = "SHA256:" + "A" * 43

    return change


def test_a_byo_host_needs_an_address(tmp_path: Path) -> None:
    lines = refused(variant(SCW, tmp_path, byo_at(None)))
    assert any(line.startswith("hosts[0].address: required for source byo") for line in lines)


def test_a_lab_host_needs_the_lab_inventory(tmp_path: Path) -> None:
    def change(hosts: list[dict[str, Any]]) -> None:
        byo_at("198.51.100.7")(hosts)
        hosts[1].update(source="lab", provider="lab", datacenter="lab-dc1", country="DE")
        hosts[1]["address"] = "127.0.0.1"
        hosts[1].pop("scaleway")

    lines = refused(variant(SCW, tmp_path, change))
    assert any(line.startswith("hosts[1].source: lab hosts take their addresses") for line in lines)


def test_a_stack_pin_for_an_ordered_host_is_accepted(tmp_path: Path) -> None:
    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0]["ssh"]["hostKey"] = "SHA256:" + "A" * 43

    path = variant(SCW, tmp_path, change)
    assert sovereign("validate", str(path)).returncode == 0
    assert load_stack_file(path).hosts[0].ssh.host_key == "SHA256:" + "A" * 43


def _places(provider: str) -> list[tuple[str, str]]:
    return sorted(PROVIDER_LOCATIONS[provider].items())


@pytest.mark.parametrize(
    ("source", "place", "country"),
    # OVHcloud's API spells regions in capitals; Scaleway orders name a zone (fr-par-2)
    [("ovh", p.upper(), c) for p, c in _places("ovh")]
    + [("scaleway", p, c) for p, c in _places("scaleway") if re.fullmatch(r"[a-z-]+-[0-9]", p)],
    ids=str,
)
def test_every_place_of_the_providers_table_is_ordered_there_only_inside_the_eu(
    tmp_path: Path, source: str, place: str, country: str
) -> None:
    """Each place an order could name: an EU/EEA one is the host's datacenter and country, any
    other is refused at the order's own field before anything is ordered."""

    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0][source]["zone" if source == "scaleway" else "region"] = place

    path = variant(SCW if source == "scaleway" else OVH, tmp_path, change)
    field = f"hosts[0].{source}.{'zone' if source == 'scaleway' else 'region'}"
    if country in EU_EEA_COUNTRIES:
        host = load_stack_file(path).hosts[0]
        assert (host.datacenter, host.country) == (place.lower(), country)
        return
    with pytest.raises(StackConfigError) as info:
        load_stack_file(path)
    messages = [str(p) for p in info.value.problems if p.path == field]
    assert messages, [str(p) for p in info.value.problems]
    assert f"in {country}, outside the residency policy" in messages[0]


@pytest.mark.parametrize("key", ["scaleway:secretKey", "ovh:applicationSecret", "ovh:consumerKey"])
def test_a_provider_credential_in_plain_text_is_refused(tmp_path: Path, key: str) -> None:
    data = yaml.safe_load(SCW.read_text())
    data["config"][key] = "0123456789abcdef0123456789abcdef"
    path = tmp_path / SCW.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (line,) = refused(path)
    assert line.startswith(f"{key}: a provider credential in plain text; expected a Pulumi secret")
    assert "0123456789abcdef" not in line
    data["config"][key] = {"secure": "v1:abc:def"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert sovereign("validate", str(path)).returncode == 0


@pytest.mark.parametrize(
    ("source", "place"), [("scaleway", "fr-par-4"), ("ovh", "GRA99"), ("ovh", "BHS-ZZ")]
)
def test_an_order_names_a_place_exactly_as_the_provider_lists_it(
    tmp_path: Path, source: str, place: str
) -> None:
    """Suffix rules that read gra3 as Gravelines serve datacenters, never an order's zone."""

    def change(hosts: list[dict[str, Any]]) -> None:
        hosts[0][source]["zone" if source == "scaleway" else "region"] = place

    (line,) = refused(variant(SCW if source == "scaleway" else OVH, tmp_path, change))
    field = "zone" if source == "scaleway" else "region"
    assert line.startswith(
        f"hosts[0].{source}.{field}: {place!r} is not a {source} location the toolkit knows"
    )
