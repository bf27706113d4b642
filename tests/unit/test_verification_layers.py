"""Layered verification on facts recorded from a real lab host, and on deliberate breakages of them."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.config.models import GpuSpec, StackConfig
from components.verification.geoip import GeoIpDatabase, find_database, open_database
from components.verification.layers import Context, HostFacts, evaluate_host, parse_sections
from components.verification.report import evidence, junit_xml, markdown
from components.verification.results import CheckResult
from components.verification.runner import HostRun, Verification

ROOT = Path(__file__).resolve().parents[2]
RECORDED = (ROOT / "tests" / "data" / "facts" / "lab-host-debian12.txt").read_text()
HEALTHY_GPU = (ROOT / "tests" / "data" / "nvml" / "h100-sxm5-x8-healthy.json").read_text()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> StackConfig:
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "Pulumi.yaml", project)
    (project / "stacks").mkdir()
    shutil.copy(ROOT / "stacks" / "Pulumi.lab.yaml", project / "stacks")
    return load_stack_file(project / "stacks" / "Pulumi.lab.yaml")


@pytest.fixture(scope="module")
def geoip() -> GeoIpDatabase:
    path = find_database(ROOT)
    if not path.exists():
        pytest.fail(f"{path} missing: run bash .ci/setup (it fetches DB-IP Lite Country)")
    return open_database(path)


def judge(
    stack: StackConfig, geoip: GeoIpDatabase | None, text: str, **host_changes: object
) -> dict[str, CheckResult]:
    host = stack.hosts[0].model_copy(update=host_changes)
    results = evaluate_host(Context(stack, host, HostFacts(host.name, parse_sections(text)), geoip))
    return {f"{r.layer}/{r.check}": r for r in results}


def replace_section(text: str, name: str, body: str) -> str:
    sections = parse_sections(text)
    sections[name] = body
    return "\n".join(f"==== {k}\n{v}" for k, v in sections.items())


def test_recorded_lab_host_passes(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    results = judge(stack, geoip, RECORDED)
    assert [r.message() for r in results.values() if r.status == "fail"] == []
    passed = {k for k, r in results.items() if r.status == "pass"}
    assert {
        "host/os",
        "cache/mounted",
        "cache/array",
        "residency/dns-resolvers",
        "residency/firewall",
    } <= passed
    assert results["driver/gpu-health"].status == "skip"


@pytest.mark.parametrize(
    ("section", "body", "check", "observed"),
    [
        ("cache_mount", "", "cache/mounted", "not mounted"),
        ("cache_fstab", "", "cache/persistent", "no /etc/fstab entry"),
        ("mdstat", "md127 : active raid0 nvme1n1[0]", "cache/array", "raid0 with 1 member(s)"),
        (
            "resolv_conf",
            "nameserver 10.0.2.3\nnameserver 8.8.8.8",
            "residency/dns-resolvers",
            "10.0.2.3, 8.8.8.8",
        ),
        (
            "ntp_config",
            "pool 2.debian.pool.ntp.org iburst",
            "residency/ntp-servers",
            "2.debian.pool.ntp.org",
        ),
        ("addresses", "10.0.2.15/24\n8.8.4.4/32", "residency/egress-ip:8.8.4.4", "US"),
        (
            "node_labels",
            "sovereign-inference/country=US\ntopology.kubernetes.io/region=lab\ntopology.kubernetes.io/zone=lab-dc1",
            "residency/label:sovereign-inference/country",
            "US",
        ),
        (
            "sshd",
            "passwordauthentication yes\nkbdinteractiveauthentication no\npermitrootlogin yes",
            "host/ssh-password-login",
            "password yes",
        ),
        (
            "sshd",
            "passwordauthentication no\nkbdinteractiveauthentication no\npermitrootlogin yes",
            "host/ssh-root-login",
            "yes",
        ),
        ("firewall", "", "residency/firewall", "no table inet sovereign"),
        ("os", "centos-7", "host/os", "centos-7"),
    ],
)
def test_each_breakage_is_named(
    stack: StackConfig, geoip: GeoIpDatabase, section: str, body: str, check: str, observed: str
) -> None:
    results = judge(stack, geoip, replace_section(RECORDED, section, body))
    assert results[check].status == "fail", results[check]
    assert observed in results[check].observed
    assert results[check].message().startswith(f"[{check.split('/', maxsplit=1)[0]}] lab-1 ")


def test_declared_egress_ip_outside_the_eu_fails(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    results = judge(stack, geoip, RECORDED, egress_ips=("8.8.8.8",))
    assert results["residency/egress-ip:8.8.8.8"].observed == "US"
    assert results["residency/egress-ip:8.8.8.8"].evidence == {"declared": True}
    eu = judge(stack, geoip, RECORDED, egress_ips=("185.12.64.1",))
    assert eu["residency/egress-ip:185.12.64.1"].status == "pass"


def test_stale_or_missing_geolocation_database_is_reported(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    strict = stack.model_copy(
        update={"verification": stack.verification.model_copy(update={"geoip_max_age_days": 1})}
    )
    results = judge(strict, geoip, RECORDED)
    assert results["residency/geoip-database-fresh"].status == "fail"
    assert "days old" in results["residency/geoip-database-fresh"].observed
    missing = judge(stack, None, RECORDED)
    assert missing["residency/geoip-database"].status == "fail"


def test_egress_allowlist_must_be_enforced(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    policy = stack.residency.model_copy(update={"egress_allowlist": ("192.0.2.0/24",)})
    with_list = stack.model_copy(update={"residency": policy})
    results = judge(with_list, geoip, RECORDED)
    assert results["residency/egress-allowlist"].status == "fail"
    canary = replace_section(RECORDED, "egress_canary", "connected")
    assert judge(with_list, geoip, canary)["residency/egress-canary"].status == "fail"


def test_gpu_host_gets_driver_and_runtime_checks(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    facts = replace_section(RECORDED, "gpu_probe", HEALTHY_GPU.replace("\n", ""))
    facts = replace_section(
        facts, "container_toolkit", "NVIDIA Container Toolkit CLI version 1.17.8\nnvidia.yaml"
    )
    results = judge(stack, geoip, facts, gpu=GpuSpec(model="H100-SXM5-80GB", count=8))
    driver = [r for k, r in results.items() if k.startswith("driver/")]
    assert len(driver) > 100
    assert all(r.status == "pass" for r in driver), [
        r.message() for r in driver if r.status != "pass"
    ]
    assert results["runtime/nvidia-container-toolkit"].status == "pass"
    no_driver = judge(stack, geoip, RECORDED, gpu=GpuSpec(model="H100-SXM5-80GB", count=8))
    assert no_driver["driver/nvml"].status == "fail"
    assert "no-driver" in no_driver["driver/nvml"].observed


def test_incomplete_facts_fail_every_layer(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    cut = RECORDED.split("==== firewall")[0]
    results = judge(stack, geoip, cut)
    assert {r.status for r in results.values()} == {"fail"}
    assert len(results) == 7


def test_report_formats(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    results = list(judge(stack, geoip, replace_section(RECORDED, "cache_mount", "")).values())
    verification = Verification(
        results=results, hosts=[HostRun("lab-1", None, 1.0)], geoip=geoip.describe(), seconds=1.5
    )
    report = evidence(stack, verification, "stacks/Pulumi.lab.yaml")
    assert report["summary"]["failed"] == 1
    assert dt.date.fromisoformat(report["retain_until"]) - dt.date.fromisoformat(
        report["generated_at"][:10]
    ) >= dt.timedelta(days=182)
    assert "k3sToken" not in json.dumps(report)
    text = markdown(report)
    assert "# Verification of `lab`: FAIL" in text
    assert "**[cache] lab-1 mounted**: observed not mounted" in text
    xml = junit_xml(report)
    assert (
        '<testcase classname="cache.lab-1" name="mounted"><failure message="observed not mounted'
        in xml
    )


def pods_json(*containers: Mapping[str, object]) -> str:
    return json.dumps(
        {
            "items": [
                {
                    "metadata": {"name": "vllm-mistral-small-7d9f"},
                    "spec": {"containers": list(containers)},
                }
            ]
        }
    )


def test_inference_pods_keep_telemetry_off_and_weights_in_the_eu(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    compliant = {
        "name": "vllm",
        "env": [
            {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
            {"name": "DO_NOT_TRACK", "value": "1"},
            {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
            {"name": "S3_ENDPOINT", "value": "https://objects.lab.internal"},
        ],
    }
    good = judge(stack, geoip, replace_section(RECORDED, "inference_pods", pods_json(compliant)))
    inference = {k: r for k, r in good.items() if k.startswith("inference/")}
    assert inference
    assert all(r.status == "pass" for r in inference.values())
    leaky = {
        "name": "vllm",
        "env": [
            {"name": "DO_NOT_TRACK", "value": "1"},
            {"name": "AWS_ENDPOINT_URL", "value": "https://s3.us-east-1.amazonaws.com"},
        ],
    }
    bad = judge(stack, geoip, replace_section(RECORDED, "inference_pods", pods_json(leaky)))
    telemetry = bad["inference/telemetry-off:vllm-mistral-small-7d9f/vllm"]
    assert telemetry.status == "fail"
    assert "VLLM_NO_USAGE_STATS" in telemetry.observed
    assert bad["inference/object-store:vllm-mistral-small-7d9f/vllm"].status == "fail"
    idle = judge(
        stack, geoip, replace_section(RECORDED, "inference_pods", json.dumps({"items": []}))
    )
    assert idle["inference/pods"].status == "skip"
    assert "scaled to zero" in idle["inference/pods"].observed
