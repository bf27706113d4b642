"""SSH for the lab's own checks: keys, pinned host keys, and the ``ssh`` client with strict checking.

The lab never turns host key checking off. Each connection names a known_hosts file holding exactly
the key the guest is expected to present, and ``StrictHostKeyChecking=yes`` makes any other key fail.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SSH_BINARY = "ssh"
# ssh's own exit status for "could not connect or authenticate"; a remote command's status otherwise.
SSH_CONNECTION_FAILED = 255
# The lab's own checks use classic curve25519 key exchange: under emulation the default hybrid
# post-quantum exchange costs a quarter of a second per connection, and these connections carry no
# secrets worth more than the lab itself.
LAB_KEX_ALGORITHMS = "curve25519-sha256,curve25519-sha256@libssh.org"
SSH_KEYGEN_BINARY = "ssh-keygen"
ED25519 = "ssh-ed25519"


class SshError(RuntimeError):
    """An SSH command failed or a host did not become reachable in time."""


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to reach one guest with its host key pinned."""

    address: str
    port: int
    user: str
    private_key: Path
    known_hosts: Path


def fingerprint(public_key_line: str) -> str:
    """``SHA256:<base64>`` of an OpenSSH public key line, exactly as ``ssh-keygen -lf`` prints it."""
    fields = public_key_line.split()
    if len(fields) < 2:
        raise ValueError(f"not an OpenSSH public key line: {public_key_line!r}")
    blob = base64.b64decode(fields[1], validate=True)
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def public_key_without_comment(public_key_line: str) -> str:
    """``<type> <base64>``: what a known_hosts entry and the inventory carry."""
    key_type, blob = public_key_line.split()[:2]
    return f"{key_type} {blob}"


def known_hosts_line(address: str, port: int, public_key_line: str) -> str:
    """A known_hosts entry for ``address:port`` (bracketed form for a non-default port)."""
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {public_key_without_comment(public_key_line)}"


def generate_ed25519_key(path: Path, comment: str) -> str:
    """Create an ed25519 key pair at ``path`` (and ``path.pub``); return the public key line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [SSH_KEYGEN_BINARY, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return public_key_path(path).read_text().strip()


def public_key_path(private_key: Path) -> Path:
    return private_key.with_name(private_key.name + ".pub")


def ssh_command(target: SshTarget, remote_command: str, connect_timeout_s: float) -> list[str]:
    """The ``ssh`` argv: no user config, key auth only, the target's known_hosts only, strict."""
    return [
        SSH_BINARY,
        "-F",
        "none",
        "-p",
        str(target.port),
        "-i",
        str(target.private_key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={target.known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        f"KexAlgorithms={LAB_KEX_ALGORITHMS}",
        "-o",
        f"ConnectTimeout={max(1, round(connect_timeout_s))}",
        "-o",
        "LogLevel=ERROR",
        f"{target.user}@{target.address}",
        remote_command,
    ]


def run_ssh(
    target: SshTarget,
    remote_command: str,
    *,
    connect_timeout_s: float,
    command_timeout_s: float,
    stdin_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one remote command; the result carries its exit status and output."""
    try:
        return subprocess.run(
            ssh_command(target, remote_command, connect_timeout_s),
            input=stdin_text if stdin_text is not None else "",
            capture_output=True,
            text=True,
            timeout=command_timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SshError(
            f"{target.address}:{target.port}: {remote_command!r} ran over {command_timeout_s}s"
        ) from exc


def run_ssh_when_reachable(
    target: SshTarget,
    remote_command: str,
    *,
    timeout_s: float,
    connect_timeout_s: float,
    command_timeout_s: float,
    poll_interval_s: float,
    stdin_text: str | Callable[[], str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command once the host accepts the pinned key, retrying only failed connections.

    ``stdin_text`` may be a callable, evaluated for each attempt (for input that carries the time).
    Raises :class:`SshError` when no connection succeeded within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        text = stdin_text() if callable(stdin_text) else stdin_text
        result = run_ssh(
            target,
            remote_command,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
            stdin_text=text,
        )
        if result.returncode != SSH_CONNECTION_FAILED:
            return result
        if time.monotonic() >= deadline:
            raise SshError(
                f"{target.address}:{target.port} not reachable over SSH after {timeout_s}s: "
                f"{result.stderr.strip() or 'no error output'}"
            )
        time.sleep(poll_interval_s)


def wait_for_ssh(
    target: SshTarget,
    *,
    timeout_s: float,
    connect_timeout_s: float,
    poll_interval_s: float,
) -> None:
    """Return once ``ssh true`` succeeds with the pinned key; :class:`SshError` after ``timeout_s``."""
    result = run_ssh_when_reachable(
        target,
        "true",
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        command_timeout_s=connect_timeout_s + timeout_s,
        poll_interval_s=poll_interval_s,
    )
    if result.returncode != 0:
        raise SshError(f"{target.address}:{target.port}: `true` failed: {result.stderr.strip()}")
