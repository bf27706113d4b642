"""The residency policy pack's rules, called on realistic resource inputs (no engine needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi_policy import PolicyResourceOptions, ResourceValidationArgs

from components.config import StackConfigError
from components.config.catalog import PROVIDER_LOCATIONS, region_country
from components.config.loader import load_stack_data
from components.policy.residency import (
    pack_config,
    residency_policies,
    validate_endpoints,
    validate_gpu_hosts,
    validate_images,
    validate_regions,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = pack_config(
    ["DE", "FR", "NL"], ["rg.fr-par.scw.cloud"], ["https://s3.eu-central-1.ionoscloud.com"]
)


def run(
    validate: Any, resource_type: str, props: dict[str, Any], policy: str, name: str = "r"
) -> list[str]:
    violations: list[str] = []
    opts = PolicyResourceOptions(False, [], None, [], None, [], None)  # type: ignore[arg-type]
    args = ResourceValidationArgs(
        resource_type,
        props,
        f"urn:pulumi:s::p::{resource_type}::{name}",
        name,
        opts,
        None,
        CONFIG[policy],
    )
    validate(args, lambda message, _urn=None: violations.append(message))
    return violations


@pytest.mark.parametrize(
    ("value", "country"),
    [
        ("eu-central-1", "DE"),
        ("eu-central-1a", "DE"),
        ("europe-west3-a", "DE"),
        ("fsn1-dc14", "DE"),
        ("fr-par-2", "FR"),
        ("GRA11", "FR"),
        ("westeurope", "NL"),
        ("eu-west-2", "GB"),
        ("europe-west6", "CH"),
        ("us-east-1", "US"),
        ("atlantis-1", None),
    ],
)
def test_region_names_map_to_countries(value: str, country: str | None) -> None:
    assert region_country(value) == country


def test_regions_outside_the_allowed_countries_are_refused() -> None:
    assert (
        run(
            validate_regions,
            "aws:s3/bucketV2:BucketV2",
            {"region": "eu-central-1"},
            "eu-regions-only",
        )
        == []
    )
    (gb,) = run(
        validate_regions, "aws:s3/bucketV2:BucketV2", {"region": "eu-west-2"}, "eu-regions-only"
    )
    assert "in GB" in gb
    (unknown,) = run(
        validate_regions, "hcloud:index/server:Server", {"location": "mars-1"}, "eu-regions-only"
    )
    assert "not a region known" in unknown
    (us,) = run(
        validate_regions, "hcloud:index/server:Server", {"location": "ash"}, "eu-regions-only"
    )
    assert "in US" in us


def _every_location() -> list[tuple[str, str, str]]:
    return [
        (provider, name, country)
        for provider, table in PROVIDER_LOCATIONS.items()
        for name, country in table.items()
        if "/" not in name  # IONOS "de/fra" names a location, never a datacenter label value
    ]


@pytest.mark.parametrize(("provider", "name", "country"), _every_location())
def test_the_pack_and_validate_read_one_location_table(
    provider: str, name: str, country: str
) -> None:
    """Each location of the table is judged the same way by the policy pack (a cloud resource's
    region) and by the config boundary (a host's datacenter, whatever its country says)."""
    allowed = {"DE", "FR", "NL"}
    pack = run(validate_regions, "aws:s3/bucketV2:BucketV2", {"region": name}, "eu-regions-only")
    assert bool(pack) == (country not in allowed)
    data = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())
    config = data["config"]
    config["sovereign-inference:residency"]["allowedCountries"] = sorted(allowed)
    for host in config["sovereign-inference:hosts"]:
        host.update(provider=provider, datacenter=name, country="DE")
    try:
        load_stack_data(data, "case", ROOT)
        problems: list[str] = []
    except StackConfigError as exc:
        problems = [p.path for p in exc.problems]
    assert ("hosts[0].datacenter" in problems) == (country not in allowed)


def test_the_pack_has_no_location_table_of_its_own() -> None:
    import components.policy.residency as pack

    tables = [
        name
        for name, value in vars(pack).items()
        if isinstance(value, dict) and len(value) > 20 and not name.startswith("__")
    ]
    assert tables == []
    assert vars(pack)["region_country"] is region_country


def deployment(*images: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "vllm"},
        "spec": {
            "template": {
                "spec": {
                    "initContainers": [{"name": "fetch", "image": images[0]}],
                    "containers": [
                        {"name": f"c{i}", "image": image} for i, image in enumerate(images[1:])
                    ],
                }
            }
        },
    }


def test_images_must_come_from_allowed_registries() -> None:
    ok = deployment(
        "rg.fr-par.scw.cloud/sovereign/fetch:1", "rg.fr-par.scw.cloud/sovereign/vllm-openai:v0.11.0"
    )
    assert (
        run(validate_images, "kubernetes:apps/v1:Deployment", ok, "images-from-allowed-registries")
        == []
    )
    bad = deployment(
        "rg.fr-par.scw.cloud/sovereign/fetch:1", "vllm/vllm-openai:v0.11.0", "ghcr.io/x/y:1"
    )
    violations = run(
        validate_images, "kubernetes:apps/v1:Deployment", bad, "images-from-allowed-registries"
    )
    assert len(violations) == 2
    assert "from docker.io" in violations[0]
    assert "from ghcr.io" in violations[1]
    cron = {
        "spec": {
            "jobTemplate": {
                "spec": {
                    "template": {"spec": {"containers": [{"name": "c", "image": "quay.io/a/b"}]}}
                }
            }
        }
    }
    assert (
        len(
            run(
                validate_images,
                "kubernetes:batch/v1:CronJob",
                cron,
                "images-from-allowed-registries",
            )
        )
        == 1
    )


def test_object_store_endpoints_must_be_allowed() -> None:
    env = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "x",
                            "env": [
                                {
                                    "name": "S3_ENDPOINT",
                                    "value": "https://s3.eu-central-1.ionoscloud.com",
                                },
                                {
                                    "name": "AWS_ENDPOINT_URL",
                                    "value": "https://s3.us-east-1.amazonaws.com",
                                },
                            ],
                        }
                    ]
                }
            }
        }
    }
    (violation,) = run(
        validate_endpoints, "kubernetes:apps/v1:Deployment", env, "object-store-endpoints-allowed"
    )
    assert "AWS_ENDPOINT_URL points at https://s3.us-east-1.amazonaws.com" in violation


def test_gpu_hosts_must_be_declared_in_allowed_countries() -> None:
    assert (
        run(
            validate_gpu_hosts,
            "sovereign:gpu_host:GpuHost",
            {"country": "DE"},
            "gpu-hosts-in-allowed-countries",
        )
        == []
    )
    (violation,) = run(
        validate_gpu_hosts,
        "sovereign:gpu_host:GpuHost",
        {"country": "US"},
        "gpu-hosts-in-allowed-countries",
        name="fra-gpu-01",
    )
    assert "fra-gpu-01 is declared in US" in violation


def test_pack_lists_every_policy_and_config_matches() -> None:
    names = {p.name for p in residency_policies()}
    assert names == set(CONFIG)


def test_policy_config_command_uses_the_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "components", "policy-config", "stacks/Pulumi.prod-fra.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    config = json.loads(out.stdout)
    assert config["images-from-allowed-registries"]["allowedRegistries"] == ["rg.fr-par.scw.cloud"]
    assert "DE" in config["eu-regions-only"]["allowedCountries"]


@pytest.mark.parametrize(("datacenter", "refused"), [("gra", False), ("bhs", True), ("vin", True)])
def test_an_ovh_dedicated_order_is_held_to_the_datacenter_its_plan_asks_for(
    datacenter: str, refused: bool
) -> None:
    """The order names its place in a plan configuration, not in a location key."""
    props = {
        "ovhSubsidiary": "FR",
        "plans": [
            {
                "planCode": "24sk-gpu",
                "duration": "P1M",
                "pricingMode": "default",
                "configurations": [
                    {"label": "dedicated_os", "value": "none_64.en"},
                    {"label": "dedicated_datacenter", "value": datacenter},
                ],
            }
        ],
    }
    found = run(validate_regions, "ovh:Dedicated/server:Server", props, "eu-regions-only")
    if refused:
        (violation,) = found
        assert f"plans[0].dedicated_datacenter {datacenter!r} is in" in violation
    else:
        assert found == []
