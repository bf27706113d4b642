"""SSH hardening on a real lab host: ssh-audit, the executor and the lab's own client after the base step.

One host serves every check (the guests are the scarce resource): ssh-audit against the stock sshd,
the base step rolled out through ``apply_stack``, a second run and a check run that change nothing,
ssh-audit again, fresh connections from paramiko and from the lab's ``ssh`` client, and a refusal
when a file read before the drop-in overrides it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from components.config.models import HostSpec, StackConfig
from components.execution.ssh import HostSession, HostTarget
from components.lab.inventory import LabHost
from components.lab.ssh import SshTarget, known_hosts_line, run_ssh
from components.plan.host_steps import (
    SSHD_CIPHERS,
    SSHD_HOST_KEY_ALGORITHMS,
    SSHD_KEX_ALGORITHMS,
    SSHD_MACS,
    SSHD_MIN_MODULUS_BITS,
    render_host_steps,
)
from components.rollout import RolloutReport, apply_stack
from tests.lab_stacks import ROOT, lab_host_spec, lab_stack

pytestmark = pytest.mark.integration

SSH_AUDIT = Path(sys.executable).with_name("ssh-audit")
# The algorithms ssh-audit 3.x may still warn about on a hardened host (it says: no protection
# against post-quantum attacks), and why they stay: paramiko (the executor) has no post-quantum
# key exchange that an OpenSSH before 9.9 offers, and the lab's client asks for these by name;
# OpenSSH clients pick the hybrid sntrup761x25519 exchange listed first.
ACCEPTED_WARNINGS = {"kex curve25519-sha256", "kex curve25519-sha256@libssh.org"}
AUDIT_TIMEOUT_S = 120


def timed(label: str, started: float) -> None:
    print(f"{label}: {time.monotonic() - started:.1f} s")


def ssh_audit(host: LabHost) -> dict[str, Any]:
    # --skip-rate-test: the DHEat connection-rate probe opens dozens of connections, which an
    # emulated guest answers slowly, and it only ever yields a note, never a failure or warning
    command = [str(SSH_AUDIT), "-j", "-n", "--skip-rate-test", "-t", "30", "-p", str(host.port)]
    result = subprocess.run(
        [*command, host.address],
        capture_output=True,
        text=True,
        timeout=AUDIT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode in (0, 2, 3), f"ssh-audit could not audit: {result.stderr}"
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def findings(report: dict[str, Any], level: str) -> list[str]:
    """``"<kind> <algorithm>: <note>"`` for every note at ``level`` (fail or warn), plus CVEs."""
    out = []
    for kind in ("kex", "key", "enc", "mac"):
        for entry in report.get(kind, []):
            for note in entry.get("notes", {}).get(level, []):
                out.append(f"{kind} {entry['algorithm']}: {note}")
    if level == "fail":
        out += [f"cve {cve.get('name')}" for cve in report.get("cves", [])]
    return sorted(out)


def base_only(host: HostSpec) -> tuple[StackConfig, dict[str, list[Any]]]:
    config = lab_stack().model_copy(update={"hosts": (host,)})
    return config, {host.name: render_host_steps(config, host, only=("10-base",))}


def results(report: RolloutReport) -> list[tuple[str, str]]:
    return [(s.result, s.error) for s in report.steps]


def test_base_step_leaves_no_ssh_audit_failure_and_clients_still_connect(
    lab_host: LabHost,
) -> None:
    host = lab_host_spec(lab_host)
    config, plans = base_only(host)

    started = time.monotonic()
    stock = ssh_audit(lab_host)
    timed("ssh-audit of the stock sshd", started)
    stock_failures, stock_warnings = findings(stock, "fail"), findings(stock, "warn")
    assert stock_failures, "the stock sshd should show what the hardening removes"

    started = time.monotonic()
    first = apply_stack(config, ROOT, plans=plans)
    timed("10-base first apply", started)
    assert [s.result for s in first.steps] == ["changed"], results(first)
    changes = " | ".join(first.steps[0].changes)
    assert "reload sshd" in changes
    assert f"moduli under {SSHD_MIN_MODULUS_BITS} bits" in changes
    again = apply_stack(config, ROOT, plans=plans)
    assert [s.result for s in again.steps] == ["unchanged"], results(again)
    checked = apply_stack(config, ROOT, mode="check", plans=plans)
    assert [s.result for s in checked.steps] == ["unchanged"], results(checked)
    print(f"10-base again: {again.seconds:.1f} s, check: {checked.seconds:.1f} s")

    started = time.monotonic()
    hardened = ssh_audit(lab_host)
    timed("ssh-audit of the hardened sshd", started)
    failures, warnings = findings(hardened, "fail"), findings(hardened, "warn")
    print(
        f"\nssh-audit before: {len(stock_failures)} failures, {len(stock_warnings)} warnings; "
        f"after: {len(failures)} failures, {len(warnings)} warnings"
    )
    for line in warnings:
        print(f"  warning left: {line}")
    assert failures == []
    warned = {line.split(":", 1)[0] for line in warnings}
    assert warned <= ACCEPTED_WARNINGS, warned - ACCEPTED_WARNINGS
    offered = {kind: {e["algorithm"] for e in hardened[kind]} for kind in ("kex", "enc", "mac")}
    assert offered["kex"] - {"kex-strict-s-v00@openssh.com"} == set(SSHD_KEX_ALGORITHMS)
    assert offered["enc"] == set(SSHD_CIPHERS)
    assert offered["mac"] == set(SSHD_MACS)
    assert {e["algorithm"] for e in hardened["key"]} <= set(SSHD_HOST_KEY_ALGORITHMS)

    # the executor: a fresh paramiko connection, host key still pinned, on the hardened algorithms
    session = HostSession(HostTarget.from_spec(host, ROOT), config.ssh)
    try:
        moduli = session.run_script(
            "awk '$1 !~ /^#/ && NF >= 7 {print $5}' /etc/ssh/moduli | sort -n | head -1\n",
            timeout=60,
        )
        assert session._client is not None
        transport = session._client.get_transport()
        assert transport is not None
        negotiated = (transport.local_cipher, transport.local_mac, transport.host_key_type)
    finally:
        session.close()
    assert moduli.exit_status == 0
    assert int(moduli.stdout) >= SSHD_MIN_MODULUS_BITS - 1, "a small modulus is left"
    assert negotiated[0] in SSHD_CIPHERS
    assert negotiated[1] in SSHD_MACS
    assert negotiated[2] == "ssh-ed25519"

    # the lab's own client (OpenSSH, its classic curve25519 exchange), strict host key checking
    known_hosts = lab_host.host_dir / "known_hosts.hardening"
    known_hosts.write_text(
        known_hosts_line(lab_host.address, lab_host.port, lab_host.host_key_public) + "\n"
    )
    target = SshTarget(
        lab_host.address, lab_host.port, lab_host.user, lab_host.private_key, known_hosts
    )
    lab_client = run_ssh(target, "echo reached", connect_timeout_s=30, command_timeout_s=60)
    assert (lab_client.returncode, lab_client.stdout.strip()) == (0, "reached"), lab_client.stderr

    # a file read before the drop-in that brings SHA-1 back is refused, and named
    override = session_run(
        host,
        config,
        "printf 'MACs hmac-sha1\\n' >/etc/ssh/sshd_config.d/10-weak.conf\n",
    )
    assert override == 0
    refused = apply_stack(config, ROOT, plans=plans)
    assert [s.result for s in refused.steps] == ["failed"]
    assert "refused" in refused.steps[0].error
    assert "macs is hmac-sha1" in refused.steps[0].error
    assert session_run(host, config, "rm /etc/ssh/sshd_config.d/10-weak.conf\n") == 0

    # a host whose sshd has only a NIST-curve host key would be left with none to offer: the step
    # refuses before touching the drop-in (edited here so that the step wants to rewrite it)
    only_ecdsa = (
        "set -e\nssh-keygen -q -t ecdsa -N '' -f /etc/ssh/ssh_host_ecdsa_key </dev/null\n"
        "sed -i 's|^HostKey .*|HostKey /etc/ssh/ssh_host_ecdsa_key|' "
        "/etc/ssh/sshd_config.d/10-lab.conf\n"
        "echo '# edited' >>/etc/ssh/sshd_config.d/50-sovereign.conf\n"
    )
    assert session_run(host, config, only_ecdsa) == 0
    no_key = apply_stack(config, ROOT, plans=plans)
    assert [s.result for s in no_key.steps] == ["failed"]
    assert "no ssh-ed25519 ssh-rsa host key" in no_key.steps[0].error
    # undone, the host is as the first rollout left it: nothing to change
    restore = (
        "set -e\ngrep -qx '# edited' /etc/ssh/sshd_config.d/50-sovereign.conf\n"
        "sed -i '/^# edited$/d' /etc/ssh/sshd_config.d/50-sovereign.conf\n"
        "sed -i 's|^HostKey .*|HostKey /etc/ssh/ssh_host_ed25519_key|' "
        "/etc/ssh/sshd_config.d/10-lab.conf\n"
    )
    assert session_run(host, config, restore) == 0, "the refusal must leave the drop-in as it was"
    restored = apply_stack(config, ROOT, plans=plans)
    assert [s.result for s in restored.steps] == ["unchanged"], results(restored)


def session_run(host: HostSpec, config: StackConfig, script: str) -> int:
    session = HostSession(HostTarget.from_spec(host, ROOT), config.ssh)
    try:
        return session.run_script(script, timeout=60).exit_status
    finally:
        session.close()
