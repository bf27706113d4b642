"""Host keys pinned on first contact (``HostKeyPin``), against real sshd processes on loopback.

The first contact takes the key of the machine that accepts the stack's key; from then on that
key is the pin, and a machine that presents another key at the same address is refused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from components.config.models import SshDefaults
from components.execution.outcome import HostKeyMismatch, HostUnreachable
from components.execution.ssh import HostSession, HostTarget, first_contact_host_key
from components.providers.host_key_pin import HostKeyPinProvider
from tests.conftest import LocalSshd, fingerprint, keygen, start_sshd
from tests.loopback import free_port

FAST = SshDefaults(connect_timeout_seconds=2, connect_retries=0, retry_backoff_seconds=0)


def outs(result: Any) -> dict[str, Any]:
    """A provider result's outputs (the SDK types them as optional)."""
    assert result.outs is not None
    found: dict[str, Any] = result.outs
    return found


def pin_props(sshd: LocalSshd, port: int | None = None, key: str = "ed25519") -> dict[str, object]:
    return {
        "host": "gpu-1",
        "address": "127.0.0.1",
        "port": port or sshd.port,
        "user": sshd.user,
        "privateKey": f"file:{sshd.client_keys[key]}",
        "baseDir": ".",
        "ssh": FAST.model_copy(update={"first_contact_timeout_seconds": 10}).model_dump(
            mode="json"
        ),
    }


def test_first_contact_pins_the_key_the_machine_presents(local_sshd: LocalSshd) -> None:
    pinned = outs(HostKeyPinProvider().create(pin_props(local_sshd)))["hostKey"]
    assert pinned == local_sshd.host_key_fingerprint
    # the pinned key is accepted by the executor's pinned policy, as any stack pin is
    target = HostTarget(
        "gpu-1",
        "127.0.0.1",
        local_sshd.port,
        local_sshd.user,
        f"file:{local_sshd.client_keys['ed25519']}",
        pinned,
    )
    session = HostSession(target, FAST)
    try:
        assert session.run_script("echo pinned").stdout.strip() == "pinned"
    finally:
        session.close()


def test_a_machine_reinstalled_with_another_key_is_refused_after_the_pin(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    """The pin taken from the first machine refuses the next one at the same address and port."""
    port = free_port()
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(Path(f"{local_sshd.client_keys['ed25519']}.pub").read_text())
    first_key, second_key = tmp_path / "first_host_key", tmp_path / "second_host_key"
    keygen(first_key, "ed25519")
    keygen(second_key, "ed25519")
    first = start_sshd(tmp_path, port, first_key, authorized, name="first")
    try:
        pinned = outs(HostKeyPinProvider().create(pin_props(local_sshd, port)))["hostKey"]
    finally:
        first.terminate()
        first.wait(timeout=10)
    assert pinned == fingerprint(Path(f"{first_key}.pub"))
    second = start_sshd(tmp_path, port, second_key, authorized, name="second")
    target = HostTarget(
        "gpu-1",
        "127.0.0.1",
        port,
        local_sshd.user,
        f"file:{local_sshd.client_keys['ed25519']}",
        pinned,
    )
    try:
        with pytest.raises(HostKeyMismatch, match="host key mismatch"):
            HostSession(target, FAST).connect()
        # a refresh keeps the recorded pin: nothing re-pins to the new key
        props = {**pin_props(local_sshd, port), "hostKey": pinned}
        assert outs(HostKeyPinProvider().read("gpu-1", props))["hostKey"] == pinned
    finally:
        second.terminate()
        second.wait(timeout=10)


def test_a_machine_that_never_accepts_the_key_is_not_pinned(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    """A key the machine does not hold (an order that installed another key) pins nothing: the
    wait ends naming the cause and the setting that bounds it."""
    stranger = tmp_path / "id_stranger"
    keygen(stranger, "ed25519")
    target = HostTarget(
        "gpu-1", "127.0.0.1", local_sshd.port, local_sshd.user, f"file:{stranger}", None
    )
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as info:
        first_contact_host_key(target, FAST, 2.0)
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "ssh.firstContactTimeoutSeconds" in message
    assert "authentication failed" in message


def test_a_machine_still_booting_is_tried_again_until_the_wait_ends(local_sshd: LocalSshd) -> None:
    closed = free_port()
    target = HostTarget(
        "gpu-1",
        "127.0.0.1",
        closed,
        local_sshd.user,
        f"file:{local_sshd.client_keys['ed25519']}",
        None,
    )
    naps: list[float] = []
    clock = iter(float(t) for t in range(100))
    with pytest.raises(HostUnreachable) as info:
        first_contact_host_key(target, FAST, 3.0, clock=lambda: next(clock), sleep=naps.append)
    assert "connection refused" in str(info.value)
    assert len(naps) >= 2, "a closed port (a machine still installing) was not tried again"


def test_a_stack_pin_is_never_replaced_by_first_contact(local_sshd: LocalSshd) -> None:
    target = HostTarget(
        "gpu-1",
        "127.0.0.1",
        local_sshd.port,
        local_sshd.user,
        f"file:{local_sshd.client_keys['ed25519']}",
        local_sshd.host_key_fingerprint,
    )
    with pytest.raises(ValueError, match="pinned already"):
        first_contact_host_key(target, FAST, 1.0)


def test_another_machine_is_pinned_again_and_settings_changes_keep_the_pin() -> None:
    provider = HostKeyPinProvider()
    olds = {
        "host": "gpu-1",
        "address": "51.159.1.2",
        "port": 22,
        "user": "root",
        "hostKey": "SHA256:x",
    }
    moved = provider.diff("id", olds, {**olds, "address": "51.159.1.3"})
    assert moved.changes
    assert moved.replaces == ["address"]
    renamed = provider.diff("id", olds, {**olds, "user": "ubuntu"})
    assert renamed.changes
    assert not renamed.replaces
    kept = provider.update("id", olds, {**olds, "user": "ubuntu", "hostKey": None})
    assert outs(kept)["hostKey"] == "SHA256:x"
    same = provider.diff("id", olds, dict(olds))
    assert not same.changes
    # a replaced server (or a reinstall) at the same address is another machine: pinned again
    replaced = provider.diff(
        "id", {**olds, "machineId": "fr-par-2/a"}, {**olds, "machineId": "fr-par-2/b"}
    )
    assert replaced.replaces == ["machineId"]


def test_inputs_are_checked_before_any_connection() -> None:
    failures = HostKeyPinProvider().check({}, {"host": "gpu-1", "port": 70000}).failures
    assert {f.property for f in failures} >= {"address", "user", "privateKey", "port"}
