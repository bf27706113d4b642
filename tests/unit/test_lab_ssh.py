"""Pinned host keys for the lab's own SSH checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.lab.ssh import (
    SshTarget,
    fingerprint,
    known_hosts_line,
    public_key_without_comment,
    ssh_command,
)

PUBLIC_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiWrWq1eHxPZVedWeZkBJhNmsJDeF3e1P43ijtEuHyZ fixture"
)
# What `ssh-keygen -lf` printed for PUBLIC_KEY.
FINGERPRINT = "SHA256:+fbNpjwgxE6bDmUPtq8ZNRzo6+gBw5c0jZ3phoOBXOg"


def test_fingerprint_matches_ssh_keygen() -> None:
    assert fingerprint(PUBLIC_KEY) == FINGERPRINT
    assert len(FINGERPRINT.removeprefix("SHA256:")) == 43


def test_fingerprint_refuses_what_is_not_a_key() -> None:
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        fingerprint("ssh-ed25519")


def test_known_hosts_lines_bracket_non_default_ports() -> None:
    blob = PUBLIC_KEY.split()[1]
    assert known_hosts_line("127.0.0.1", 2201, PUBLIC_KEY) == f"[127.0.0.1]:2201 ssh-ed25519 {blob}"
    assert known_hosts_line("10.0.0.5", 22, PUBLIC_KEY) == f"10.0.0.5 ssh-ed25519 {blob}"
    assert public_key_without_comment(PUBLIC_KEY) == f"ssh-ed25519 {blob}"


def test_ssh_checks_host_keys_strictly_against_one_file_only() -> None:
    target = SshTarget("127.0.0.1", 2201, "root", Path("/lab/id_ed25519"), Path("/lab/kh"))
    argv = ssh_command(target, "true", connect_timeout_s=5)
    options = [argv[i + 1] for i, arg in enumerate(argv) if arg == "-o"]
    assert "StrictHostKeyChecking=yes" in options
    assert "UserKnownHostsFile=/lab/kh" in options
    assert "GlobalKnownHostsFile=/dev/null" in options
    assert "BatchMode=yes" in options
    assert "StrictHostKeyChecking=no" not in options
    assert "UserKnownHostsFile=/dev/null" not in options
    assert argv[1:3] == ["-F", "none"]
    assert argv[-2:] == ["root@127.0.0.1", "true"]
