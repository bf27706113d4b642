"""``scaleway``: a GPU Instance or an Elastic Metal server ordered through pulumiverse-scaleway.

Resources, for a host ``gpu-1`` (children of the fleet):

* ``scw-ssh-key-<key>``: the stack's public key registered once per key and project
  (``scaleway:iam/sshKey:SshKey``). Scaleway installs a project's registered keys on Instances
  at boot; an Elastic Metal server is installed with the key's id.
* kind ``instance``: ``gpu-1-ip`` (a routed public IPv4, ``scaleway:instance/ip:Ip``) and
  ``gpu-1-server`` (``scaleway:instance/server:Server``: the commercial ``type``, the image of the
  stack's ``os``, in ``zone``). The address is the IP's.
* kind ``elastic-metal``: ``gpu-1-server`` (``scaleway:elasticmetal/server:Server``: the
  ``offer`` and ``os`` looked up by name in ``zone``, the key's id). The address is its first IPv4.

Credentials come from the provider's environment (``SCW_ACCESS_KEY``, ``SCW_SECRET_KEY``,
``SCW_DEFAULT_PROJECT_ID``) or its Pulumi config (``pulumi config set --secret
scaleway:secretKey``), never from the stack's own section. The API publishes no host keys: the
host key is pinned on first contact unless the stack pins it.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumiverse_scaleway import elasticmetal, iam, instance

from components.config.catalog import machine_type, os_image
from components.config.models import ORDERED_SOURCES, HostSpec, ScalewayOrder
from components.sources.connection import HostConnection, OrderContext, key_label, placement_of

PROVIDER = ORDERED_SOURCES["scaleway"]


def _order(host: HostSpec) -> ScalewayOrder:
    if host.scaleway is None:  # the config refuses this; a hand-built spec may not
        raise ValueError(f"{host.name}: source scaleway without a scaleway section")
    return host.scaleway


def registered_key(host: HostSpec, order: ScalewayOrder, context: OrderContext) -> iam.SshKey:
    """The stack's public key in the order's project, registered once for every host using it."""
    public_key = host.ssh.public_key or ""
    label = f"scw-ssh-key-{key_label(public_key)}" + (
        f"-{order.project_id[:8]}" if order.project_id else ""
    )
    return context.once(
        label,
        lambda: iam.SshKey(
            label,
            name=f"sovereign-{context.stack.environment}-{key_label(public_key)}",
            public_key=public_key,
            project_id=order.project_id,
            opts=context.opts(),
        ),
    )


def connect(host: HostSpec, context: OrderContext) -> HostConnection:
    order = _order(host)
    image = os_image(PROVIDER, order.kind, order.os)
    if image is None:  # the config refuses this first
        raise ValueError(f"{host.name}: no {PROVIDER} {order.kind} image for {order.os}")
    # the catalog's spelling: validate matches names in any letter case, the API does not
    known = machine_type(PROVIDER, order.kind, order.type)
    ordered_type = known.name if known else order.type
    key = registered_key(host, order, context)
    tags = [f"sovereign-environment={context.stack.environment}", f"sovereign-host={host.name}"]
    placement: dict[str, Any] = {"zone": order.zone, "type": order.type, "kind": order.kind}
    if order.kind == "instance":
        ip = instance.Ip(
            f"{host.name}-ip",
            zone=order.zone,
            type="routed_ipv4",
            project_id=order.project_id,
            tags=tags,
            opts=context.opts(),
        )
        server = instance.Server(
            f"{host.name}-server",
            name=host.name,
            type=ordered_type,
            image=image.name,
            zone=order.zone,
            ip_id=ip.id,
            project_id=order.project_id,
            tags=tags,
            # the key must be registered before the Instance boots, or it is not installed
            opts=context.opts(key),
        )
        return HostConnection.of(
            host,
            ip.address,
            None,
            (key, ip, server),
            placement_of(host, **placement, serverId=server.id),
            machine_id=server.id,
        )
    offer = elasticmetal.get_offer_output(name=ordered_type, zone=order.zone)
    system = elasticmetal.get_os_output(name=image.name, version=image.version, zone=order.zone)
    metal = elasticmetal.Server(
        f"{host.name}-server",
        name=host.name,
        hostname=host.name,
        offer=offer.offer_id.apply(lambda found: _required(found, "offer", order.type, order)),
        os=system.os_id.apply(lambda found: _required(found, "os", order.os, order)),
        ssh_key_ids=[key.id],
        zone=order.zone,
        project_id=order.project_id,
        tags=tags,
        opts=context.opts(key),
    )
    address = metal.ipv4s.apply(lambda ips: _first_address(host.name, ips))
    return HostConnection.of(
        host,
        address,
        None,
        (key, metal),
        placement_of(host, **placement, serverId=metal.id),
        machine_id=metal.id,
    )


def _required(found: str | None, what: str, wanted: str, order: ScalewayOrder) -> str:
    if not found:
        raise pulumi.RunError(
            f"Scaleway has no Elastic Metal {what} {wanted!r} in {order.zone} (scaleway {what})"
        )
    return found


def _first_address(name: str, ips: Any) -> str:
    for ip in ips or []:
        address = ip.get("address") if isinstance(ip, dict) else getattr(ip, "address", None)
        if address:
            return str(address)
    raise pulumi.RunError(f"{name}: the Elastic Metal server has no public IPv4 address")
