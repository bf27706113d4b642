"""Layered verification on facts recorded from a real lab host, and on deliberate breakages of them."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.config.models import GpuSpec, StackConfig
from components.plan.checks import host_checks
from components.verification.geoip import GeoIpDatabase, find_database, open_database
from components.verification.layers import (
    Context,
    HostFacts,
    evaluate_host,
    parse_cache_read,
    parse_sections,
)
from components.verification.report import evidence, junit_xml, markdown
from components.verification.results import CheckResult
from components.verification.runner import COLLECTOR, HostRun, Verification

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


# The cache_read section as collect_facts.sh prints it, GNU coreutils dd under LC_ALL=C (recorded
# on a loop-mounted ext4 filesystem and on tmpfs; the floor each test sets decides the verdict).
READ_OF_A_WRITTEN_FILE = """source written
16+1 records in
16+1 records out
279969792 bytes (280 MB, 267 MiB) copied, 0.0712015 s, 3.9 GB/s"""
READ_OF_WEIGHTS = """source existing
16+0 records in
16+0 records out
268435456 bytes (268 MB, 256 MiB) copied, 0.394203 s, 681 MB/s"""
# the write stopped by its time bound: dd reports what it had moved, here too little to time
READ_AFTER_A_CUT_WRITE = """source written
0+1 records in
0+1 records out
12582912 bytes (13 MB, 12 MiB) copied, 0.00940494 s, 1.3 GB/s"""
READ_THAT_FAILED = """source written
write dd: failed to open '/var/lib/sovereign/weights/.sovereign-read-probe.4242': Invalid argument
dd: failed to open '/var/lib/sovereign/weights/.sovereign-read-probe.4242': Invalid argument"""


def with_read_floor(stack: StackConfig, mib_per_second: int) -> StackConfig:
    cache = stack.cache.model_copy(update={"min_read_mib_per_second": mib_per_second})
    return stack.model_copy(update={"cache": cache})


def test_cache_read_speed_at_the_floor_passes_and_the_figure_is_evidence(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    facts = replace_section(RECORDED, "cache_read", READ_OF_A_WRITTEN_FILE)
    # 279969792 bytes in 0.0712015 s: 3749.9 MiB/s
    result = judge(with_read_floor(stack, 3749), geoip, facts)["cache/read-speed"]
    assert result.status == "pass", result
    assert result.observed == "3749 MiB/s (267 MiB of a file written for the probe in 0.07 s)"
    assert result.evidence == {
        "read_mib_per_second": 3749.9,
        "bytes_read": 279969792,
        "seconds": 0.0712015,
        "probe_source": "written",
        "min_read_mib_per_second": 3749,
    }
    slower = judge(with_read_floor(stack, 3750), geoip, facts)["cache/read-speed"]
    assert (slower.status, slower.observed[:10]) == ("fail", "3749 MiB/s")


def test_cache_read_below_the_floor_fails_naming_both_speeds(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    facts = replace_section(RECORDED, "cache_read", READ_OF_WEIGHTS)
    result = judge(with_read_floor(stack, 1024), geoip, facts)["cache/read-speed"]
    assert result.status == "fail"
    assert result.message() == (
        "[cache] lab-1 read-speed: observed 649 MiB/s (256 MiB of a file on the cache in 0.39 s), "
        "expected at least 1024 MiB/s sequential, direct I/O (cache.minReadMibPerSecond)"
    )


@pytest.mark.parametrize(
    ("body", "observed"),
    [
        (
            "not-measured only 770 MiB free on the cache",
            "not measured: only 770 MiB free on the cache",
        ),
        (READ_THAT_FAILED, "not measured: write dd: failed to open"),
        (READ_AFTER_A_CUT_WRITE, "not measured: 12 MiB read, below the probe's 64 MiB"),
        ("", "not measured: 0 MiB read"),
    ],
)
def test_a_cache_read_that_measured_nothing_fails(
    stack: StackConfig, geoip: GeoIpDatabase, body: str, observed: str
) -> None:
    result = judge(stack, geoip, replace_section(RECORDED, "cache_read", body))["cache/read-speed"]
    assert result.status == "fail"
    assert result.observed.startswith(observed), result.observed


def test_cache_read_is_skipped_without_a_mounted_cache_or_a_measurement(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    # facts recorded before the collector measured reads
    assert "cache_read" not in parse_sections(RECORDED)
    assert judge(stack, geoip, RECORDED)["cache/read-speed"].status == "skip"
    unmounted = replace_section(replace_section(RECORDED, "cache_read", ""), "cache_mount", "")
    result = judge(stack, geoip, unmounted)["cache/read-speed"]
    assert (result.status, result.observed) == ("skip", "the cache is not mounted")


def test_the_planned_read_speed_check_is_the_one_verification_judges(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    planned = {c.id: c.expected for c in host_checks(stack, stack.hosts[0])}
    facts = replace_section(RECORDED, "cache_read", READ_OF_WEIGHTS)
    judged = judge(stack, geoip, facts)["cache/read-speed"]
    assert judged.expected == planned["cache.read-speed"]
    assert f"at least {stack.cache.min_read_mib_per_second} MiB/s" in judged.expected


def test_dd_s_seconds_in_exponent_form_are_read() -> None:
    read = parse_cache_read(
        "source written\n0+0 records in\n0+0 records out\n0 bytes copied, 2.3659e-05 s, 0.0 kB/s"
    )
    assert (read.bytes_read, read.seconds, read.measured) == (0, 2.3659e-05, False)


def test_the_collector_times_a_mounted_filesystem_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """The real collect_facts.sh against /dev/shm (a tmpfs mount on any Linux): a probe file of
    16 MiB is written, read with direct I/O (or refused by a kernel whose tmpfs has none), and
    removed."""
    shm = Path("/dev/shm")
    if subprocess.run(
        ["findmnt", "--mountpoint", str(shm)], capture_output=True, check=False
    ).returncode:
        pytest.skip("/dev/shm is not a mount point here")
    env = {
        **os.environ,
        "CACHE_MOUNT_POINT": str(shm),
        "CACHE_READ_PROBE_MIB": "16",
        "CACHE_READ_PROBE_MIN_MIB": "1",
        "CACHE_READ_PROBE_SECONDS": "20",
        "PROBE_DIR": str(tmp_path / "no-probe"),
        "CANARY": "",
        "K3S_CONTAINERD_DIR": str(tmp_path),
        "K3S_CONTAINERD_TEMPLATES": "config.toml.tmpl",
    }
    done = subprocess.run(
        ["bash", str(COLLECTOR)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    read = parse_cache_read(parse_sections(done.stdout)["cache_read"])
    assert read.source in {"written", "existing"}
    timed = read.bytes_read == 16 * 1024**2 and read.seconds > 0
    assert timed or any("dd: " in e for e in read.errors), read
    assert not list(shm.glob(".sovereign-read-probe.*"))


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
