"""Cluster-level plan data: which server starts the cluster, node labels, the API's address."""

from __future__ import annotations

import ipaddress

from components.config.models import HostSpec, StackConfig, host_address

LABEL_PREFIX = "sovereign-inference"
# Node labels the inference plan places pods by (components.plan.kubernetes.spec re-exports them).
COUNTRY_LABEL = f"{LABEL_PREFIX}/country"
GPU_COUNT_LABEL = f"{LABEL_PREFIX}/gpu-count"
GPU_MODEL_LABEL = f"{LABEL_PREFIX}/gpu-model"


def first_server(config: StackConfig) -> HostSpec:
    """The K3s server that starts the cluster (``cluster-init``): the first host with role
    ``server``, in the stack file's order. Every other node joins through it, its K3s step runs
    before theirs, the kubeconfig is read from it, and its address is the API endpoint unless
    ``k3s.apiEndpoint`` names another. The config refuses a stack without a server."""
    return config.servers[0]


def node_region(host: HostSpec) -> str:
    """The host's region, or the site part of its datacenter name (``fsn1-dc14`` -> ``fsn1``)."""
    return host.region or host.datacenter.lower().split("-")[0]


def node_labels(config: StackConfig, host: HostSpec) -> dict[str, str]:
    """Labels K3s sets on the node: topology from the datacenter, residency facts, then extras."""
    labels = {
        "topology.kubernetes.io/region": node_region(host),
        "topology.kubernetes.io/zone": host.datacenter.lower(),
        COUNTRY_LABEL: host.country,
        f"{LABEL_PREFIX}/provider": host.provider.lower(),
        f"{LABEL_PREFIX}/environment": config.environment,
        GPU_COUNT_LABEL: str(host.gpu.count),
    }
    if host.gpu.model:
        labels[GPU_MODEL_LABEL] = host.gpu.model
    labels.update(config.k3s.labels)
    labels.update(host.labels)
    return labels


K3S_API_PORT = 6443


def api_url(address: str) -> str:
    """The K3s API server's URL at ``address`` (a host name or an IP; IPv6 in brackets)."""
    try:
        ipv6 = ipaddress.ip_address(address).version == 6
    except ValueError:
        ipv6 = False  # a host name
    return f"https://[{address}]:{K3S_API_PORT}" if ipv6 else f"https://{address}:{K3S_API_PORT}"


def api_endpoint(config: StackConfig) -> str:
    """The host name or IP clients outside the cluster use for the API server: ``k3s.apiEndpoint``,
    else the first server's address. Not a ``tlsSans`` entry: those name the gateway too, which
    may resolve to an agent that serves no API."""
    return config.k3s.api_endpoint or host_address(first_server(config))


def api_server_url(config: StackConfig) -> str:
    """Where clients outside the cluster reach the API server (see :func:`api_endpoint`)."""
    return api_url(api_endpoint(config))
