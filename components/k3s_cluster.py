"""``K3sCluster``: the cluster the fleet's K3s steps formed, as a kubeconfig and a provider."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pydantic import Field

from components.config.models import Model, StackConfig
from components.plan.cluster import api_server_url, api_url, first_server
from components.providers.cluster_access import READY_TIMEOUT_SECONDS, ClusterAccess
from components.sources.connection import HostConnection


class K3sClusterSpec(Model):
    """The stack whose hosts run K3s, and how long to wait for all of them to be Ready."""

    stack: StackConfig
    project_dir: str = Field(default=".")
    ready_timeout_seconds: int = Field(default=READY_TIMEOUT_SECONDS, ge=30, le=7200)
    poll_seconds: float = Field(default=5.0, gt=0, le=60)


def cluster_access_props(
    spec: K3sClusterSpec, first: HostConnection | None = None
) -> dict[str, pulumi.Input[Any]]:
    """The inputs of the ``ClusterAccess`` resource: the first server, reached over pinned SSH
    (``first``: its connection, when it is an ordered machine whose address is an output)."""
    stack = spec.stack
    server = first_server(stack)
    if first is None:
        first = HostConnection.as_stated(server)
    return {
        "host": server.name,
        "address": first.address,
        "port": first.port,
        "user": first.user,
        "privateKey": first.private_key,
        "hostKey": first.host_key,
        "baseDir": spec.project_dir,
        "ssh": stack.ssh.model_dump(mode="json"),
        "nodes": [h.name for h in stack.hosts],
        "serverUrl": server_url(stack, first),
        "readyTimeoutSeconds": spec.ready_timeout_seconds,
        "pollSeconds": spec.poll_seconds,
    }


def server_url(stack: StackConfig, first: HostConnection) -> pulumi.Input[str]:
    """The API server's URL: ``k3s.apiEndpoint``'s, else the first server's address's (an
    output when the first server is ordered)."""
    if stack.k3s.api_endpoint:
        return api_server_url(stack)
    if isinstance(first.address, str):
        return api_url(first.address)
    return pulumi.Output.all(first.address).apply(lambda found: api_url(str(found[0])))


class K3sCluster(pulumi.ComponentResource):
    """The K3s cluster of a stack, once every node is registered and Ready.

    Resources: ``<name>-access`` (a ``ClusterAccess``: waits for the nodes, reads the kubeconfig
    from the first server over its pinned SSH session, server URL set to ``k3s.apiEndpoint``, by
    default the first server's address) and ``<name>-k8s`` (a ``pulumi_kubernetes.Provider`` built
    from that kubeconfig). Build it with ``depends_on`` the fleet, so it waits for K3s.

    Outputs: ``kubeconfig`` (a secret), ``server_url``, ``ready_nodes``; ``provider`` for
    Kubernetes resources on this cluster.

    Example::

        fleet = Fleet("prod-fra", FleetSpec(stack=stack))
        cluster = K3sCluster(
            "prod-fra-k3s",
            K3sClusterSpec(stack=stack),
            pulumi.ResourceOptions(depends_on=[fleet]),
        )
        pulumi.export("kubeconfig", cluster.kubeconfig)
    """

    def __init__(
        self,
        name: str,
        spec: K3sClusterSpec,
        opts: pulumi.ResourceOptions | None = None,
        first_server_connection: HostConnection | None = None,
    ) -> None:
        """``first_server_connection``: the first server's connection when it is an ordered
        machine (``Fleet.connections[name]``); otherwise the stack's address and pin are used."""
        super().__init__("sovereign:k3s_cluster:K3sCluster", name, None, opts)
        if not spec.stack.k3s.install:
            raise ValueError(
                f"{name}: k3s.install is false for this stack; there is no K3s cluster"
            )
        props = cluster_access_props(spec, first_server_connection)
        self.access = ClusterAccess(
            f"{name}-access",
            props,
            # children do not inherit a component's depends_on: pass it on so the wait starts
            # only once the hosts' steps are done
            pulumi.ResourceOptions(parent=self, depends_on=opts.depends_on if opts else None),
        )
        self.kubeconfig: pulumi.Output[str] = pulumi.Output.secret(self.access.kubeconfig)
        self.server_url: pulumi.Output[str] = pulumi.Output.from_input(props["serverUrl"])
        self.ready_nodes: pulumi.Output[list[str]] = self.access.readyNodes
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs(
            {
                "kubeconfig": self.kubeconfig,
                "server_url": self.server_url,
                "ready_nodes": self.ready_nodes,
            }
        )
