"""``verify`` against real lab hosts: passes on a prepared host, names what is wrong on broken ones."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from components.config.models import StackConfig
from components.execution.ssh import HostSession, HostTarget, run_step
from components.lab.inventory import LabHost
from components.plan.host_steps import render_host_steps
from components.rollout import apply_stack
from components.verification.results import Finding
from components.verification.runner import verify_stack
from tests.integration.conftest import apt_mirror_ranges
from tests.lab_stacks import LAB_STEPS, ROOT, stack_for

pytestmark = pytest.mark.integration


def roll_out(stack: StackConfig) -> None:
    plans = {h.name: render_host_steps(stack, h, only=LAB_STEPS) for h in stack.hosts}
    report = apply_stack(stack, ROOT, plans=plans)
    assert not report.failed, [s.error for s in report.failed]


# What the lab cannot satisfy: its GeoIP database may be older than the stack allows. (It has no
# NTP server either; the lab stack sets verification.timeSyncRequired false for that.)
LAB_LIMITS = {"residency/geoip-database-fresh"}


def failures(results: list[Finding]) -> dict[str, Finding]:
    return {f"{r.layer}/{r.check}": r for r in results if r.status == "fail"}


@pytest.fixture
def prepared(
    lab_hosts: Callable[..., list[LabHost]],
) -> tuple[StackConfig, list[LabHost]]:
    entries = lab_hosts(2)
    stack = stack_for(entries)
    roll_out(stack)
    return stack, entries


def run_on(stack: StackConfig, entry: LabHost, script: str) -> None:
    host = next(h for h in stack.hosts if h.name == entry.name)
    session = HostSession(HostTarget.from_spec(host, ROOT), stack.ssh)
    try:
        result = session.run_script(script)
        assert result.exit_status == 0, result.stderr_tail
    finally:
        session.close()


def test_verify_passes_on_prepared_hosts_then_names_each_breakage(
    prepared: tuple[StackConfig, list[LabHost]],
) -> None:
    stack, (good, bad) = prepared
    clean = verify_stack(stack, ROOT)
    assert set(failures(clean.results)) <= LAB_LIMITS, [r.message() for r in clean.failed]
    layers = {r.layer for r in clean.results}
    assert layers == {"host", "driver", "runtime", "cache", "k3s", "inference", "residency"}

    # break the second host four ways, on purpose
    run_on(
        stack,
        bad,
        "set -e\n"
        "umount /var/lib/sovereign/weights\n"
        "printf 'nameserver 8.8.8.8\\n' >/etc/resolv.conf\n"
        "ip link add sov-test type dummy && ip addr add 8.8.4.4/32 dev sov-test\n"
        "sed -i 's#^sovereign-inference/country=DE#sovereign-inference/country=US#' /etc/sovereign/node-labels\n",
    )
    broken = verify_stack(stack, ROOT)
    by_host: dict[str, dict[str, Finding]] = {}
    for r in broken.failed:
        by_host.setdefault(r.host, {})[f"{r.layer}/{r.check}"] = r
    assert not set(by_host.get(good.name, {})) - LAB_LIMITS, "the intact host must still pass"
    found = by_host[bad.name]
    assert "cache/mounted" in found
    assert found["cache/mounted"].message() == (
        f"[cache] {bad.name} mounted: observed not mounted, expected xfs at /var/lib/sovereign/weights"
    )
    assert "8.8.8.8" in found["residency/dns-resolvers"].observed
    # an address the host holds but the stack never declared: judged with every global address
    assert "8.8.4.4 US" in found["residency/addresses"].observed
    label = found["residency/label:sovereign-inference/country"]
    assert label.observed == "US in /etc/sovereign/node-labels"
    assert label.expected == "DE"


def test_verify_cli_writes_evidence_and_junit(
    prepared: tuple[StackConfig, list[LabHost]], tmp_path: Path
) -> None:
    stack, entries = prepared
    inventory = {
        "version": 1,
        "hosts": [
            {
                "name": h.name,
                "address": e.address,
                "port": e.port,
                "user": e.user,
                "privateKey": str(e.private_key),
                "hostKey": e.host_key,
            }
            for h, e in zip(stack.hosts, entries, strict=True)
        ],
    }
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (project / "inventory.json").write_text(json.dumps(inventory))
    text = (
        (ROOT / "stacks" / "Pulumi.lab.yaml")
        .read_text()
        .replace(".lab/inventory.json", "inventory.json")
    )
    text = text.replace("name: lab-1", f"name: {entries[0].name}").replace(
        "name: lab-2", f"name: {entries[1].name}"
    )
    for i, entry in enumerate(entries):
        for j, drive in enumerate(entry.nvme):
            text = text.replace(f"nvme-QEMU_NVMe_Ctrl_LAB{i + 1}NVME{j}", drive)
    (project / "stacks" / "Pulumi.lab.yaml").write_text(text)
    report_dir = tmp_path / "report"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "components",
            "verify",
            "--stack-file",
            str(project / "stacks" / "Pulumi.lab.yaml"),
            "--report",
            str(report_dir),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    evidence = json.loads(next(report_dir.glob("*.json")).read_text())
    assert evidence["environment"] == "lab"
    assert evidence["summary"]["hosts"] == 2
    assert len(evidence["stack_config_sha256"]) == 64
    assert evidence["geoip_database"]["type"].startswith("country")
    assert "DB-IP" in evidence["geoip_attribution"]
    assert {c["layer"] for c in evidence["checks"]} >= {"host", "cache", "residency"}
    junit = next(report_dir.glob("*.junit.xml")).read_text()
    assert '<testsuite name="cache"' in junit
    markdown = next(report_dir.glob("*.md")).read_text()
    assert markdown.startswith("# Verification of `lab`")
    failed = [c for c in evidence["checks"] if c["status"] == "fail"]
    assert result.returncode == (1 if failed else 0), result.stderr


def test_egress_allowlist_blocks_a_real_connection(lab_host: LabHost, tmp_path: Path) -> None:
    """A TCP server on this machine's loopback is reachable from the guest (as 10.0.2.2 through
    QEMU's NAT) until the firewall's egress allowlist, which leaves it out, is loaded."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    accepted: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append("connection")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        base = stack_for([lab_host])
        verification_spec = base.verification.model_copy(
            update={"egress_canary": f"10.0.2.2:{port}"}
        )
        open_stack = base.model_copy(update={"verification": verification_spec})
        session = HostSession(HostTarget.from_spec(base.hosts[0], ROOT), base.ssh)
        # the apt mirror stays reachable: the firewall step refuses an allowlist without it
        allowlist = ("10.0.2.3/32", *apt_mirror_ranges(session))
        policy = base.residency.model_copy(update={"egress_allowlist": allowlist})
        closed_stack = open_stack.model_copy(update={"residency": policy})
        host = closed_stack.hosts[0]
        try:
            (firewall,) = render_host_steps(closed_stack, host, only=("60-firewall",))
            before = verify_stack(closed_stack, ROOT, layers=("residency",))
            canary = {r.check: r for r in before.results}["egress-canary"]
            assert canary.observed == "connected", "without the firewall the canary must connect"
            assert accepted, "the local server saw no connection"
            run_step(session, firewall.name, firewall.script, env=firewall.env)
            after = verify_stack(closed_stack, ROOT, layers=("residency",))
            by_check = {r.check: r for r in after.results}
            assert by_check["egress-allowlist"].status == "pass"
            assert by_check["egress-canary"].status == "pass"
            assert by_check["egress-canary"].observed == "blocked"
        finally:
            session.close()
    finally:
        server.close()
