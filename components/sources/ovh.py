"""``ovh``: an OVHcloud Public Cloud GPU instance ordered, or a dedicated server installed, through
pulumi-ovh.

Resources, for a host ``gpu-1`` (children of the fleet):

* kind ``cloud-instance``: ``ovh-ssh-key-<key>`` (``ovh:index/cloudSSHKey:CloudSSHKey``: the
  stack's public key registered once per key and project) and ``gpu-1-server``
  (``ovh:CloudProject/instance:Instance``: the ``flavor`` and the image of the stack's ``os``,
  both looked up by name in ``region`` of the project ``serviceName``, hourly billing, a public
  network, the registered key). The address is the instance's first IPv4.
* kind ``dedicated`` with ``serviceName``: a server the team rents, reinstalled with the stack's
  ``os`` and public key by the provider's install task (``gpu-1-install``,
  ``ovh:Dedicated/serverReinstallTask:ServerReinstallTask``); its address from the server's
  record (``ovh:index/getServer:getServer``). Destroying the stack does not give the server back.
* kind ``dedicated`` with ``plan``: a new server ordered (``gpu-1-server``,
  ``ovh:Dedicated/server:Server``: the plan in the host's ``datacenter``, installed with the
  ``os`` and key); destroying the stack terminates it.

Credentials come from the provider's environment (``OVH_ENDPOINT``, ``OVH_APPLICATION_KEY``,
``OVH_APPLICATION_SECRET``, ``OVH_CONSUMER_KEY``, or ``OVH_CLIENT_ID``/``OVH_CLIENT_SECRET``) or its
Pulumi config (``pulumi config set --secret ovh:applicationSecret``), never from the stack's own
section. The API publishes no host keys: the host key is pinned on first contact unless the stack
pins it.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_ovh as ovh
from pulumi_ovh import cloudproject, dedicated

from components.config.catalog import machine_type, os_image, region_country
from components.config.models import ORDERED_SOURCES, HostSpec, OvhOrder
from components.config.residency import country_allowed
from components.sources.connection import HostConnection, OrderContext, key_label, placement_of

PROVIDER = ORDERED_SOURCES["ovh"]


def _order(host: HostSpec) -> OvhOrder:
    if host.ovh is None:  # the config refuses this; a hand-built spec may not
        raise ValueError(f"{host.name}: source ovh without an ovh section")
    return host.ovh


def registered_key(host: HostSpec, order: OvhOrder, context: OrderContext) -> ovh.CloudSSHKey:
    """The stack's public key in the order's Public Cloud project, registered once."""
    public_key = host.ssh.public_key or ""
    label = f"ovh-ssh-key-{key_label(public_key)}-{order.service_name}"
    return context.once(
        label,
        lambda: ovh.CloudSSHKey(
            label,
            name=f"sovereign-{context.stack.environment}-{key_label(public_key)}",
            public_key=public_key,
            service_name=order.service_name,
            opts=context.opts(),
        ),
    )


def connect(host: HostSpec, context: OrderContext) -> HostConnection:
    order = _order(host)
    image = os_image(PROVIDER, order.kind, order.os)
    if image is None:  # the config refuses this first
        raise ValueError(f"{host.name}: no {PROVIDER} {order.kind} image for {order.os}")
    if order.kind == "cloud-instance":
        return _cloud_instance(host, order, image.name, context)
    return _dedicated(host, order, image.name, context)


def _cloud_instance(
    host: HostSpec, order: OvhOrder, image_name: str, context: OrderContext
) -> HostConnection:
    region = order.region or ""
    key = registered_key(host, order, context)
    flavors = cloudproject.get_flavors_output(service_name=order.service_name, region=region)
    images = cloudproject.get_images_output(
        service_name=order.service_name, region=region, os_type="linux"
    )
    # the catalog's spelling: validate matches names in any letter case, the API does not
    known = machine_type(PROVIDER, order.kind, order.flavor or "")
    flavor = known.name if known else order.flavor or ""
    flavor_id = flavors.flavors.apply(lambda found: _id_named(found, flavor, "flavour", region))
    image_id = images.images.apply(lambda found: _id_named(found, image_name, "image", region))
    server = cloudproject.Instance(
        f"{host.name}-server",
        name=host.name,
        service_name=order.service_name,
        region=region,
        billing_period="hourly",
        flavor=cloudproject.InstanceFlavorArgs(flavor_id=flavor_id),
        boot_from=cloudproject.InstanceBootFromArgs(image_id=image_id),
        network=cloudproject.InstanceNetworkArgs(public=True),
        ssh_key=cloudproject.InstanceSshKeyArgs(name=key.name),
        opts=context.opts(key),
    )
    address = server.addresses.apply(lambda found: _first_ipv4(host.name, found))
    return HostConnection.of(
        host,
        address,
        None,
        (key, server),
        placement_of(
            host, region=region, type=order.flavor or "", kind=order.kind, serverId=server.id
        ),
        machine_id=server.id,
    )


def _dedicated(
    host: HostSpec, order: OvhOrder, template: str, context: OrderContext
) -> HostConnection:
    public_key = host.ssh.public_key or ""
    if order.plan is not None:
        server = dedicated.Server(
            f"{host.name}-server",
            ovh_subsidiary=order.subsidiary,
            plans=[
                dedicated.ServerPlanArgs(
                    plan_code=order.plan,
                    duration="P1M",
                    pricing_mode="default",
                    configurations=[
                        dedicated.ServerPlanConfigurationArgs(
                            label="dedicated_datacenter", value=host.datacenter
                        ),
                        dedicated.ServerPlanConfigurationArgs(
                            label="dedicated_os", value="none_64.en"
                        ),
                    ],
                )
            ],
            os=template,
            customizations=dedicated.ServerCustomizationsArgs(
                hostname=host.name, ssh_key=public_key
            ),
            display_name=host.name,
            opts=context.opts(),
        )
        return HostConnection.of(
            host,
            server.ip,
            None,
            (server,),
            placement_of(host, plan=order.plan, kind=order.kind, serverId=server.service_name),
            machine_id=server.id,
        )
    # the rented server is where the stack says before anything is installed on it: its record
    # at OVHcloud names its datacenter, which the residency policy and the stack are held to
    record = ovh.get_server_output(service_name=order.service_name)
    allowed = context.stack.residency.allowed_countries
    checked = pulumi.Output.all(record.service_name, record.datacenter).apply(
        lambda found: rented_where_stated(host, str(found[0]), str(found[1]), allowed)
    )
    install = dedicated.ServerReinstallTask(
        f"{host.name}-install",
        service_name=checked,
        os=template,
        customizations=dedicated.ServerReinstallTaskCustomizationsArgs(
            hostname=host.name, ssh_key=public_key
        ),
        opts=context.opts(),
    )
    return HostConnection.of(
        host,
        record.ip,
        None,
        (install,),
        placement_of(host, kind=order.kind, serverId=order.service_name or ""),
        # a reinstall is a new system at the same address: a new host key to pin
        machine_id=install.id,
    )


def rented_where_stated(
    host: HostSpec, service_name: str, datacenter: str, allowed: frozenset[str]
) -> str:
    """``service_name`` once the rented server's datacenter (as OVHcloud's record names it) is
    the host's and lies in an allowed country; raises before the server is reinstalled."""
    country = region_country(datacenter, PROVIDER)
    if country is None or not country_allowed(country, allowed):
        raise pulumi.RunError(
            f"{host.name}: OVHcloud places the rented server {service_name} in {datacenter!r} "
            f"({country or 'a place the location table does not know'}), outside the residency "
            "policy: nothing was installed on it"
        )
    if datacenter.lower() != host.datacenter.lower():
        raise pulumi.RunError(
            f"{host.name}: the stack says datacenter {host.datacenter} but OVHcloud places the "
            f"rented server {service_name} in {datacenter}; set the host's datacenter (and "
            "country) to where it is: nothing was installed on it"
        )
    return service_name


def _field(entry: Any, name: str) -> Any:
    return entry.get(name) if isinstance(entry, dict) else getattr(entry, name, None)


def _id_named(entries: Any, name: str, what: str, region: str) -> str:
    for entry in entries or []:
        if _field(entry, "name") == name and _field(entry, "id"):
            return str(_field(entry, "id"))
    names = sorted({str(_field(e, "name")) for e in entries or []})
    raise pulumi.RunError(
        f"OVHcloud has no {what} named {name!r} in {region}; it offers: {', '.join(names[:40])}"
    )


def _first_ipv4(name: str, addresses: Any) -> str:
    for entry in addresses or []:
        if _field(entry, "version") == 4 and _field(entry, "ip"):
            return str(_field(entry, "ip"))
    raise pulumi.RunError(f"{name}: the OVHcloud instance has no public IPv4 address")
