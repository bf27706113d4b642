"""``Fleet``: every host of a stack, built in rollout order with the waits between hosts wired."""

from __future__ import annotations

from typing import Any

import pulumi
from pydantic import Field

from components.config.models import HostSpec, Model, StackConfig
from components.gpu_host import GpuHost, GpuHostSpec, StepKey
from components.plan.cluster import first_server
from components.sources.connection import HostConnection, OrderContext
from components.sources.ordering import connect_host


class FleetSpec(Model):
    """The stack whose hosts make up the fleet, and where relative key paths are resolved."""

    stack: StackConfig
    project_dir: str = Field(default=".")


def rollout_order(stack: StackConfig) -> list[HostSpec]:
    """Hosts in the order their components are built: the first K3s server first."""
    first = first_server(stack).name
    return sorted(stack.hosts, key=lambda h: h.name != first)


def exported_host(host: HostSpec, connection: HostConnection) -> dict[str, Any]:
    """How one host appears in the stack's ``hosts`` output, which verification reads back
    (``components.verification.runner.hosts_from_outputs``): where its source says it is reached
    (an ordered host's address and host key are its order's outputs)."""
    return {
        "name": host.name,
        "role": host.role,
        "source": host.source,
        "address": connection.address,
        "port": connection.port,
        "user": connection.user,
        "hostKey": connection.host_key,
        "country": host.country,
        "datacenter": host.datacenter,
    }


class Fleet(pulumi.ComponentResource):
    """Every host of the stack as a ``GpuHost``, the first K3s server first.

    Resources: for each host its source's resources (``components.sources``: for an ordered
    machine the order, its SSH key registration and, unless the stack pins the host key, a
    ``HostKeyPin``), then one ``GpuHost`` child per host, named after the host, whose steps take
    the machine's address and host key from those outputs and depend on the order, so that
    ``pulumi destroy`` runs the host's teardown steps before it releases the machine. A step that waits for a step
    on another host (a K3s node joining waits for the first server's K3s step) depends on it.
    The K3s join token goes to the hosts as a Pulumi secret.

    Outputs: ``hosts`` (connection and placement facts per host, the shape verification reads),
    ``facts`` (the rollout's record: what each host's steps found when they last ran, by host name
    and fact key; ``pulumi stack output facts`` shows it). Verification does not read it: it
    observes the hosts as they are now. ``nodes`` maps host names to their ``GpuHost``;
    ``last_steps`` are what a cluster built on the fleet waits for.

    Example::

        from components.config import load_stack_file
        from components.fleet import Fleet, FleetSpec
        fleet = Fleet("prod-fra", FleetSpec(stack=load_stack_file("stacks/Pulumi.prod-fra.yaml")))
        pulumi.export("hosts", fleet.hosts)
    """

    def __init__(
        self, name: str, spec: FleetSpec, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("sovereign:fleet:Fleet", name, None, opts)
        stack = spec.stack
        secret_env: dict[str, pulumi.Input[str]] = {}
        if stack.k3s_token is not None:
            secret_env["K3S_TOKEN"] = pulumi.Output.secret(stack.k3s_token.get_secret_value())
        # every machine first: a host's steps need the addresses of all (the firewall's cluster
        # nodes, the K3s join URL)
        context = OrderContext(stack, spec.project_dir, parent=self)
        self.connections: dict[str, HostConnection] = {
            host.name: connect_host(host, context) for host in stack.hosts
        }
        addresses = {name: c.address for name, c in self.connections.items()}
        built: dict[StepKey, pulumi.Resource] = {}
        self.nodes: dict[str, GpuHost] = {}
        for host in rollout_order(stack):
            node = GpuHost(
                host.name,
                # the stack and its hosts are validated models already; building the spec with
                # validation would run the whole stack's cross-field rules again for every host
                GpuHostSpec.model_construct(host=host, stack=stack, project_dir=spec.project_dir),
                # hosts were children of the stack before there was a Fleet: keep their state
                pulumi.ResourceOptions(
                    parent=self, aliases=[pulumi.Alias(parent=pulumi.ROOT_STACK_RESOURCE)]
                ),
                secret_env=secret_env,
                peer_steps=built,
                connection=self.connections[host.name],
                addresses=addresses,
            )
            built.update(node.step_index)
            self.nodes[host.name] = node
        self.last_steps: list[pulumi.Resource] = [
            n.last_step for n in self.nodes.values() if n.last_step is not None
        ]
        self.hosts: pulumi.Output[list[dict[str, Any]]] = pulumi.Output.from_input(
            [exported_host(h, self.connections[h.name]) for h in stack.hosts]
        )
        names = list(self.nodes)
        self.facts: pulumi.Output[dict[str, dict[str, str]]] = pulumi.Output.all(
            *(node.facts for node in self.nodes.values())
        ).apply(lambda per_host: dict(zip(names, per_host, strict=True)))
        self.register_outputs({"hosts": self.hosts, "facts": self.facts})
