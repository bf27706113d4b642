"""What the providers a stack orders from answer, for Pulumi mocks.

Each entry mimics the provider's resource or data-source contract as its SDK declares it
(pulumiverse-scaleway 1.60.0, pulumi-ovh 2.22.0; wire names, as the engine passes them): the
inputs echoed back, plus the outputs the provider computes (ids, addresses, fingerprints). The
sources read those outputs, so a wrong name here would fail the mocks tests as it would fail a
real ``pulumi up``. Addresses are derived from the resource's name, so a test can predict them.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable
from typing import Any

SCW_SSH_KEY = "scaleway:iam/sshKey:SshKey"
SCW_IP = "scaleway:instance/ip:Ip"
SCW_SERVER = "scaleway:instance/server:Server"
SCW_METAL = "scaleway:elasticmetal/server:Server"
SCW_GET_OFFER = "scaleway:elasticmetal/getOffer:getOffer"
SCW_GET_OS = "scaleway:elasticmetal/getOs:getOs"
OVH_SSH_KEY = "ovh:index/cloudSSHKey:CloudSSHKey"
OVH_INSTANCE = "ovh:CloudProject/instance:Instance"
OVH_REINSTALL = "ovh:Dedicated/serverReinstallTask:ServerReinstallTask"
OVH_DEDICATED = "ovh:Dedicated/server:Server"
OVH_GET_FLAVORS = "ovh:CloudProject/getFlavors:getFlavors"
OVH_GET_IMAGES = "ovh:CloudProject/getImages:getImages"
OVH_GET_SERVER = "ovh:index/getServer:getServer"
HOST_KEY_PIN = "pulumi-python:dynamic/sovereign:HostKeyPin"

ORDERING_TYPES = frozenset(
    {
        SCW_SSH_KEY,
        SCW_IP,
        SCW_SERVER,
        SCW_METAL,
        OVH_SSH_KEY,
        OVH_INSTANCE,
        OVH_REINSTALL,
        OVH_DEDICATED,
    }
)

# what the provider's catalogue offers, by name (the Elastic Metal offer and OS lookups, and the
# OVHcloud flavour and image lists, answer from these)
SCW_METAL_OFFERS = {"EM-T220E-L40S"}
SCW_METAL_OS = {("Ubuntu", "22.04 LTS (Jammy Jellyfish)"), ("Ubuntu", "24.04 LTS (Noble Numbat)")}
OVH_FLAVORS = ("b3-8", "l4-90", "l4-180", "l40s-90", "l40s-180", "l40s-360", "h100-380")
OVH_IMAGES = ("Debian 12", "Ubuntu 22.04", "Ubuntu 24.04", "Windows Server 2022")
# a rented dedicated server the account holds, by service name
OVH_RENTED = {
    "ns3141592.ip-51-91-12.eu": ("51.91.12.7", "gra3"),
    "ns2718281.ip-15-235-1.net": ("15.235.1.9", "bhs7"),
}


def _id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(parts)))


def ipv4_for(name: str, first_octets: str) -> str:
    """The address a provider's mock gives the resource ``name``: stable, in its public range."""
    digest = hashlib.sha256(name.encode()).digest()
    return f"{first_octets}.{digest[0] % 250 + 2}.{digest[1] % 250 + 2}"


def host_key_for(address: str) -> str:
    """The host key fingerprint a machine at ``address`` presents in these tests."""
    digest = hashlib.sha256(f"host-key:{address}".encode()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _fingerprint(public_key: str) -> str:
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _scw_ssh_key(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    outs = {
        **inputs,
        "fingerprint": f"256 {_fingerprint(inputs['publicKey'])} (ssh-ed25519)",
        "projectId": inputs.get("projectId") or _id("default-project"),
        "organizationId": _id("organization"),
    }
    return _id(typ, name), outs


def _scw_ip(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    address = ipv4_for(name, "51.159")
    return f"{inputs['zone']}/{_id(typ, name)}", {
        **inputs,
        "address": address,
        "prefix": f"{address}/32",
    }


def _scw_server(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return f"{inputs['zone']}/{_id(typ, name)}", {**inputs, "state": "started", "privateIps": []}


def _scw_metal(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    address = ipv4_for(name, "51.159")
    ip = {"id": _id(name, "v4"), "address": address, "version": "IPv4"}
    outs = {
        **inputs,
        "ips": [ip],
        "ipv4s": [ip],
        "ipv6s": [],
        "domain": f"{_id(typ, name)}.{inputs['zone']}.baremetal.scw.cloud",
    }
    return f"{inputs['zone']}/{_id(typ, name)}", outs


def _ovh_ssh_key(_typ: str, _name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return inputs["name"], {**inputs, "fingerprint": _fingerprint(inputs["publicKey"])}


def _ovh_instance(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    outs = {
        **inputs,
        # the IPv6 address first, as the API may list it: the source must pick the IPv4 one
        "addresses": [
            {"ip": "2001:41d0:304:400::" + str(len(name)), "version": 6},
            {"ip": ipv4_for(name, "57.128"), "version": 4},
        ],
        "status": "ACTIVE",
    }
    return _id(typ, name), outs


def _ovh_reinstall(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    outs = {**inputs, "function": "reinstallServer", "status": "done"}
    return str(int(_id(typ, name)[:8], 16)), outs


def _ovh_dedicated(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    outs = {
        **inputs,
        "ip": ipv4_for(name, "51.91"),
        "serviceName": f"ns{int(_id(typ, name)[:6], 16)}.ip-51-91-0.eu",
        "state": "ok",
    }
    return _id(typ, name), outs


def _host_key_pin(_typ: str, _name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    pinned = {**inputs, "hostKey": host_key_for(inputs["address"])}
    return f"{inputs['host']}@{inputs['address']}", pinned


_RESOURCES: dict[str, Callable[[str, str, dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    SCW_SSH_KEY: _scw_ssh_key,
    SCW_IP: _scw_ip,
    SCW_SERVER: _scw_server,
    SCW_METAL: _scw_metal,
    OVH_SSH_KEY: _ovh_ssh_key,
    OVH_INSTANCE: _ovh_instance,
    OVH_REINSTALL: _ovh_reinstall,
    OVH_DEDICATED: _ovh_dedicated,
    HOST_KEY_PIN: _host_key_pin,
}


def new_resource(typ: str, name: str, inputs: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The id and outputs of an ordering resource (or a host-key pin), or None for another type."""
    answer = _RESOURCES.get(typ)
    return answer(typ, name, inputs) if answer else None


def call(token: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """The answer of a provider data source, or None for another token."""
    if token == SCW_GET_OFFER:
        found = args.get("name") in SCW_METAL_OFFERS
        return {
            "id": _id("offer", str(args.get("name"))) if found else "",
            "offerId": _id("offer", str(args.get("name"))) if found else None,
            "name": args.get("name"),
            "zone": args.get("zone"),
        }
    if token == SCW_GET_OS:
        key = (args.get("name"), args.get("version"))
        found = key in SCW_METAL_OS
        os_id = _id("os", *map(str, key)) if found else None
        return {"id": os_id or "", "osId": os_id, **args}
    if token == OVH_GET_FLAVORS:
        region = args["region"]
        return {
            "id": _id("flavors", region),
            "region": region,
            "serviceName": args["serviceName"],
            "flavors": [
                {"id": _id("flavor", region, f), "name": f, "region": region, "available": True}
                for f in OVH_FLAVORS
            ],
        }
    if token == OVH_GET_IMAGES:
        region = args["region"]
        return {
            "id": _id("images", region),
            "region": region,
            "serviceName": args["serviceName"],
            "images": [
                {"id": _id("image", region, i), "name": i, "region": region, "type": "linux"}
                for i in OVH_IMAGES
            ],
        }
    if token == OVH_GET_SERVER:
        ip, datacenter = OVH_RENTED[args["serviceName"]]
        return {"serviceName": args["serviceName"], "ip": ip, "datacenter": datacenter}
    return None


def ordered_address(host: Any) -> str | None:
    """The address these mocks give an ordered host (a ``HostSpec``), None for other sources."""
    if host.source == "scaleway" and host.scaleway is not None:
        name = f"{host.name}-ip" if host.scaleway.kind == "instance" else f"{host.name}-server"
        return ipv4_for(name, "51.159")
    if host.source == "ovh" and host.ovh is not None:
        if host.ovh.kind == "cloud-instance":
            return ipv4_for(f"{host.name}-server", "57.128")
        if host.ovh.plan is not None:
            return ipv4_for(f"{host.name}-server", "51.91")
        return OVH_RENTED[host.ovh.service_name][0]
    return None


def as_ordered(config: Any) -> Any:
    """``config`` (a ``StackConfig``) with each ordered host at the address its order returns
    here, and each host key as the hosts' steps get it (pinned on first contact where the stack
    pins none)."""
    addresses = {h.name: a for h in config.hosts if (a := ordered_address(h)) is not None}
    resolved = config.with_addresses(addresses)
    hosts = tuple(
        h.model_copy(update={"ssh": h.ssh.model_copy(update={"host_key": host_key_for(h.address)})})
        if h.ordered and h.ssh.host_key is None
        else h
        for h in resolved.hosts
    )
    return resolved.model_copy(update={"hosts": hosts})
