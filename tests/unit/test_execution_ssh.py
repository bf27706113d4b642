"""The SSH executor against a real OpenSSH server on loopback (scripts run on this machine)."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import pytest

from components.config.models import SshDefaults
from components.execution.outcome import (
    HostKeyMismatch,
    HostUnreachable,
    StepFailed,
    StepRefused,
    parse_step_output,
)
from components.execution.ssh import HostSession, HostTarget, on_hosts, run_step
from tests.conftest import LocalSshd, step_script

FAST = SshDefaults(connect_timeout_seconds=3, connect_retries=1, retry_backoff_seconds=0)


def target(sshd: LocalSshd, *, key: str = "ed25519", host_key: str | None = "pinned") -> HostTarget:
    return HostTarget(
        name="local",
        address="127.0.0.1",
        port=sshd.port,
        user=sshd.user,
        private_key=f"file:{sshd.client_keys[key]}",
        host_key=sshd.host_key_fingerprint if host_key == "pinned" else host_key,
    )


@pytest.mark.parametrize("key", ["ed25519", "ecdsa", "rsa"])
def test_key_types_authenticate_with_pinned_host_key(local_sshd: LocalSshd, key: str) -> None:
    session = HostSession(target(local_sshd, key=key), FAST)
    try:
        result = session.run_script("echo hello-$((40 + 2))\n")
    finally:
        session.close()
    assert result.exit_status == 0
    assert result.stdout == "hello-42"


def test_key_from_environment_variable(
    local_sshd: LocalSshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_DEPLOY_KEY", local_sshd.client_keys["ecdsa"].read_text())
    t = HostTarget(
        "local",
        "127.0.0.1",
        local_sshd.port,
        local_sshd.user,
        "env:TEST_DEPLOY_KEY",
        local_sshd.host_key_fingerprint,
    )
    session = HostSession(t, FAST)
    try:
        assert session.run_script("true\n").exit_status == 0
    finally:
        session.close()


def test_host_key_mismatch_is_refused_before_anything_runs(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    wrong = "SHA256:" + "B" * 43
    marker = tmp_path / "ran"
    session = HostSession(target(local_sshd, host_key=wrong), FAST)
    started = time.monotonic()
    with pytest.raises(HostKeyMismatch) as info:
        session.run_script(f"touch {marker}\n")
    assert time.monotonic() - started < 5, "a mismatch must not be retried"
    assert wrong in str(info.value)
    assert local_sshd.host_key_fingerprint in str(info.value)
    assert not marker.exists()


def test_unpinned_host_is_refused(local_sshd: LocalSshd) -> None:
    session = HostSession(target(local_sshd, host_key=None), FAST)
    with pytest.raises(HostKeyMismatch, match="no host key pinned"):
        session.run_script("true\n")


def test_unreachable_host_fails_after_bounded_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = HostTarget("gone", "127.0.0.1", port, "root", "file:/nonexistent", "SHA256:" + "A" * 43)
    settings = SshDefaults(connect_timeout_seconds=1, connect_retries=2, retry_backoff_seconds=0)
    with pytest.raises(HostUnreachable, match="key file"):
        HostSession(t, settings).connect()


def test_closed_port_is_retried_then_reported(local_sshd: LocalSshd) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = HostTarget(
        "gone",
        "127.0.0.1",
        port,
        local_sshd.user,
        f"file:{local_sshd.client_keys['ed25519']}",
        "SHA256:" + "A" * 43,
    )
    settings = SshDefaults(connect_timeout_seconds=1, connect_retries=2, retry_backoff_seconds=0)
    with pytest.raises(HostUnreachable, match=r"unreachable after 3 attempt\(s\)"):
        HostSession(t, settings).connect()


def test_step_reports_changed_then_unchanged_with_facts(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    script = step_script(
        f'apply() {{\n  if [ ! -f {marker} ]; then\n    change "create marker" touch {marker}\n  fi\n'
        f"  fact marker.present yes\n}}\n"
    )
    session = HostSession(target(local_sshd), FAST)
    try:
        first = run_step(session, "99-test", script)
        second = run_step(session, "99-test", script)
        marker.unlink()
        drift = run_step(session, "99-test", script, mode="check")
    finally:
        session.close()
    assert first.result == "changed"
    assert first.changes == ("create marker",)
    assert first.facts == {"marker.present": "yes"}
    assert second.result == "unchanged"
    assert second.changes == ()
    assert drift.result == "drift"
    assert drift.drift == "create marker"
    assert not marker.exists(), "check mode must not change anything"


def test_refusal_and_failure_are_clear(local_sshd: LocalSshd) -> None:
    session = HostSession(target(local_sshd), FAST)
    try:
        with pytest.raises(StepRefused, match="refused: disk holds data"):
            run_step(session, "99-test", step_script('apply() {\n  refuse "disk holds data"\n}\n'))
        with pytest.raises(StepFailed, match=r"exit status 7: .*boom"):
            run_step(session, "99-test", step_script("apply() {\n  echo boom >&2\n  exit 7\n}\n"))
        with pytest.raises(StepFailed, match="without a SOVEREIGN-RESULT"):
            run_step(session, "99-test", "echo no protocol\n")
    finally:
        session.close()


def test_reboot_request_is_refused_for_steps_that_may_not_reboot(local_sshd: LocalSshd) -> None:
    session = HostSession(target(local_sshd), FAST)
    try:
        with pytest.raises(StepFailed, match="may not do"):
            run_step(session, "99-test", step_script('apply() {\n  reboot_required "kernel"\n}\n'))
    finally:
        session.close()


def test_timeout_stops_a_hung_step(local_sshd: LocalSshd) -> None:
    session = HostSession(target(local_sshd), FAST)
    started = time.monotonic()
    try:
        with pytest.raises(StepFailed, match="timed out after 1 s"):
            session.run_script("sleep 30\n", timeout=1)
    finally:
        session.close()
    assert time.monotonic() - started < 10


def test_secrets_reach_the_script_but_never_the_log(local_sshd: LocalSshd) -> None:
    token = "k3s-token-" + os.urandom(8).hex()
    lines: list[tuple[str, str]] = []
    session = HostSession(target(local_sshd), FAST)
    try:
        result = session.run_script(
            'echo "token is $K3S_TOKEN" >&2\nprintf %s "$K3S_TOKEN" | sha256sum | cut -d" " -f1\n',
            secret_env={"K3S_TOKEN": token},
            on_line=lambda stream, line: lines.append((stream, line)),
        )
    finally:
        session.close()
    assert result.stdout.strip() == hashlib.sha256(token.encode()).hexdigest()
    assert ("stderr", "token is [secret]") in lines
    assert token not in repr(lines)
    assert token not in result.stderr_tail


def test_output_is_streamed_while_the_step_runs(local_sshd: LocalSshd) -> None:
    seen: list[tuple[float, str]] = []
    session = HostSession(target(local_sshd), FAST)
    started = time.monotonic()
    try:
        session.run_script(
            "echo first\nsleep 1.5\necho second\n",
            on_line=lambda _s, line: seen.append((time.monotonic() - started, line)),
        )
    finally:
        session.close()
    assert [line for _, line in seen] == ["first", "second"]
    assert seen[0][0] < seen[1][0] - 1.0, "the first line must arrive before the step ends"


def test_one_connection_serves_every_step(local_sshd: LocalSshd) -> None:
    session = HostSession(target(local_sshd), FAST)
    try:
        session.connect()
        first_client = session._client
        for _ in range(3):
            session.run_script("true\n")
        assert session._client is first_client
    finally:
        session.close()


def test_on_hosts_respects_the_concurrency_limit() -> None:
    active = 0
    peak = 0

    def work(_item: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        time.sleep(0.05)
        active -= 1
        return _item * 2

    results = on_hosts(list(range(8)), work, max_parallel=3)
    assert results == [i * 2 for i in range(8)]
    assert peak <= 3


def test_parse_step_output_ignores_noise() -> None:
    parsed = parse_step_output(
        "hello\nSOVEREIGN-FACT a=b=c\nSOVEREIGN-CHANGE x y\nSOVEREIGN-RESULT changed\n"
    )
    assert parsed.facts == {"a": "b=c"}
    assert parsed.changes == ("x y",)
    assert parsed.result == "changed"


def test_payloads_arrive_intact_and_are_cleaned_up(local_sshd: LocalSshd) -> None:
    blob = os.urandom(200_000) + b"\nSOVEREIGN_PAYLOAD_END\n"  # binary, and the end marker inside
    session = HostSession(target(local_sshd), FAST)
    try:
        result = session.run_script(
            'sha256sum "$SOVEREIGN_PAYLOAD_DIR/blob.bin" | cut -d" " -f1\necho "$SOVEREIGN_PAYLOAD_DIR"\n',
            payloads={"blob.bin": blob},
        )
    finally:
        session.close()
    digest, directory = result.stdout.splitlines()
    assert digest == hashlib.sha256(blob).hexdigest()
    assert not Path(directory).exists(), "the payload directory must be removed when the step ends"
