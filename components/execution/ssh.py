"""The SSH executor: the only module that talks to hosts (and the only one importing paramiko).

It runs a rendered step script on a host over one pinned, authenticated connection:

* host keys are pinned by SHA256 fingerprint; a host presenting another key is refused before
  anything runs, with both fingerprints in the message, and never retried;
* connection attempts are bounded (count, timeout, backoff from :class:`SshDefaults`); a failed
  attempt is reported with its cause (refused, no SSH banner, authentication failed, timed out,
  name not resolved) on the ``components.execution.ssh`` logger, and the final error names it too.
  paramiko's own log records (tracebacks from its transport thread) are kept off the terminal;
* scripts go over stdin to ``bash -s`` (with ``sudo -n`` when the user is not root); secret values
  are set at the top of stdin as shell variables of the script, never exported (so no program the
  step starts inherits them, and no installer copies them into a service's environment file) and
  never on a command line; they are redacted from everything that comes back: log lines, the
  stdout the step's facts, changes and refusals are read from, and the stderr tail of errors;
* output is streamed line by line to a callback while the step runs, within the step timeout;
* a host that stops answering (a hung kernel, a frozen VM) is noticed within a bound of its own,
  independent of the step timeout: the executor asks for a ``keepalive@openssh.com`` reply every
  ``ssh.keepaliveIntervalSeconds`` and gives the host up when none has come for
  ``ssh.keepaliveMissedReplies`` intervals, naming the step it was running;
* exit status 100 means "reboot required": the executor reboots the host, waits for it with a new
  boot id (bounded), and runs the step again, which must then finish.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import logging
import os
import re
import shlex
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import paramiko

from components.config.models import HostSpec, SshDefaults, host_address
from components.execution.outcome import (
    HostKeyMismatch,
    HostStoppedAnswering,
    HostUnreachable,
    StepFailed,
    StepOutcome,
    interpret_exit,
    redact_protocol_line,
)
from components.plan.step_protocol import Mode

LineSink = Callable[[str, str], None]  # (stream "stdout"|"stderr", line)

# Failed connection attempts and what happens next, one record each (the CLI prints them).
CONNECTION_LOG = logging.getLogger(__name__)

# paramiko logs the failures of its transport thread (a banner that never came, a reset) as ERROR
# records with tracebacks; with no handler of its own, Python's last-resort handler prints them on
# the terminal. Each failure reaches the caller as an exception with its cause, so the records go
# nowhere: not to the terminal, not to a handler an application puts on the root logger.
_PARAMIKO_LOG = logging.getLogger("paramiko")
_PARAMIKO_LOG.addHandler(logging.NullHandler())
_PARAMIKO_LOG.propagate = False
_T = TypeVar("_T")
_R = TypeVar("_R")


def fingerprint_of(key: paramiko.PKey) -> str:
    """``SHA256:...`` exactly as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class HostTarget:
    """Everything needed to reach one host; built from the stack, never from user input at run time."""

    name: str
    address: str
    port: int
    user: str
    private_key: str  # reference: file:PATH, env:VARIABLE or agent:SHA256:...
    host_key: str | None
    base_dir: str = "."  # where relative key paths are resolved (the project directory)

    @classmethod
    def from_spec(cls, host: HostSpec, base_dir: Path | str = ".") -> HostTarget:
        return cls(
            name=host.name,
            address=host_address(host),
            port=host.ssh.port,
            user=host.ssh.user,
            private_key=host.ssh.private_key,
            host_key=host.ssh.host_key,
            base_dir=str(base_dir),
        )

    @property
    def where(self) -> str:
        return f"{self.name} ({self.user}@{self.address}:{self.port})"


def load_private_key(reference: str, base_dir: str = ".") -> paramiko.PKey:
    """Load an ed25519, ECDSA or RSA key from ``file:PATH``, ``env:VARIABLE`` or
    ``agent:SHA256:...`` (the key with that fingerprint in the running ssh-agent; the key
    material then never leaves the agent)."""
    scheme, _, rest = reference.partition(":")
    if scheme == "agent":
        return _agent_key(rest)
    if scheme == "file":
        path = Path(os.path.expanduser(rest))
        if not path.is_absolute():
            path = Path(base_dir) / path
        try:
            return paramiko.PKey.from_path(path)
        except FileNotFoundError:
            raise HostUnreachable(f"SSH private key file {path} not found") from None
        except (paramiko.SSHException, ValueError) as exc:
            raise HostUnreachable(f"cannot load SSH private key {path}: {exc}") from None
    if scheme == "env":
        text = os.environ.get(rest)
        if not text:
            raise HostUnreachable(f"environment variable {rest} (SSH private key) is not set")
        key_classes: tuple[type[paramiko.PKey], ...] = (
            paramiko.Ed25519Key,
            paramiko.ECDSAKey,
            paramiko.RSAKey,
        )
        for key_class in key_classes:
            try:
                return key_class.from_private_key(io.StringIO(text))
            except (paramiko.SSHException, ValueError):
                continue
        raise HostUnreachable(f"environment variable {rest} does not hold a supported private key")
    raise HostUnreachable(f"unsupported key reference {scheme!r}; expected file:, env: or agent:")


def _agent_key(fingerprint: str) -> paramiko.PKey:
    """The key with this ``SHA256:`` fingerprint from the ssh-agent at ``$SSH_AUTH_SOCK``."""
    if not os.environ.get("SSH_AUTH_SOCK"):
        raise HostUnreachable(
            f"key reference agent:{fingerprint} needs a running ssh-agent, but SSH_AUTH_SOCK is not set"
        )
    agent = paramiko.Agent()  # each key it returns keeps the agent connection for signing
    for key in agent.get_keys():
        if fingerprint_of(key) == fingerprint:
            return key
    agent.close()
    raise HostUnreachable(
        f"the ssh-agent holds no key with fingerprint {fingerprint} (ssh-add -l lists its keys)"
    )


class _PinnedHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Accept exactly the pinned key; no known_hosts file is consulted or written."""

    def __init__(self, target: HostTarget) -> None:
        self._target = target

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        seen = fingerprint_of(key)
        if self._target.host_key is None:
            raise HostKeyMismatch(
                f"{self._target.where}: no host key pinned for this host; refusing to connect "
                f"(it presented {key.get_name()} {seen})"
            )
        if seen != self._target.host_key:
            raise HostKeyMismatch(
                f"{self._target.where}: host key mismatch: expected {self._target.host_key}, "
                f"host presented {key.get_name()} {seen}. Refusing to connect; if the host was "
                "reinstalled, verify the new key out of band and update ssh.hostKey"
            )


def handshake(
    client: paramiko.SSHClient, target: HostTarget, key: paramiko.PKey, limit: float
) -> None:
    """Connect, identify and authenticate, each phase within ``limit`` seconds.

    The TCP connection is made here, not by paramiko: its one ``timeout`` would bound both
    the TCP connect and the whole negotiation, and a negotiation bound equal to the banner
    bound races it (the loser's error, "No existing session", names no cause).
    """
    sock = socket.create_connection((target.address, target.port), timeout=limit)
    try:
        client.connect(
            target.address,
            port=target.port,
            username=target.user,
            pkey=key,
            sock=sock,
            timeout=2 * limit,  # the banner, then the key exchange
            banner_timeout=limit,
            auth_timeout=limit,
            allow_agent=False,
            look_for_keys=False,
        )
    except BaseException:
        sock.close()
        raise


class _FirstContactPolicy(paramiko.MissingHostKeyPolicy):
    """Takes the key a newly ordered machine presents: nothing is pinned for it yet."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        return None


def first_contact_host_key(
    target: HostTarget,
    settings: SshDefaults,
    wait_seconds: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """The fingerprint of the host key a newly ordered machine presents (``SHA256:...``).

    Trust on first use, for machines whose provider does not publish their host key: the key is
    taken only from a connection that authenticated with the stack's private key (a host that
    does not accept it is not pinned), which narrows but cannot close the window in which another
    host could answer first. The caller records it; every later connection pins it and refuses
    another. A machine still installing (port closed, no banner, key not yet installed) is tried
    again until ``wait_seconds`` have passed.
    """
    if target.host_key is not None:
        raise ValueError(f"{target.where}: a host key is pinned already ({target.host_key})")
    key = load_private_key(target.private_key, target.base_dir)
    limit = settings.connect_timeout_seconds
    deadline = clock() + wait_seconds
    attempt = 0
    while True:
        attempt += 1
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_FirstContactPolicy())
        try:
            handshake(client, target, key, limit)
            transport = client.get_transport()
            presented = transport.get_remote_server_key() if transport is not None else None
        except (OSError, paramiko.SSHException, EOFError) as exc:
            presented, cause = None, connect_failure(exc, target, limit).cause
        finally:
            client.close()
        if presented is not None:
            return fingerprint_of(presented)
        left = deadline - clock()
        if left <= 0:
            raise HostUnreachable(
                f"{target.where}: no SSH session with the stack's key within {wait_seconds:.0f} s "
                f"(ssh.firstContactTimeoutSeconds) after {attempt} attempt(s): {cause}; the host "
                "key is pinned only once the machine accepts the key its order installed"
            )
        delay = min(max(settings.retry_backoff_seconds, 1.0) * min(attempt, 10), left)
        CONNECTION_LOG.info(
            "%s: first contact, attempt %d: %s; next attempt in %.0f s",
            target.where,
            attempt,
            cause,
            delay,
        )
        sleep(delay)


# paramiko has no exception type of its own for this: its message is the only mark
_NO_BANNER = "Error reading SSH protocol banner"


@dataclass(frozen=True)
class ConnectFailure:
    """Why one connection attempt failed, in the user's words, and whether another may help."""

    cause: str
    retry: bool


def connect_failure(exc: BaseException, target: HostTarget, timeout: float) -> ConnectFailure:
    """The cause of a failed connection attempt (``exc`` as paramiko or the socket raised it).

    Refusals that another attempt cannot change (the key is not accepted, the name does not
    exist) are not retried; everything a starting host shows (a closed port, a port that accepts
    but has no sshd behind it yet, a slow answer) is.
    """
    port = f"{target.address}:{target.port}"
    if isinstance(exc, paramiko.AuthenticationException):
        if str(exc) == "Authentication timeout.":
            return ConnectFailure(
                f"timed out after {timeout:.0f} s waiting for authentication", True
            )
        return ConnectFailure(
            f"authentication failed: {port} did not accept user {target.user!r} with the key "
            f"{target.private_key} (ssh.user, ssh.privateKey)",
            False,
        )
    if isinstance(exc, (paramiko.SSHException, EOFError)):
        return _handshake_failure(exc, port, timeout)
    if isinstance(exc, OSError):
        return _socket_failure(exc, target, timeout)
    return ConnectFailure(f"{type(exc).__name__}: {exc} ({port})", True)


def _handshake_failure(
    exc: paramiko.SSHException | EOFError, port: str, timeout: float
) -> ConnectFailure:
    """A TCP connection was made; the SSH handshake on it failed."""
    if isinstance(exc, EOFError):
        return ConnectFailure(f"{port} closed the connection during the SSH handshake", True)
    if not str(exc).startswith(_NO_BANNER):
        return ConnectFailure(f"SSH negotiation with {port} failed: {exc}", True)
    # the transport thread raised it while handling the read's own error: that tells which
    if isinstance(exc.__context__, TimeoutError):
        return ConnectFailure(
            f"no SSH banner within {timeout:.0f} s: {port} accepts connections but does not "
            "speak SSH (an sshd still starting, or another service on the port)",
            True,
        )
    return ConnectFailure(
        f"no SSH banner: {port} closed the connection before identifying itself", True
    )


def _socket_failure(exc: OSError, target: HostTarget, timeout: float) -> ConnectFailure:
    """No TCP connection was made."""
    port = f"{target.address}:{target.port}"
    if isinstance(exc, socket.gaierror):
        # EAI_AGAIN is a resolver that did not answer in time; any other answer is final
        return ConnectFailure(
            f"name not resolved: {target.address} ({exc.strerror})",
            exc.errno == socket.EAI_AGAIN,
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure(f"connection refused: nothing listens on {port}", True)
    if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return ConnectFailure(f"no route to host {target.address}", True)
    if isinstance(exc, TimeoutError):
        return ConnectFailure(
            f"timed out after {timeout:.0f} s connecting to {port} (ssh.connectTimeoutSeconds)",
            True,
        )
    return ConnectFailure(f"{(exc.strerror or str(exc)).lower()} ({port})", True)


REDACTED = "[secret]"


class Redactor:
    """Replaces every secret value in a line with a marker, whatever the secret's length.

    Output is handled line by line, so a secret that spans lines is also redacted line by line:
    each of its non-empty lines counts as a secret of its own. Longer values are replaced first,
    so a secret that contains another is never half-redacted.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values: set[str] = set()
        for secret in secrets:
            values.add(secret)
            values.update(secret.splitlines())
        values.discard("")
        self._secrets = sorted(values, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self._secrets:
            line = line.replace(secret, REDACTED)
        return line


# OpenSSH's own keepalive request: every SSH server answers it (a server that does not know it
# answers with a failure, which is an answer all the same)
KEEPALIVE_REQUEST = "keepalive@openssh.com"
STDIN_CHUNK_BYTES = 32768


class KeepaliveWatch:
    """Asks the host for a keepalive reply every interval; when none has come for ``bound``
    seconds, closes the connection, which wakes every call waiting on it.

    paramiko's own ``set_keepalive`` only sends, and a channel or exec request can wait forever
    on a host that stopped: the reply deadline has to be enforced from outside those calls. One
    thread asks and waits for each reply; another judges the silence.
    """

    def __init__(self, transport: paramiko.Transport, interval: float, bound: float) -> None:
        self._transport = transport
        self._interval = interval
        self.bound = bound
        self._last_answer = time.monotonic()
        self._stopped = threading.Event()
        self.silent_for: float | None = None  # set when the host was given up
        for target, role in ((self._ask, "ask"), (self._judge, "judge")):
            threading.Thread(target=target, name=f"ssh-keepalive-{role}", daemon=True).start()

    def _ask(self) -> None:
        while not self._stopped.is_set() and self._transport.is_active():
            asked = time.monotonic()
            try:
                # returns on the reply, or once the connection is closed
                self._transport.global_request(KEEPALIVE_REQUEST, wait=True)
            except (paramiko.SSHException, EOFError, OSError):
                return
            if not self._transport.is_active():
                return
            self._last_answer = time.monotonic()
            self._stopped.wait(max(0.0, self._interval - (self._last_answer - asked)))

    def _judge(self) -> None:
        while True:
            remaining = self._last_answer + self.bound - time.monotonic()
            if remaining > 0:
                if self._stopped.wait(remaining):
                    return
                continue
            if self._stopped.is_set() or not self._transport.is_active():
                return
            self.silent_for = time.monotonic() - self._last_answer
            self._transport.close()
            return

    def stop(self) -> None:
        self._stopped.set()


@dataclass
class RunResult:
    exit_status: int
    stdout: str
    stderr_tail: str


@dataclass
class HostSession:
    """One authenticated SSH connection to one host, reused for every step of that host."""

    target: HostTarget
    settings: SshDefaults
    _client: paramiko.SSHClient | None = None
    _watch: KeepaliveWatch | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self) -> None:
        if self._client is not None and self._alive():
            return
        self.close()
        key = load_private_key(self.target.private_key, self.target.base_dir)
        attempts = self.settings.connect_retries + 1
        for attempt in range(1, attempts + 1):
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_PinnedHostKeyPolicy(self.target))
            try:
                self._handshake(client, key)
            except HostKeyMismatch:
                client.close()
                raise
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                failure = connect_failure(exc, self.target, self.settings.connect_timeout_seconds)
                if not failure.retry:
                    raise HostUnreachable(f"{self.target.where}: {failure.cause}") from None
                if attempt == attempts:
                    raise HostUnreachable(
                        f"{self.target.where}: unreachable after {attempts} attempt(s): "
                        f"{failure.cause}"
                    ) from None
                delay = self.settings.retry_backoff_seconds * attempt
                CONNECTION_LOG.info(
                    "%s: attempt %d of %d: %s; next attempt in %.0f s",
                    self.target.where,
                    attempt,
                    attempts,
                    failure.cause,
                    delay,
                )
                time.sleep(delay)
                continue
            transport = client.get_transport()
            if transport is not None:
                self._watch = KeepaliveWatch(
                    transport,
                    self.settings.keepalive_interval_seconds,
                    self.settings.keepalive_bound_seconds,
                )
            self._client = client
            return

    def _handshake(self, client: paramiko.SSHClient, key: paramiko.PKey) -> None:
        handshake(client, self.target, key, self.settings.connect_timeout_seconds)

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _stopped_answering(self, activity: str, started: float) -> HostStoppedAnswering | None:
        """The report for a connection the keepalive watch gave up, or None if it did not."""
        silent_for = self._watch.silent_for if self._watch is not None else None
        if silent_for is None:
            return None
        s = self.settings
        return HostStoppedAnswering(
            f"{self.target.where}: host stopped answering during {activity} after "
            f"{time.monotonic() - started:.0f} s: no answer to SSH keepalives for {silent_for:.0f} s "
            f"(one every ssh.keepaliveIntervalSeconds = {s.keepalive_interval_seconds} s, "
            f"ssh.keepaliveMissedReplies = {s.keepalive_missed_replies}). It may have been cut "
            "short on the host; run it again once the host answers (steps are idempotent)"
        )

    def _wrap(self, command: str) -> str:
        return command if self.target.user == "root" else f"sudo -n {command}"

    def run_script(
        self,
        script: str,
        env: Mapping[str, str] | None = None,
        secret_env: Mapping[str, str] | None = None,
        *,
        payloads: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
        on_line: LineSink | None = None,
        activity: str = "a command",
    ) -> RunResult:
        """Run ``script`` with bash, feeding it on stdin; stream output; return status and output.

        ``activity`` names what runs (``step 40-nvme-cache (apply)``) in the report of a host
        that stops answering meanwhile.
        """
        env = dict(env or {})
        secret_env = dict(secret_env or {})
        redact = Redactor(secret_env.values())
        prelude = secret_prelude(secret_env)
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        command = self._wrap(f"env {assignments} bash -s" if assignments else "bash -s")
        limit = timeout if timeout is not None else self.settings.step_timeout_seconds
        with self._lock:
            started = time.monotonic()
            self.connect()
            assert self._client is not None
            transport = self._client.get_transport()
            if transport is None:
                raise HostUnreachable(f"{self.target.where}: connection lost")
            try:
                if payloads:
                    # files travel on their own channel as a tar stream: bash reads a script from a
                    # pipe byte by byte, which makes large inline payloads slow on slow hosts
                    prelude += payload_prelude(
                        self._upload(transport, payload_tar(payloads), limit)
                    )
                channel = transport.open_session()
                try:
                    return self._stream(
                        channel, command, (prelude + script).encode(), limit, redact, on_line
                    )
                finally:
                    channel.close()
            except (paramiko.SSHException, EOFError, OSError, HostUnreachable) as exc:
                stopped = self._stopped_answering(activity, started)
                self.close()  # the next call reconnects (bounded retries)
                if stopped is not None:
                    raise stopped from None
                if isinstance(exc, HostUnreachable):
                    raise
                raise HostUnreachable(f"{self.target.where}: connection lost: {exc!r}") from None

    def _upload(self, transport: paramiko.Transport, archive: bytes, limit: float) -> str:
        """Unpack ``archive`` into a new private directory on the host; return its path."""
        command = self._wrap(
            'sh -c \'umask 077; d=$(mktemp -d) && tar -x -f - -C "$d" && echo "$d"\''
        )
        channel = transport.open_session()
        try:
            result = self._stream(channel, command, archive, limit, Redactor(), None)
        finally:
            channel.close()
        directory = result.stdout.strip()
        if result.exit_status != 0 or not directory.startswith("/"):
            raise StepFailed(
                f"{self.target.where}: could not upload step files: {result.stderr_tail or 'no output'}"
            )
        return directory

    def _stream(
        self,
        channel: paramiko.Channel,
        command: str,
        stdin_data: bytes,
        limit: float,
        redact: Redactor,
        on_line: LineSink | None,
    ) -> RunResult:
        deadline = time.monotonic() + limit
        channel.settimeout(1.0)
        channel.exec_command(command)
        self._send_stdin(channel, stdin_data, deadline, limit)
        channel.shutdown_write()
        buffers = {"stdout": b"", "stderr": b""}
        stdout_lines: list[str] = []
        stderr_lines: list[str] = []

        def emit(stream: str, final: bool = False) -> None:
            data = buffers[stream]
            *lines, rest = data.split(b"\n")
            if final and rest:
                lines.append(rest)
                rest = b""
            buffers[stream] = rest
            for raw in lines:
                # redacted before anything keeps it: stdout becomes facts, changes and refusal
                # messages, which end up in non-secret Pulumi outputs and error messages
                line = raw.decode(errors="replace")
                line = redact_protocol_line(line, redact) if stream == "stdout" else redact(line)
                (stdout_lines if stream == "stdout" else stderr_lines).append(line)
                if on_line is not None:
                    on_line(stream, line)

        while True:
            progressed = False
            if channel.recv_ready():
                buffers["stdout"] += channel.recv(65536)
                emit("stdout")
                progressed = True
            if channel.recv_stderr_ready():
                buffers["stderr"] += channel.recv_stderr(65536)
                emit("stderr")
                progressed = True
            # OpenSSH may send the exit status before the last output: the end is EOF, not status
            drained = not channel.recv_ready() and not channel.recv_stderr_ready()
            if drained and channel.exit_status_ready() and (channel.eof_received or channel.closed):
                break
            if channel.closed and not progressed:
                break
            if time.monotonic() > deadline:
                channel.close()
                raise self._timed_out(limit)
            if not progressed:
                # block briefly on the channel instead of spinning
                channel.status_event.wait(0.05)
        # output that arrived between the last read and the end-of-file check
        while channel.recv_ready():
            buffers["stdout"] += channel.recv(65536)
        while channel.recv_stderr_ready():
            buffers["stderr"] += channel.recv_stderr(65536)
        emit("stdout", final=True)
        emit("stderr", final=True)
        status = channel.recv_exit_status()
        if status == -1:
            raise HostUnreachable(f"{self.target.where}: connection dropped while the step ran")
        tail = "\n".join(stderr_lines[-20:])
        return RunResult(status, "\n".join(stdout_lines), tail)

    def _send_stdin(
        self, channel: paramiko.Channel, data: bytes, deadline: float, limit: float
    ) -> None:
        """All of ``data`` to the command's stdin, within the step's deadline.

        A host that takes input slowly leaves the channel's window full for a while (each send
        then times out after the channel's 1 s); that is waiting, not a lost connection. A host
        that stopped altogether is the keepalive watch's to judge: it closes the channel.
        """
        offset = 0
        while offset < len(data):
            try:
                sent = channel.send(data[offset : offset + STDIN_CHUNK_BYTES])
            except TimeoutError:
                sent = 0
                if channel.closed:
                    raise EOFError(
                        "the connection closed while the step's input was sent"
                    ) from None
            else:
                if sent == 0:
                    raise EOFError("the host stopped reading the step's input")
            offset += sent
            if offset < len(data) and time.monotonic() > deadline:
                channel.close()
                raise self._timed_out(limit)

    def _timed_out(self, limit: float) -> StepFailed:
        return StepFailed(
            f"{self.target.where}: timed out after {limit:.0f} s "
            "(raise ssh.stepTimeoutSeconds if the step is legitimately slow)"
        )

    def boot_id(self) -> str:
        result = self.run_script(
            "cat /proc/sys/kernel/random/boot_id\n", timeout=30, activity="reading the boot id"
        )
        return result.stdout.strip()

    def reboot_and_wait(self) -> None:
        """Reboot the host and wait until it answers SSH with a new boot id (bounded)."""
        before = self.boot_id()
        with self._lock:
            assert self._client is not None
            transport = self._client.get_transport()
            if transport is not None:
                try:
                    channel = transport.open_session()
                    # a transient timer, so the reboot survives the connection going away
                    channel.exec_command(self._wrap("systemd-run --on-active=1 systemctl reboot"))
                    channel.recv_exit_status()
                    channel.close()
                except (paramiko.SSHException, EOFError, OSError):
                    pass  # the host may drop us as it goes down; the boot id tells the rest
        self.close()
        deadline = time.monotonic() + self.settings.reboot_timeout_seconds
        while time.monotonic() < deadline:
            if _port_open(self.target.address, self.target.port, 2.0):
                try:
                    self.connect()
                    if self.boot_id() not in ("", before):
                        return
                except (HostUnreachable, StepFailed):
                    pass
                self.close()
            time.sleep(self.settings.retry_backoff_seconds or 1.0)
        raise HostUnreachable(
            f"{self.target.where}: did not come back within {self.settings.reboot_timeout_seconds} s "
            "after reboot (ssh.rebootTimeoutSeconds)"
        )


def secret_prelude(secret_env: Mapping[str, str]) -> str:
    """Shell that sets each secret as a variable of the step script only, never exported.

    Programs the step starts (an installer, ``systemctl``, ``curl``) do not inherit them; a step
    hands a secret on by writing it to a root-only file (the K3s token file), nothing else.
    """
    lines = []
    for name, value in sorted(secret_env.items()):
        if not name.isidentifier() or not name.isascii():
            raise ValueError(f"secret name {name!r} must be a shell variable name")
        # declare +x: not exported even where the login environment already exported that name
        lines.append(f"declare +x {name}={shlex.quote(value)}\n")
    return "".join(lines)


def payload_tar(payloads: Mapping[str, bytes]) -> bytes:
    """The payload files as one uncompressed tar stream (binary-safe, unpacked by ``tar -x``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in sorted(payloads.items()):
            if "/" in name or name.startswith(".") or not name:
                raise ValueError(f"payload name {name!r} must be a plain file name")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def payload_prelude(directory: str) -> str:
    """Shell that points the step at its unpacked payloads and removes them when it ends."""
    return (
        f"export SOVEREIGN_PAYLOAD_DIR={shlex.quote(directory)}\n"
        "trap 'rm -rf \"$SOVEREIGN_PAYLOAD_DIR\"' EXIT\n"
    )


def _port_open(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


# What a step may read from its environment at run time: the toolkit's own names, none the step
# protocol sets itself.
STEP_ENV_NAME = re.compile(r"SOVEREIGN_[A-Z0-9_]{1,64}", re.ASCII)
RESERVED_ENV = frozenset({"SOVEREIGN_MODE", "SOVEREIGN_PAYLOAD_DIR", "SOVEREIGN_STEP"})


def run_step(
    session: HostSession,
    step_name: str,
    script: str,
    *,
    mode: Mode = "apply",
    secret_env: Mapping[str, str] | None = None,
    payloads: Mapping[str, bytes] | None = None,
    reboot_allowed: bool = False,
    on_line: LineSink | None = None,
    env: Mapping[str, str] | None = None,
) -> StepOutcome:
    """Run one step in ``mode`` and return its outcome; handles the reboot-required protocol.

    ``env``: what the step reads from its environment at run time (``StepPlan.env``: the hosts'
    addresses), beside the mode."""
    where = f"{session.target.where} step {step_name} ({mode})"
    for name in env or {}:
        if not STEP_ENV_NAME.fullmatch(name) or name in RESERVED_ENV:
            raise StepFailed(
                f"{where}: runtime input {name!r} refused: expected a SOVEREIGN_ name other "
                f"than {', '.join(sorted(RESERVED_ENV))}"
            )
    env = {**(env or {}), "SOVEREIGN_MODE": mode}
    activity = f"step {step_name} ({mode})"
    result = session.run_script(
        script, env, secret_env, payloads=payloads, on_line=on_line, activity=activity
    )
    outcome = interpret_exit(where, result.exit_status, result.stdout, result.stderr_tail)
    if outcome != "reboot":
        assert not isinstance(outcome, str)
        return outcome
    if not reboot_allowed or mode != "apply":
        raise StepFailed(f"{where}: asked for a reboot, which this step may not do")
    if on_line is not None:
        on_line("stderr", f"[{step_name}] rebooting {session.target.name} as the step requires")
    session.reboot_and_wait()
    again = session.run_script(
        script,
        env,
        secret_env,
        payloads=payloads,
        on_line=on_line,
        activity=f"{activity} after the reboot",
    )
    second = interpret_exit(
        where + " after reboot", again.exit_status, again.stdout, again.stderr_tail
    )
    if second == "reboot":
        raise StepFailed(f"{where}: still asks for a reboot after rebooting once")
    assert not isinstance(second, str)
    return StepOutcome("changed", second.facts, second.changes, second.drift, rebooted=True)


class SessionPool:
    """One connection per host for the life of a process (the provider or a verify run)."""

    def __init__(self, settings: SshDefaults) -> None:
        self._settings = settings
        self._sessions: dict[HostTarget, HostSession] = {}
        self._lock = threading.Lock()

    def session(self, target: HostTarget) -> HostSession:
        with self._lock:
            if target not in self._sessions:
                self._sessions[target] = HostSession(target, self._settings)
            return self._sessions[target]

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()


def on_hosts(
    items: Sequence[_T], work: Callable[[_T], _R], max_parallel: int
) -> list[_R | BaseException]:
    """Run ``work`` for every item with at most ``max_parallel`` at once; keep order; collect errors."""
    results: list[_R | BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(items) or 1))) as pool:
        futures = [pool.submit(work, item) for item in items]
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                results.append(exc)
    return results
