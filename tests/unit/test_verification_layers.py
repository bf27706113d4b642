"""Layered verification on facts recorded from a real lab host, and on deliberate breakages of them."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from components.config import load_stack_file
from components.config.models import GpuSpec, StackConfig, host_address
from components.plan.checks import TIME_SYNC_UNIT, host_checks
from components.plan.host_steps import BASE_PACKAGES
from components.verification.geoip import GeoIpDatabase, find_database, open_database
from components.verification.layers import (
    Context,
    HostFacts,
    collector_script,
    evaluate_host,
    parse_cache_read,
    parse_sections,
)
from components.verification.layers.cache import parse_cache_write
from components.verification.layers.host import parse_time_sync
from components.verification.report import evidence, junit_xml, markdown
from components.verification.results import Finding
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


def pinned_geoip() -> GeoIpDatabase:
    """The DB-IP Lite Country database .ci/setup fetches; the tests fail without it."""
    path = find_database(ROOT)
    if not path.exists():
        pytest.fail(f"{path} missing: run bash .ci/setup (it fetches DB-IP Lite Country)")
    return open_database(path)


@pytest.fixture(scope="module")
def geoip() -> GeoIpDatabase:
    return pinned_geoip()


# The database's age is judged at a fixed distance from its build, never at the calendar's date:
# the verdicts below hold whenever the tests run.
DATABASE_AGE = dt.timedelta(days=30)


def judge(
    stack: StackConfig, geoip: GeoIpDatabase | None, text: str, **host_changes: object
) -> dict[str, Finding]:
    host = stack.hosts[0].model_copy(update=host_changes)
    now = geoip.built + DATABASE_AGE if geoip else None
    facts = HostFacts(host.name, parse_sections(text))
    results = evaluate_host(Context(stack, host, facts, geoip, now))
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
        "cache/members",
        "residency/dns-resolvers",
        "residency/firewall",
        "residency/geoip-database-fresh",
    } <= passed
    assert results["driver/gpu-count"].status == "skip"


@pytest.mark.parametrize(
    ("section", "body", "check", "observed"),
    [
        ("cache_mount", "", "cache/mounted", "not mounted"),
        ("cache_fstab", "", "cache/persistent", "no /etc/fstab entry"),
        ("mdstat", "md127 : active raid0 nvme1n1[0]", "cache/members", "raid0 with 1 member(s)"),
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
        ("addresses", "10.0.2.15/24\n8.8.4.4/32", "residency/addresses", "8.8.4.4 US"),
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
    assert results["residency/egress-ip:8.8.8.8"].status == "fail"
    eu = judge(stack, geoip, RECORDED, egress_ips=("185.12.64.1",))
    assert eu["residency/egress-ip:185.12.64.1"].status == "pass"


def test_stale_or_missing_geolocation_database_is_reported(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    max_age = DATABASE_AGE.days - 1
    strict = stack.model_copy(
        update={
            "verification": stack.verification.model_copy(update={"geoip_max_age_days": max_age})
        }
    )
    results = judge(strict, geoip, RECORDED)
    assert results["residency/geoip-database-fresh"].status == "fail"
    assert f"({DATABASE_AGE.days} days old)" in results["residency/geoip-database-fresh"].observed
    missing = judge(stack, None, RECORDED)
    assert missing["residency/geoip-database-fresh"].status == "fail"
    assert missing["residency/geoip-database-fresh"].observed == "missing"


def test_egress_allowlist_must_be_enforced(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    policy = stack.residency.model_copy(update={"egress_allowlist": ("192.0.2.0/24",)})
    canary_at = stack.verification.model_copy(update={"egress_canary": "192.0.2.10:443"})
    with_list = stack.model_copy(update={"residency": policy, "verification": canary_at})
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


def run_collector(tmp_path: Path, cache_mount_point: Path) -> dict[str, str]:
    """The real collector script, its cache at ``cache_mount_point``, split into its sections."""
    env = {
        **os.environ,
        "CACHE_MOUNT_POINT": str(cache_mount_point),
        "CACHE_READ_PROBE_MIB": "16",
        "CACHE_READ_PROBE_MIN_MIB": "1",
        "CACHE_READ_PROBE_SECONDS": "20",
        "PROBE_DIR": str(tmp_path / "no-probe"),
        "CANARY": "",
        "K3S_CONTAINERD_DIR": str(tmp_path),
        "K3S_CONTAINERD_TEMPLATES": "config.toml.tmpl",
    }
    collector = tmp_path / "collect.sh"
    collector.write_text(collector_script())
    done = subprocess.run(
        ["bash", str(collector)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return parse_sections(done.stdout)


def shared_memory_mount() -> Path:
    """/dev/shm, a tmpfs mount on any Linux; the test is skipped where it is not mounted."""
    shm = Path("/dev/shm")
    if subprocess.run(
        ["findmnt", "--mountpoint", str(shm)], capture_output=True, check=False
    ).returncode:
        pytest.skip("/dev/shm is not a mount point here")
    return shm


def test_the_collector_times_a_mounted_filesystem_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    """The real collector against /dev/shm: a probe file of 16 MiB is written, read with direct
    I/O (or refused by a kernel whose tmpfs has none), and removed."""
    shm = shared_memory_mount()
    read = parse_cache_read(run_collector(tmp_path, shm)["cache_read"])
    assert read.source in {"written", "existing"}
    timed = read.bytes_read == 16 * 1024**2 and read.seconds > 0
    assert timed or any("dd: " in e for e in read.errors), read
    assert not list(shm.glob(".sovereign-read-probe.*"))


def test_the_collector_creates_and_removes_its_write_probe_on_the_cache(tmp_path: Path) -> None:
    shm = shared_memory_mount()
    write = parse_cache_write(run_collector(tmp_path, shm)["cache_writable"])
    assert (write.created, write.removed, write.error) == (True, True, "")
    assert not list(shm.glob(".sovereign-write-probe.*"))


def test_the_collector_writes_nothing_under_a_cache_that_is_not_mounted(tmp_path: Path) -> None:
    """An unmounted cache's mount point is a directory of the root filesystem: no probe there."""
    unmounted = tmp_path / "weights"
    unmounted.mkdir()
    assert run_collector(tmp_path, unmounted)["cache_writable"] == ""
    assert list(unmounted.iterdir()) == []


def test_the_collector_reports_each_time_daemon_and_chrony_s_tracking(tmp_path: Path) -> None:
    """Whatever this machine runs: one block per time daemon, then chrony's view."""
    report = parse_time_sync(run_collector(tmp_path, tmp_path / "no-cache")["time_sync"])
    assert set(report.units) == {f"{TIME_SYNC_UNIT}.service", "systemd-timesyncd.service"}


# The time_sync section. chronyc's lines are chrony 4.3's (Debian 12) `chronyc -n tracking`,
# recorded from a chronyd following an NTP server on 127.0.0.1 and from one whose only server
# never answered; "506 ..." is chronyc's answer with no chronyd running. The unit blocks are
# systemctl's Key=value lines, in the order systemd prints these properties.
CHRONY_RUNNING = """unit chrony.service
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
unit systemd-timesyncd.service
LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
"""
CHRONY_STOPPED = CHRONY_RUNNING.replace(
    "ActiveState=active\nSubState=running", "ActiveState=inactive\nSubState=dead", 1
)
CHRONY_DISABLED = CHRONY_RUNNING.replace("UnitFileState=enabled", "UnitFileState=disabled")
BOTH_DAEMONS = CHRONY_RUNNING.replace(
    "LoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=",
    "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled",
)
TRACKING_SYNCHRONISED = """tracking
Reference ID    : 7F000001 (127.0.0.1)
Stratum         : 9
Ref time (UTC)  : Wed Dec 02 11:56:09 2026
System time     : 0.000001088 seconds fast of NTP time
Last offset     : +0.000000009 seconds
RMS offset      : 0.000000035 seconds
Frequency       : 0.006 ppm slow
Residual freq   : +0.000 ppm
Skew            : 0.028 ppm
Root delay      : 0.000003943 seconds
Root dispersion : 0.000001356 seconds
Update interval : 0.3 seconds
Leap status     : Normal"""
TRACKING_NO_SOURCE = """tracking
Reference ID    : 00000000 ()
Stratum         : 0
Ref time (UTC)  : Thu Jan 01 00:00:00 1970
System time     : 0.000000000 seconds fast of NTP time
Last offset     : +0.000000000 seconds
RMS offset      : 0.000000000 seconds
Frequency       : 0.000 ppm slow
Residual freq   : +0.000 ppm
Skew            : 0.000 ppm
Root delay      : 1.000000000 seconds
Root dispersion : 1.000000000 seconds
Update interval : 0.0 seconds
Leap status     : Not synchronised"""
TRACKING_NO_DAEMON = "tracking\n506 Cannot talk to daemon"


def test_a_running_enabled_synchronised_chrony_passes_with_its_source_as_evidence(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    facts = replace_section(RECORDED, "time_sync", CHRONY_RUNNING + TRACKING_SYNCHRONISED)
    result = judge(stack, geoip, facts)["host/time-sync"]
    assert result.status == "pass", result
    assert result.observed == (
        "chrony active, enabled, synchronised to 7F000001 (127.0.0.1) "
        "(stratum 9, 0.000001088 seconds fast of NTP time)"
    )
    assert result.evidence["tracking"]["Leap status"] == "Normal"
    assert result.evidence["units"]["chrony.service"]["UnitFileState"] == "enabled"


@pytest.mark.parametrize(
    ("body", "observed"),
    [
        (
            CHRONY_RUNNING + TRACKING_NO_SOURCE,
            "chrony active, enabled, not synchronised (leap status Not synchronised, "
            "following no source)",
        ),
        (
            CHRONY_STOPPED + TRACKING_NO_DAEMON,
            "chrony inactive, enabled, no tracking report: 506 Cannot talk to daemon",
        ),
        (
            CHRONY_DISABLED + TRACKING_SYNCHRONISED,
            "chrony active, disabled, synchronised to 7F000001 (127.0.0.1)",
        ),
        (
            BOTH_DAEMONS + TRACKING_SYNCHRONISED,
            "; also active: systemd-timesyncd",
        ),
    ],
    ids=["unsynchronised", "stopped", "disabled", "second-daemon"],
)
def test_time_sync_fails_naming_what_is_wrong(
    stack: StackConfig, geoip: GeoIpDatabase, body: str, observed: str
) -> None:
    verification = stack.verification.model_copy(update={"time_sync_required": True})
    required = stack.model_copy(update={"verification": verification})
    facts = replace_section(RECORDED, "time_sync", body)
    result = judge(required, geoip, facts)["host/time-sync"]
    assert result.status == "fail"
    assert observed in result.observed, result.observed


def test_an_isolated_stack_may_accept_a_running_chrony_without_a_server(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    verification = stack.verification.model_copy(update={"time_sync_required": False})
    isolated = stack.model_copy(update={"verification": verification})
    unsynchronised = replace_section(RECORDED, "time_sync", CHRONY_RUNNING + TRACKING_NO_SOURCE)
    result = judge(isolated, geoip, unsynchronised)["host/time-sync"]
    assert result.status == "pass", result
    assert "not synchronised" in result.observed  # the report still says so
    assert result.expected == "chrony active and enabled (verification.timeSyncRequired is false)"
    stopped = replace_section(RECORDED, "time_sync", CHRONY_STOPPED + TRACKING_NO_DAEMON)
    assert judge(isolated, geoip, stopped)["host/time-sync"].status == "fail"


def test_time_sync_is_skipped_without_a_report_of_the_time_daemons(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    # facts recorded before the collector asked about time daemons
    assert "time_sync" not in parse_sections(RECORDED)
    result = judge(stack, geoip, RECORDED)["host/time-sync"]
    assert (result.status, result.observed) == (
        "skip",
        "no time daemon report in the collected facts",
    )


def test_the_time_daemon_judged_is_the_one_host_setup_installs_and_enables() -> None:
    base = (ROOT / "host-setup" / "10-base.sh.j2").read_text()
    collector = (ROOT / "components" / "verification" / "layers" / "host.sh").read_text()
    assert TIME_SYNC_UNIT in BASE_PACKAGES
    assert f"systemctl is-active --quiet {TIME_SYNC_UNIT};" in base
    assert f"restart_unit {TIME_SYNC_UNIT}\n" in base
    assert f"{TIME_SYNC_UNIT}.service" in collector


# The cache_writable section, recorded from the collector's part under LC_ALL=C: on a writable
# tmpfs, and on a tmpfs mounted read-only. rm -f of a file just created fails only on a changed
# directory; its line is written in GNU rm's format.
WRITE_ON_A_WRITABLE_CACHE = "create ok\nremove ok"
WRITE_ON_A_READ_ONLY_CACHE = (
    "create mktemp: failed to create file via template "
    "'/tmp/rofs/.sovereign-write-probe.XXXXXX': Read-only file system"
)
WRITE_NOT_REMOVED = (
    "create ok\nremove rm: cannot remove "
    "'/var/lib/sovereign/weights/.sovereign-write-probe.Xq3v9Z': Operation not permitted"
)


@pytest.mark.parametrize(
    ("body", "status", "observed"),
    [
        (WRITE_ON_A_WRITABLE_CACHE, "pass", "a file created and removed"),
        (WRITE_ON_A_READ_ONLY_CACHE, "fail", "no file created: mktemp: failed to create file"),
        (WRITE_NOT_REMOVED, "fail", "a file created, not removed: rm: cannot remove"),
        ("", "fail", "no file created: no report of the probe"),
    ],
    ids=["writable", "read-only", "not-removed", "no-report"],
)
def test_cache_writable_is_judged_from_the_write_probe(
    stack: StackConfig, geoip: GeoIpDatabase, body: str, status: str, observed: str
) -> None:
    result = judge(stack, geoip, replace_section(RECORDED, "cache_writable", body))
    writable = result["cache/writable"]
    assert (writable.status, writable.observed[: len(observed)]) == (status, observed)
    planned = {c.id: c.expected for c in host_checks(stack, stack.hosts[0])}
    assert writable.expected == planned["cache.writable"]


def test_a_read_only_cache_names_the_error_in_the_evidence(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    facts = replace_section(RECORDED, "cache_writable", WRITE_ON_A_READ_ONLY_CACHE)
    writable = judge(stack, geoip, facts)["cache/writable"]
    assert writable.evidence["created"] is False
    assert writable.evidence["error"].endswith("Read-only file system")


def test_cache_writable_is_skipped_where_there_is_nothing_to_write_to(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    assert judge(stack, geoip, RECORDED)["cache/writable"].observed == (
        "no write probe in the collected facts"
    )
    probed = replace_section(RECORDED, "cache_writable", "")
    unmounted = judge(stack, geoip, replace_section(probed, "cache_mount", ""))["cache/writable"]
    assert (unmounted.status, unmounted.observed) == ("skip", "the cache is not mounted")
    no_cache = judge(stack, geoip, probed, nvme=())["cache/writable"]
    assert (no_cache.status, no_cache.observed) == ("skip", "no NVMe drives declared for this host")


def test_gpu_host_gets_driver_and_runtime_checks(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    facts = replace_section(RECORDED, "gpu_probe", HEALTHY_GPU.replace("\n", ""))
    facts = replace_section(
        facts, "container_toolkit", "NVIDIA Container Toolkit CLI version 1.17.8\nnvidia.yaml"
    )
    results = judge(stack, geoip, facts, gpu=GpuSpec(model="H100-SXM5-80GB", count=8))
    driver = [r for k, r in results.items() if k.startswith("driver/")]
    assert len(driver) > 100
    assert [r.message() for r in driver if r.status == "fail"] == []
    # Hopper reports no retired pages (it remaps rows): those checks are skipped, saying so
    skipped = {r.check.split(":")[0] for r in driver if r.status == "skip"}
    assert skipped == {"retired-pages-pending"}
    assert results["runtime/nvidia-container-toolkit"].status == "pass"
    no_driver = judge(stack, geoip, RECORDED, gpu=GpuSpec(model="H100-SXM5-80GB", count=8))
    assert no_driver["driver/nvml"].status == "fail"
    assert "no-driver" in no_driver["driver/nvml"].observed
    driver_failures = [
        k for k, r in no_driver.items() if k.startswith("driver/") and r.status == "fail"
    ]
    assert driver_failures == ["driver/nvml"]


def test_incomplete_facts_fail_once_and_skip_the_rest(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    cut = RECORDED.split("==== firewall")[0]
    results = judge(stack, geoip, cut)
    assert [k for k, r in results.items() if r.status == "fail"] == ["host/facts-complete"]
    planned = {c.id.replace(".", "/", 1) for c in host_checks(stack, stack.hosts[0])}
    assert set(results) == planned
    skipped = {r.observed for r in results.values() if r.status == "skip"}
    assert skipped == {"not judged: host.facts-complete failed"}


def report_of(stack: StackConfig, geoip: GeoIpDatabase, facts: str) -> dict[str, Any]:
    """The evidence report of the first host judged on ``facts``, reached at port 2222."""
    verification = Verification(
        results=list(judge(stack, geoip, facts).values()),
        hosts=[
            HostRun("lab-1", None, 1.0, "", host_address(stack.hosts[0]), 2222, "SHA256:pinnedkey")
        ],
        geoip=geoip.describe(),
        seconds=1.5,
    )
    return evidence(stack, verification, "stacks/Pulumi.lab.yaml")


def test_report_formats(stack: StackConfig, geoip: GeoIpDatabase) -> None:
    host = stack.hosts[0]
    report = report_of(stack, geoip, replace_section(RECORDED, "cache_mount", ""))
    assert report["passed"] is False
    assert report["summary"]["failed"] == 1
    assert dt.date.fromisoformat(report["retain_until"]) - dt.date.fromisoformat(
        report["generated_at"][:10]
    ) >= dt.timedelta(days=182)
    assert "k3sToken" not in json.dumps(report)
    text = markdown(report)
    assert "# Verification of `lab`: FAIL" in text
    assert "**[cache] lab-1 mounted**: observed not mounted" in text
    assert f"| lab-1 | {host.address}:2222 | SHA256:pinnedkey |" in text
    xml = junit_xml(report)
    assert (
        '<testcase classname="cache.lab-1" name="mounted"><failure message="observed not mounted'
        in xml
    )


def test_report_names_hosts_database_skips_and_evidence(
    stack: StackConfig, geoip: GeoIpDatabase
) -> None:
    host = stack.hosts[0]
    report = report_of(stack, geoip, RECORDED)
    assert report["passed"] is True
    assert report["hosts"][0] | {"seconds": 0} == {
        "name": "lab-1",
        "address": host.address,
        "ssh_port": 2222,
        "ssh_host_key": "SHA256:pinnedkey",
        "seconds": 0,
        "reachable": False,
        "error": "",
    }
    database = report["geoip_database"]
    assert (database["name"], database["built"]) == (
        "DB-IP Lite Country",
        geoip.built.date().isoformat(),
    )
    rows = {c["id"]: c for c in report["checks"]}
    judged = [c for c in rows.values() if c["status"] != "skip"]
    assert [c["id"] for c in judged if not c["evidence"]] == []
    assert rows["host.os"]["evidence"] == {"facts": {"os": "debian-12", "kernel": "6.1.0-50-amd64"}}
    skip = rows["driver.gpu-count"]
    assert (skip["status"], skip["reason"]) == ("skip", "no GPUs declared and no NVIDIA driver")
    assert rows["residency.firewall"]["observed"] == "input policy drop"


@pytest.mark.parametrize("spelling", ["without-password", "prohibit-password"])
def test_root_login_synonyms_read_as_one_setting(
    stack: StackConfig, geoip: GeoIpDatabase, spelling: str
) -> None:
    sshd = f"passwordauthentication no\nkbdinteractiveauthentication no\npermitrootlogin {spelling}"
    result = judge(stack, geoip, replace_section(RECORDED, "sshd", sshd))["host/ssh-root-login"]
    assert (result.status, result.observed) == ("pass", "prohibit-password")


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
    k3s = stack.model_copy(update={"k3s": stack.k3s.model_copy(update={"install": True})})
    good = judge(k3s, geoip, replace_section(RECORDED, "inference_pods", pods_json(compliant)))
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
    bad = judge(k3s, geoip, replace_section(RECORDED, "inference_pods", pods_json(leaky)))
    telemetry = bad["inference/telemetry-off"]
    assert telemetry.status == "fail"
    assert telemetry.observed.startswith("vllm-mistral-small-7d9f/vllm missing VLLM_NO_USAGE_STATS")
    store = bad["inference/object-store"]
    assert store.status == "fail"
    assert "https://s3.us-east-1.amazonaws.com" in store.observed
    idle = judge(k3s, geoip, replace_section(RECORDED, "inference_pods", json.dumps({"items": []})))
    assert idle["inference/telemetry-off"].status == "skip"
    assert "scaled to zero" in idle["inference/telemetry-off"].observed
