"""The ``HostKeyPin`` dynamic provider: an ordered machine's SSH host key, pinned on first contact.

The providers the toolkit orders from (Scaleway, OVHcloud) publish no host keys through their
APIs. For a machine whose stack pins no ``ssh.hostKey``, this resource connects once the machine
exists and records the key it presents: trust on first use. The connection must authenticate with
the stack's key before the key is recorded, which refuses a host that does not accept it, but it
cannot prove whose machine answered (a host in the path may accept any key); where that matters,
read the key from the machine's console and pin it in the stack before the first rollout. From the
pin on, the host steps refuse a host that presents another key, as for any pinned host.

* create: wait for the machine to accept the stack's key (``ssh.firstContactTimeoutSeconds``);
  output ``hostKey``.
* diff: another address or port, or another machine id (a server replaced, a server reinstalled,
  at the same address perhaps), is another machine: the pin is replaced (taken again on first
  contact). Nothing else re-pins: ``pulumi refresh`` keeps the recorded key, so a host that
  presents another key later is refused by the steps.
* delete: nothing on the host; the pin goes with the machine.

This module path and the class names are part of every stack's state: keep them.
"""

from __future__ import annotations

from typing import Any

from pulumi import Input, Output, ResourceOptions
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.providers.connection import connection_failures, host_target, log_line, ssh_settings

REQUIRED_KEYS = ("host", "address", "port", "user", "privateKey")
# another address or port, or another machine (a replaced server, a reinstall) at the same one
REPIN_KEYS = ("address", "port", "machineId")


def pin_from_props(props: dict[str, Any]) -> dict[str, Any]:
    """Connect to the machine ``props`` name and return the outputs with its ``hostKey``."""
    from components.execution.ssh import first_contact_host_key  # noqa: PLC0415

    settings = ssh_settings(props)
    target = host_target({**props, "hostKey": None})
    log_line(str(props["host"]), f"first contact with {props['address']}:{props['port']}")
    fingerprint = first_contact_host_key(
        target, settings, float(settings.first_contact_timeout_seconds)
    )
    log_line(str(props["host"]), f"host key pinned on first contact: {fingerprint}")
    return {**props, "hostKey": fingerprint}


class HostKeyPinProvider(ResourceProvider):
    """CRUD for one pinned host key; see the module docstring."""

    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, connection_failures(news, REQUIRED_KEYS))

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = pin_from_props(props)
        return CreateResult(f"{props['host']}@{props['address']}:{props['port']}", outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = [k for k in REPIN_KEYS if olds.get(k) != news.get(k)]
        # the connection settings may change without a new pin: kept, not re-taken
        changed = [
            k for k in ("user", "privateKey", "ssh", "baseDir") if olds.get(k) != news.get(k)
        ]
        return DiffResult(
            changes=bool(replaces or changed),
            replaces=replaces,
            stables=["hostKey"] if not replaces else [],
            delete_before_replace=True,
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult({**news, "hostKey": olds.get("hostKey")})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, props)  # never re-pinned by a refresh

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class HostKeyPin(Resource, module="sovereign", name="HostKeyPin"):
    """The host key of one ordered machine, pinned on first contact. Output: ``hostKey``."""

    def __init__(
        self,
        name: str,
        props: dict[str, Input[Any]],
        opts: ResourceOptions | None = None,
    ) -> None:
        super().__init__(HostKeyPinProvider(), name, {"hostKey": None, **props}, opts)

    @property
    def host_key(self) -> Output[str]:
        """The pinned fingerprint (``SHA256:...``), known once the machine answered."""
        value: Output[str] = getattr(self, "hostKey")  # noqa: B009 - set by the dynamic resource
        return value
