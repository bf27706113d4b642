"""Fixtures shared by every suite: a real OpenSSH server on loopback for executor tests, and the
golden-file comparison."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.plan.templates import environment
from tests.loopback import free_port, wait_for_listener

SSHD = Path("/usr/sbin/sshd")
ROOT = Path(__file__).resolve().parents[1]
UPDATE_GOLDEN = "UPDATE_GOLDEN"


@dataclass(frozen=True)
class GoldenDifference:
    """How a rendered tree differs from its golden copy: relative paths by kind."""

    added: tuple[str, ...]  # rendered, not in the golden copy
    removed: tuple[str, ...]  # in the golden copy, no longer rendered
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self) -> str:
        parts = []
        for kind, paths in (
            ("changed", self.changed),
            ("added", self.added),
            ("removed", self.removed),
        ):
            if paths:
                shown = ", ".join(paths[:5]) + (
                    f" and {len(paths) - 5} more" if len(paths) > 5 else ""
                )
                parts.append(f"{len(paths)} {kind} ({shown})")
        return "; ".join(parts) or "no difference"


def read_tree(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by its relative path (empty when it does not exist)."""
    return {
        str(p.relative_to(directory)): p.read_text()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def golden_difference(rendered: dict[str, str], golden: dict[str, str]) -> GoldenDifference:
    return GoldenDifference(
        added=tuple(sorted(set(rendered) - set(golden))),
        removed=tuple(sorted(set(golden) - set(rendered))),
        changed=tuple(sorted(k for k in set(rendered) & set(golden) if rendered[k] != golden[k])),
    )


def assert_matches_golden(rendered: dict[str, str], golden_dir: Path) -> None:
    """Fail unless ``rendered`` (relative path -> text) equals the files under ``golden_dir``.

    The comparison is always against the golden files as they were before this call. With
    ``UPDATE_GOLDEN=1`` a difference is written to ``golden_dir`` and the test is skipped with what
    was written, so an updating run never reports the comparison as passed; ``.ci/run`` refuses the
    variable and fails when ``tests/golden`` differs from the commit.
    """
    golden = read_tree(golden_dir)
    difference = golden_difference(rendered, golden)
    if not difference:
        return
    where = golden_dir.relative_to(ROOT) if golden_dir.is_relative_to(ROOT) else golden_dir
    if os.environ.get(UPDATE_GOLDEN) != "1":
        pytest.fail(
            f"{where} differs from what the code renders: {difference.summary()}; if the change is "
            f"intended, run with {UPDATE_GOLDEN}=1 and review `git diff -- {where}`\n"
            + first_lines_of_diff(golden, rendered, difference.changed[:1]),
            pytrace=False,
        )
    shutil.rmtree(golden_dir, ignore_errors=True)
    for rel, text in rendered.items():
        (golden_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (golden_dir / rel).write_text(text)
    pytest.skip(
        f"{UPDATE_GOLDEN}=1 rewrote {where}: {difference.summary()}; review `git diff -- {where}` "
        "and run again without it to compare"
    )


def first_lines_of_diff(
    golden: dict[str, str], rendered: dict[str, str], paths: tuple[str, ...], limit: int = 40
) -> str:
    """The start of a unified diff of each of ``paths``, golden first: enough to see what moved."""
    lines: list[str] = []
    for rel in paths:
        lines += difflib.unified_diff(
            golden[rel].splitlines(keepends=True),
            rendered[rel].splitlines(keepends=True),
            f"golden/{rel}",
            f"rendered/{rel}",
        )
    return "".join(lines[:limit])


def sovereign(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``sovereign ARGS...`` as a user runs it, in a fresh interpreter (never raises on exit 2)."""
    return subprocess.run(
        [sys.executable, "-m", "components", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def step_script(body: str, step_name: str = "99-test") -> str:
    """A step script around ``body`` (shell functions apply/teardown) on the real step library."""
    text = '{% include "_lib.sh.j2" %}\n' + body + '\n{% include "_run.sh.j2" %}\n'
    return environment().from_string(text).render(step_name=step_name)


@dataclass(frozen=True)
class LocalSshd:
    """An sshd on 127.0.0.1 that accepts the listed client keys for the current user."""

    port: int
    host_key_fingerprint: str
    host_key_public: str
    client_keys: dict[str, Path]  # key type -> private key file
    user: str
    workdir: Path


def start_sshd(
    workdir: Path,
    port: int,
    host_key: Path,
    authorized_keys: Path,
    listen: tuple[str, ...] = ("127.0.0.1",),
    name: str = "sshd",
) -> subprocess.Popen[bytes]:
    """A real sshd on ``port`` presenting ``host_key``, admitting ``authorized_keys`` for the
    current user, its files ``<name>_config`` and ``<name>.pid`` in ``workdir``; returned once it
    listens (stop it with terminate())."""
    config = workdir / f"{name}_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                # several loopback addresses stand for several hosts in rollout tests
                *(f"ListenAddress {address}" for address in listen),
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized_keys}",
                f"PidFile {workdir / f'{name}.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    if not wait_for_listener(proc, port, timeout=10) and proc.poll() is not None:
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"sshd exited: {err}")
    return proc


def keygen(path: Path, key_type: str) -> None:
    """A new key pair at ``path`` and ``path.pub``, without a passphrase."""
    args = ["ssh-keygen", "-q", "-N", "", "-t", key_type, "-f", str(path), "-C", f"test-{key_type}"]
    if key_type == "rsa":
        args += ["-b", "3072"]
    subprocess.run(args, check=True)


def fingerprint(public_key: Path) -> str:
    """``SHA256:...`` of a public key file, as ``ssh-keygen -lf`` prints it."""
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(public_key)], check=True, capture_output=True, text=True
    ).stdout
    return out.split()[1]


@pytest.fixture(scope="session")
def local_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSshd]:
    if not SSHD.exists() or shutil.which("ssh-keygen") is None:
        pytest.fail("openssh-server is required (bash .ci/setup installs it)")
    workdir = tmp_path_factory.mktemp("sshd")
    workdir.chmod(0o700)
    host_key = workdir / "ssh_host_ed25519_key"
    keygen(host_key, "ed25519")
    client_keys = {}
    for key_type in ("ed25519", "ecdsa", "rsa"):
        client_keys[key_type] = workdir / f"id_{key_type}"
        keygen(client_keys[key_type], key_type)
    authorized = workdir / "authorized_keys"
    authorized.write_text("".join(Path(f"{k}.pub").read_text() for k in client_keys.values()))
    authorized.chmod(0o600)
    port = free_port()
    proc = start_sshd(workdir, port, host_key, authorized, ("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    import getpass

    try:
        yield LocalSshd(
            port=port,
            host_key_fingerprint=fingerprint(Path(f"{host_key}.pub")),
            host_key_public=Path(f"{host_key}.pub").read_text().strip(),
            client_keys=client_keys,
            user=getpass.getuser(),
            workdir=workdir,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
