"""The SSH executor against a real OpenSSH server on loopback (scripts run on this machine)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.config.models import SshDefaults
from components.execution.outcome import (
    HostKeyMismatch,
    HostStoppedAnswering,
    HostUnreachable,
    StepFailed,
    StepRefused,
    parse_step_output,
)
from components.execution.ssh import (
    CONNECTION_LOG,
    REDACTED,
    ConnectFailure,
    HostSession,
    HostTarget,
    Redactor,
    RunResult,
    connect_failure,
    on_hosts,
    run_step,
    secret_prelude,
)
from tests.conftest import LocalSshd, step_script
from tests.loopback import free_port, wait_until
from tests.tcp_ports import AcceptingPort

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


@pytest.fixture
def ssh_agent(tmp_path: Path) -> Iterator[Path]:
    """A real ssh-agent on a private socket; the test's environment points at it."""
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if agent.poll() is not None or time.monotonic() > deadline:
            agent.kill()
            pytest.fail("ssh-agent did not start")
        time.sleep(0.05)
    try:
        yield socket_path
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_key_from_ssh_agent_by_fingerprint(
    local_sshd: LocalSshd, ssh_agent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key material stays in the agent: the stack names only its fingerprint."""
    key_file = local_sshd.client_keys["ed25519"]
    monkeypatch.setenv("SSH_AUTH_SOCK", str(ssh_agent))
    subprocess.run(["ssh-add", "-q", str(key_file)], check=True, capture_output=True)
    fingerprint = subprocess.run(
        ["ssh-keygen", "-lf", f"{key_file}.pub"], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    t = HostTarget(
        "local",
        "127.0.0.1",
        local_sshd.port,
        local_sshd.user,
        f"agent:{fingerprint}",
        local_sshd.host_key_fingerprint,
    )
    session = HostSession(t, FAST)
    try:
        assert session.run_script("echo via-agent\n").stdout == "via-agent"
    finally:
        session.close()
    other = HostTarget(*(t.name, t.address, t.port, t.user), "agent:SHA256:" + "A" * 43, t.host_key)
    with pytest.raises(HostUnreachable, match="holds no key with fingerprint"):
        HostSession(other, FAST).connect()
    monkeypatch.delenv("SSH_AUTH_SOCK")
    with pytest.raises(HostUnreachable, match="SSH_AUTH_SOCK is not set"):
        HostSession(t, FAST).connect()


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


def key_target(sshd: LocalSshd, port: int, address: str = "127.0.0.1") -> HostTarget:
    """A host with a loadable key and a pinned host key at ``address:port``: whatever fails
    there fails in the connection, not before it."""
    return HostTarget(
        "gone",
        address,
        port,
        sshd.user,
        f"file:{sshd.client_keys['ed25519']}",
        sshd.host_key_fingerprint,
    )


RETRYING = SshDefaults(connect_timeout_seconds=1, connect_retries=2, retry_backoff_seconds=0)


def test_unreachable_host_fails_after_bounded_retries(
    local_sshd: LocalSshd, caplog: pytest.LogCaptureFixture
) -> None:
    """The port counts the attempts: exactly connectRetries + 1, each announced but the last."""
    caplog.set_level(logging.INFO, logger=CONNECTION_LOG.name)
    with AcceptingPort(close_at_once=True) as port:
        with pytest.raises(HostUnreachable, match=r"unreachable after 3 attempt\(s\)"):
            HostSession(key_target(local_sshd, port.port), RETRYING).connect()
        assert port.accepted == 3
    progress = [r.getMessage() for r in caplog.records if r.name == CONNECTION_LOG.name]
    assert len(progress) == 2, progress
    assert "attempt 1 of 3" in progress[0]
    assert "attempt 2 of 3" in progress[1]


def test_closed_port_is_called_refused(local_sshd: LocalSshd) -> None:
    port = free_port()
    with pytest.raises(HostUnreachable) as info:
        HostSession(key_target(local_sshd, port), RETRYING).connect()
    assert f"connection refused: nothing listens on 127.0.0.1:{port}" in str(info.value)


def test_a_port_that_never_sends_a_banner_is_named_as_such(local_sshd: LocalSshd) -> None:
    with AcceptingPort(close_at_once=False) as port, pytest.raises(HostUnreachable) as info:
        HostSession(key_target(local_sshd, port.port), RETRYING).connect()
    assert f"no SSH banner within 1 s: 127.0.0.1:{port.port} accepts connections" in str(info.value)


def test_a_port_that_closes_before_the_banner_is_named_as_such(local_sshd: LocalSshd) -> None:
    with AcceptingPort(close_at_once=True) as port, pytest.raises(HostUnreachable) as info:
        HostSession(key_target(local_sshd, port.port), RETRYING).connect()
    assert f"no SSH banner: 127.0.0.1:{port.port} closed the connection" in str(info.value)


def test_a_key_the_host_does_not_accept_fails_authentication_without_retries(
    local_sshd: LocalSshd, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(stranger)], check=True)
    caplog.set_level(logging.INFO, logger=CONNECTION_LOG.name)
    t = HostTarget(
        "local",
        "127.0.0.1",
        local_sshd.port,
        local_sshd.user,
        f"file:{stranger}",
        local_sshd.host_key_fingerprint,
    )
    with pytest.raises(HostUnreachable) as info:
        HostSession(t, RETRYING).connect()
    assert "authentication failed: " in str(info.value)
    assert f"file:{stranger}" in str(info.value)
    assert not [r for r in caplog.records if r.name == CONNECTION_LOG.name], "retried"


def test_a_name_that_does_not_resolve_is_named_as_such(local_sshd: LocalSshd) -> None:
    # .invalid is reserved (RFC 6761): no resolver may answer it
    settings = RETRYING.model_copy(update={"connect_retries": 0})
    with pytest.raises(HostUnreachable, match=r"name not resolved: no-such-host\.invalid \("):
        HostSession(key_target(local_sshd, 22, "no-such-host.invalid"), settings).connect()


def test_a_connection_that_times_out_is_named_with_its_setting(local_sshd: LocalSshd) -> None:
    """A TCP connect that gets no answer (a dropped SYN) cannot be staged on loopback: the
    cause is derived from the error the socket raises then."""
    failure = connect_failure(TimeoutError("timed out"), key_target(local_sshd, 2201), 7)
    assert failure == ConnectFailure(
        "timed out after 7 s connecting to 127.0.0.1:2201 (ssh.connectTimeoutSeconds)", True
    )


def test_paramiko_log_records_never_reach_a_handler_of_the_application() -> None:
    """Its transport thread logs every failed handshake with a traceback: no handler on the root
    logger (nor Python's last-resort one, used when no handler exists) may print them."""
    paramiko_log = logging.getLogger("paramiko")
    assert not paramiko_log.propagate
    assert paramiko_log.handlers, "without a handler, the last-resort handler prints to stderr"


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


# "E" occurs in every protocol tag and "changed" is a result word: redaction must not break the
# protocol the outcome is read from
@pytest.mark.parametrize("secret", ["x", "E", "changed", "tok-" + "9" * 60])
def test_a_secret_of_any_length_is_redacted_from_stdout_facts_changes_and_logs(
    local_sshd: LocalSshd, secret: str
) -> None:
    """stdout becomes facts, changes and refusal messages: non-secret Pulumi outputs."""
    lines: list[tuple[str, str]] = []
    script = step_script(
        "apply() {\n"
        '  fact cluster.token "$K3S_TOKEN"\n'
        '  change "write token $K3S_TOKEN" true\n'
        '  echo "progress with $K3S_TOKEN" >&2\n'
        "}\n"
    )
    session = HostSession(target(local_sshd), FAST)
    try:
        outcome = run_step(
            session,
            "99-test",
            script,
            secret_env={"K3S_TOKEN": secret},
            on_line=lambda stream, line: lines.append((stream, line)),
        )
        with pytest.raises(StepRefused) as refused:
            run_step(
                session,
                "99-test",
                step_script('apply() {\n  refuse "token $K3S_TOKEN is not accepted"\n}\n'),
                secret_env={"K3S_TOKEN": secret},
            )
        with pytest.raises(StepFailed) as failed:
            run_step(
                session,
                "99-test",
                step_script('apply() {\n  echo "bad $K3S_TOKEN" >&2\n  exit 9\n}\n'),
                secret_env={"K3S_TOKEN": secret},
            )
    finally:
        session.close()
    assert outcome.facts == {"cluster.token": REDACTED}
    assert outcome.changes == (f"write token {REDACTED}",)
    assert ("stderr", f"progress with {REDACTED}") in lines
    assert f"token {REDACTED} is not accepted" in str(refused.value)
    assert f"bad {REDACTED}" in str(failed.value)
    if len(secret) > 8:  # a short one also occurs in the messages' own words
        for text in (repr(lines), repr(outcome), str(refused.value), str(failed.value)):
            assert secret not in text, text


def test_secrets_are_not_exported_to_programs_the_step_starts(local_sshd: LocalSshd) -> None:
    """An installer that copies K3S_* variables into a service file never sees the token."""
    token = "k3s-token-" + os.urandom(8).hex()
    session = HostSession(target(local_sshd), FAST)
    try:
        result = session.run_script(
            'echo "script:${K3S_TOKEN:-unset}"\n'
            "sh -c 'echo \"child:${K3S_TOKEN:-unset}\"'\n"
            "env | grep -c '^K3S_TOKEN=' || true\n",
            # already exported by the login environment: the secret must still not be inherited
            env={"K3S_TOKEN": "exported-before"},
            secret_env={"K3S_TOKEN": token},
        )
    finally:
        session.close()
    assert result.stdout.splitlines() == [f"script:{REDACTED}", "child:unset", "0"]


def test_redactor_handles_empty_nested_and_multiline_secrets() -> None:
    redact = Redactor(["", "abc", "abcdef", "line-one\nline-two"])
    assert redact("x abcdef y abc z") == f"x {REDACTED} y {REDACTED} z"
    assert redact("got line-two here") == f"got {REDACTED} here"
    assert redact("nothing secret") == "nothing secret"
    assert Redactor()("as is") == "as is"


def test_secret_names_must_be_shell_variables() -> None:
    assert secret_prelude({"K3S_TOKEN": "a'b"}) == "declare +x K3S_TOKEN='a'\"'\"'b'\n"
    for bad in ("K3S-TOKEN", "1TOKEN", "TOK EN", "TÖKEN", ""):
        with pytest.raises(ValueError, match="shell variable name"):
            secret_prelude({bad: "x"})


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


def test_on_hosts_runs_up_to_the_limit_at_once_and_never_more() -> None:
    """Each item is held until the limit's worth of items run at once: a serial implementation
    never gets there (the hold gives up after 10 s and the peak is 1). Once the limit is reached,
    the held items wait on until every item has started or 0.2 s have passed, so one started
    beyond the limit is seen; only a slow start could hide it, never a correct run fail."""
    limit, items = 3, 8
    lock = threading.Condition()
    active = peak = started = 0
    full_since: float | None = None

    def work(item: int) -> int:
        nonlocal active, peak, started, full_since
        with lock:
            active += 1
            started += 1
            peak = max(peak, active)
            if peak >= limit and full_since is None:
                full_since = time.monotonic()
            lock.notify_all()

            give_up = time.monotonic() + 10
            while full_since is None or (started < items and time.monotonic() - full_since < 0.2):
                if time.monotonic() > give_up:  # a serial run: let the rest through
                    full_since = full_since or 0.0
                    break
                lock.wait(0.02)
            active -= 1
            lock.notify_all()
        return item * 2

    results = on_hosts(list(range(items)), work, max_parallel=limit)
    assert results == [i * 2 for i in range(items)], "results keep the items' order"
    assert peak == limit


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


# a host that leaves keepalives unanswered for 2 s has stopped; steps may run for 60 s
KEEPALIVE_FAST = FAST.model_copy(
    update={
        "keepalive_interval_seconds": 1,
        "keepalive_missed_replies": 2,
        "step_timeout_seconds": 60,
    }
)


def parent_of(pid: int) -> int:
    # the command name in /proc/PID/stat may hold spaces and parentheses: read after the last ")"
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def serving_sshd_processes(sshd: LocalSshd, shell_parent: int) -> list[int]:
    """The sshd processes from the parent of a step's shell up to the listener (excluded): they
    serve one connection."""
    listener = int((sshd.workdir / "sshd.pid").read_text())
    chain = []
    current = shell_parent
    while current != listener:
        assert current > 1, f"process {shell_parent} is not served by the test sshd {listener}"
        chain.append(current)
        current = parent_of(current)
    return chain


class FrozenHost:
    """Stops, with SIGSTOP, the sshd processes serving a connection and the step's own processes:
    to the client, the host then answers nothing at all, as a hung kernel or a paused VM."""

    def __init__(self, sshd: LocalSshd) -> None:
        self._sshd = sshd
        self.sshd_pids: list[int] = []
        self.step_group: int | None = None
        self.frozen_at: float | None = None

    def on_line(self, _stream: str, line: str) -> None:
        if line.startswith("step-pid ") and self.frozen_at is None:
            step_pid = int(line.split()[1])
            self.sshd_pids = serving_sshd_processes(self._sshd, parent_of(step_pid))
            # sshd starts the command in a session of its own: its group is the step's processes
            self.step_group = os.getpgid(step_pid)
            os.killpg(self.step_group, signal.SIGSTOP)
            for pid in self.sshd_pids:
                os.kill(pid, signal.SIGSTOP)
            self.frozen_at = time.monotonic()

    def cut_short_and_release(self) -> None:
        """The step's work is lost (as in a host reset); the stopped sshd processes then see their
        client gone and exit."""
        if self.step_group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.step_group, signal.SIGKILL)
        for pid in self.sshd_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def test_a_host_that_stops_answering_mid_step_is_reported_within_the_keepalive_bound_and_the_step_converges_on_a_rerun(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    script = step_script(
        f'apply() {{\n  if [ ! -f {marker} ]; then\n    echo "step-pid $$"\n    sleep 5\n'
        f'    change "create marker" touch {marker}\n  fi\n}}\n'
    )
    frozen = FrozenHost(local_sshd)
    session = HostSession(target(local_sshd), KEEPALIVE_FAST)
    try:
        with pytest.raises(HostStoppedAnswering) as stopped:
            run_step(session, "99-test", script, on_line=frozen.on_line)
        noticed_after = time.monotonic() - (frozen.frozen_at or 0)
        frozen.cut_short_and_release()
        finished_while_frozen = marker.exists()
        rerun = run_step(session, "99-test", script)
        again = run_step(session, "99-test", script)
    finally:
        frozen.cut_short_and_release()
        session.close()
    message = str(stopped.value)
    assert "host stopped answering during step 99-test (apply) after " in message
    assert "no answer to SSH keepalives for 2 s" in message
    # the bound is 2 s; the step timeout (60 s) is what the executor waited for before
    assert noticed_after < KEEPALIVE_FAST.step_timeout_seconds / 2, noticed_after
    assert not finished_while_frozen, "the frozen step must not have finished its work"
    assert (rerun.result, rerun.changes) == ("changed", ("create marker",))
    assert again.result == "unchanged"


def test_a_host_that_stops_answering_between_steps_is_reconnected_for_the_next_step(
    local_sshd: LocalSshd,
) -> None:
    """paramiko waits for a channel on a silent host for an hour: the watch closes the dead
    connection first, so the next step gets a new one instead of waiting."""
    session = HostSession(target(local_sshd), KEEPALIVE_FAST)
    frozen = FrozenHost(local_sshd)
    try:
        shell_parent = int(session.run_script('echo "$PPID"\n').stdout)
        frozen.sshd_pids = serving_sshd_processes(local_sshd, shell_parent)
        for pid in frozen.sshd_pids:
            os.kill(pid, signal.SIGSTOP)
        first_client = session._client
        outcome: list[RunResult | BaseException] = []

        def next_step() -> None:
            try:
                outcome.append(session.run_script("echo next\n"))
            except BaseException as exc:  # handed to the test's thread for its assertions
                outcome.append(exc)

        worker = threading.Thread(target=next_step, daemon=True)
        # the next step starts once the watch has given the silent connection up
        assert wait_until(
            lambda: not session._alive(), KEEPALIVE_FAST.keepalive_bound_seconds * 3
        ), "the watch never gave up the silent connection"
        worker.start()
        worker.join(timeout=KEEPALIVE_FAST.step_timeout_seconds / 2)
    finally:
        frozen.cut_short_and_release()
    try:
        assert outcome, "the next step waited on the silent connection"
        result = outcome[0]
        assert isinstance(result, RunResult), result
        assert result.stdout == "next"
        assert session._client is not first_client
    finally:
        session.close()


def test_a_quiet_step_on_a_host_that_answers_keepalives_runs_to_its_end(
    local_sshd: LocalSshd,
) -> None:
    """Silence on the step's output is not silence of the host: only unanswered keepalives count."""
    session = HostSession(target(local_sshd), KEEPALIVE_FAST)
    try:
        result = session.run_script(
            f"sleep {KEEPALIVE_FAST.keepalive_bound_seconds * 2}\necho done\n"
        )
    finally:
        session.close()
    assert result.stdout == "done"


def test_keepalive_settings_are_read_from_the_stack_and_refused_when_out_of_range() -> None:
    settings = SshDefaults.model_validate(
        {"keepaliveIntervalSeconds": 5, "keepaliveMissedReplies": 3}
    )
    assert settings.keepalive_bound_seconds == 15
    assert SshDefaults().keepalive_bound_seconds == 60
    for field_name, value in (("keepaliveIntervalSeconds", 0), ("keepaliveMissedReplies", 1)):
        with pytest.raises(ValidationError, match=field_name):
            SshDefaults.model_validate({field_name: value})
