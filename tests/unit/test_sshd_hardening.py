"""The sshd drop-in the base step installs, checked against this machine's real OpenSSH server.

The lab test (tests/integration/test_ssh_hardening.py) proves the same on a rolled-out host; these
run in the unit suite: the algorithm sets against paramiko's and the lab client's, ``sshd -t`` and
``sshd -T`` on the drop-in, and ssh-audit plus a paramiko connection against a loopback sshd that
uses it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from components.config.models import SshDefaults
from components.execution.ssh import HostSession, HostTarget
from components.lab.ssh import LAB_KEX_ALGORITHMS
from components.plan.host_steps import (
    SSHD_CIPHERS,
    SSHD_HOST_KEY_ALGORITHMS,
    SSHD_KEX_ALGORITHMS,
    SSHD_MACS,
    sshd_dropin_content,
    sshd_effective_settings,
)
from tests.conftest import SSHD, LocalSshd

SSH_AUDIT = Path(sys.executable).with_name("ssh-audit")
WEAK = ("nistp", "sha1", "-cbc", "umac-64", "group14", "group1-", "ssh-rsa", "ssh-dss", "md5")


def test_the_executor_and_the_lab_client_share_every_algorithm_kind_with_the_host() -> None:
    ours, theirs = socket.socketpair()
    transport = paramiko.Transport(ours)  # what the executor offers; never started
    try:
        offered = transport.get_security_options()
        assert set(SSHD_KEX_ALGORITHMS) & set(offered.kex)
        assert set(SSHD_CIPHERS) & set(offered.ciphers)
        assert set(SSHD_MACS) & set(offered.digests)
        assert set(SSHD_HOST_KEY_ALGORITHMS) & set(offered.key_types)
    finally:
        transport.close()
        theirs.close()
    assert set(LAB_KEX_ALGORITHMS.split(",")) & set(SSHD_KEX_ALGORITHMS)


def test_no_weak_algorithm_is_offered() -> None:
    offered = SSHD_KEX_ALGORITHMS + SSHD_CIPHERS + SSHD_MACS + SSHD_HOST_KEY_ALGORITHMS
    for name in offered:
        assert not any(weak in name for weak in WEAK), name
    assert all(mac.endswith("-etm@openssh.com") for mac in SSHD_MACS)


@pytest.fixture
def hardened_sshd(local_sshd: LocalSshd, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A second loopback sshd: the test sshd's settings with the drop-in read first."""
    tmp_path.chmod(0o700)
    dropin = tmp_path / "50-sovereign.conf"
    dropin.write_text(sshd_dropin_content() + "\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = (local_sshd.workdir / "sshd_config").read_text()
    base = base.replace(f"Port {local_sshd.port}", f"Port {port}")
    base = base.replace(f"PidFile {local_sshd.workdir / 'sshd.pid'}", f"PidFile {tmp_path / 'pid'}")
    base = "\n".join(
        line for line in base.splitlines() if not line.startswith("ListenAddress 127.0.0.")
    )
    config = tmp_path / "sshd_config"
    config.write_text(f"Include {dropin}\nListenAddress 127.0.0.1\n{base}\n")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"sshd with the drop-in did not start: {err}")
            time.sleep(0.05)
    try:
        yield port, config
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_sshd_accepts_the_dropin_and_prints_exactly_the_settings_the_step_expects(
    hardened_sshd: tuple[int, Path],
) -> None:
    _, config = hardened_sshd
    checked = subprocess.run(
        [str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    effective = subprocess.run(
        [str(SSHD), "-T", "-f", str(config)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for line in sshd_effective_settings():
        assert line in effective


def test_hardened_sshd_has_no_ssh_audit_failure_and_the_executor_connects(
    local_sshd: LocalSshd, hardened_sshd: tuple[int, Path]
) -> None:
    port, _ = hardened_sshd
    audit = subprocess.run(
        [str(SSH_AUDIT), "-j", "-n", "--skip-rate-test", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(audit.stdout)
    failures = [
        f"{kind} {entry['algorithm']}"
        for kind in ("kex", "key", "enc", "mac")
        for entry in report[kind]
        if entry.get("notes", {}).get("fail")
    ]
    assert failures == []
    assert audit.returncode != 3, "ssh-audit reports a failure"
    session = HostSession(
        HostTarget(
            "local",
            "127.0.0.1",
            port,
            local_sshd.user,
            f"file:{local_sshd.client_keys['ed25519']}",
            local_sshd.host_key_fingerprint,
        ),
        SshDefaults(connect_timeout_seconds=5, connect_retries=0, retry_backoff_seconds=0),
    )
    try:
        assert session.run_script("echo hardened\n").stdout == "hardened"
    finally:
        session.close()
