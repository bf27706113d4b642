"""What a host source hands host setup: how to reach the machine, where it is, and what was ordered.

``GpuHost`` takes a :class:`HostConnection`: the address and host key as Pulumi inputs (an ordered
machine's are outputs of its order), and the ordering resources its steps depend on, so a
``pulumi destroy`` runs the host's teardown steps before it releases the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import pulumi

from components.config.models import HostSpec, StackConfig, host_address
from components.providers.host_key_pin import HostKeyPin

R = TypeVar("R", bound=pulumi.Resource)


@dataclass(frozen=True)
class HostConnection:
    """One host as host setup reaches it.

    ``address`` and ``host_key`` may be outputs of the resources in ``machine`` (an ordered
    server, its IP, its install task); ``host_key`` None means pinned on first contact (see
    :func:`with_pinned_host_key`). ``port``, ``user`` and ``private_key`` say how to log in.
    ``placement`` says where the machine is (provider, datacenter, country, GPUs, NVMe drives
    where known, and for an order its type and zone), for the stack's outputs.
    """

    address: pulumi.Input[str]
    host_key: pulumi.Input[str] | None
    port: int
    user: str
    private_key: str  # a key reference: file:PATH, env:VARIABLE or agent:SHA256:...
    machine: tuple[pulumi.Resource, ...] = ()
    placement: dict[str, pulumi.Input[Any]] = field(default_factory=dict)
    # the ordered machine's id (a server, an install task): another id is another machine, at
    # the same address perhaps, so its host key is pinned again and every step runs again
    machine_id: pulumi.Input[str] | None = None

    @classmethod
    def of(
        cls,
        host: HostSpec,
        address: pulumi.Input[str],
        host_key: pulumi.Input[str] | None,
        machine: tuple[pulumi.Resource, ...] = (),
        placement: dict[str, pulumi.Input[Any]] | None = None,
        machine_id: pulumi.Input[str] | None = None,
    ) -> HostConnection:
        """The connection to ``host`` at ``address``, with the stack's port, user and key."""
        return cls(
            address,
            host_key,
            host.ssh.port,
            host.ssh.user,
            host.ssh.private_key,
            machine,
            placement if placement is not None else placement_of(host),
            machine_id,
        )

    @classmethod
    def as_stated(cls, host: HostSpec) -> HostConnection:
        """The connection the stack itself gives: its address, port, user, key and pin."""
        return cls.of(host, host_address(host), host.ssh.host_key)

    @property
    def depends_on(self) -> list[pulumi.Resource]:
        return list(self.machine)


@dataclass
class OrderContext:
    """What every source's ``connect`` gets besides the host: the stack, where relative key paths
    resolve, the parent of the resources it creates, and resources shared between hosts (one SSH
    key registration per key and project)."""

    stack: StackConfig
    project_dir: str
    parent: pulumi.Resource | None = None
    shared: dict[str, pulumi.Resource] = field(default_factory=dict)

    def once(self, label: str, make: Callable[[], R]) -> R:
        """The resource named ``label`` shared by the hosts that need it, made on first use
        (one SSH key registration per key and project)."""
        if label not in self.shared:
            self.shared[label] = make()
        return cast(R, self.shared[label])

    def opts(self, *depends_on: pulumi.Resource) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self.parent, depends_on=list(depends_on))

    def host_index(self, host: HostSpec) -> int:
        return next(i for i, h in enumerate(self.stack.hosts) if h.name == host.name)


def key_label(public_key: str) -> str:
    """A short, stable name part for one public key (its blob's SHA-256, 12 hex digits)."""
    blob = public_key.split()[1]
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def placement_of(host: HostSpec, **extra: pulumi.Input[Any]) -> dict[str, pulumi.Input[Any]]:
    """Where the host is, as the stack says (and, for an order, what was ordered)."""
    facts: dict[str, pulumi.Input[Any]] = {
        "source": host.source,
        "provider": host.provider,
        "datacenter": host.datacenter,
        "country": host.country,
        "gpuModel": host.gpu.model or "",
        "gpuCount": host.gpu.count,
        "nvme": [disk.id for disk in host.nvme],
    }
    facts.update(extra)
    return facts


def pin_announcement(host_index: int, host_name: str, fingerprint: str) -> str:
    """The one line that says a host key was pinned on first contact and how to pin it in the stack."""
    return (
        f"{host_name}: host key {fingerprint} pinned on first contact (stack output hosts); "
        f"to pin it in the stack set hosts[{host_index}].ssh.hostKey: {fingerprint}"
    )


def with_pinned_host_key(
    connection: HostConnection, host: HostSpec, context: OrderContext
) -> HostConnection:
    """The connection with a host key: the stack's pin, the one the source gave, or one pinned on
    first contact by a ``HostKeyPin`` that connects once the machine exists."""
    if host.ssh.host_key is not None:
        return dataclasses.replace(connection, host_key=host.ssh.host_key)
    if connection.host_key is not None or not host.ordered:
        # a byo or lab host without a pin is refused when a step connects, as always
        return connection
    pin = HostKeyPin(
        f"{host.name}-host-key",
        {
            "host": host.name,
            "address": connection.address,
            "port": connection.port,
            "user": connection.user,
            "privateKey": connection.private_key,
            "baseDir": context.project_dir,
            "ssh": context.stack.ssh.model_dump(mode="json"),
            **({"machineId": connection.machine_id} if connection.machine_id is not None else {}),
        },
        context.opts(*connection.machine),
    )
    index = context.host_index(host)
    pin.host_key.apply(lambda key: _announce(index, host.name, key))
    return dataclasses.replace(
        connection, host_key=pin.host_key, machine=(*connection.machine, pin)
    )


def _announce(index: int, name: str, fingerprint: str | None) -> None:
    if fingerprint:
        pulumi.log.info(pin_announcement(index, name, fingerprint))
