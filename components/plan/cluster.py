"""Cluster-level plan data: node labels and the Kubernetes objects a rollout applies, as dicts."""

from __future__ import annotations

from typing import Any

from components.config.models import HostSpec, StackConfig

LABEL_PREFIX = "sovereign-inference"
NAMESPACE = "sovereign-inference"


def node_region(host: HostSpec) -> str:
    """The host's region, or the site part of its datacenter name (``fsn1-dc14`` -> ``fsn1``)."""
    return host.region or host.datacenter.lower().split("-")[0]


def node_labels(config: StackConfig, host: HostSpec) -> dict[str, str]:
    """Labels K3s sets on the node: topology from the datacenter, residency facts, then extras."""
    labels = {
        "topology.kubernetes.io/region": node_region(host),
        "topology.kubernetes.io/zone": host.datacenter.lower(),
        f"{LABEL_PREFIX}/country": host.country,
        f"{LABEL_PREFIX}/provider": host.provider.lower(),
        f"{LABEL_PREFIX}/environment": config.environment,
        f"{LABEL_PREFIX}/gpu-count": str(host.gpu.count),
    }
    if host.gpu.model:
        labels[f"{LABEL_PREFIX}/gpu-model"] = host.gpu.model
    labels.update(config.k3s.labels)
    labels.update(host.labels)
    return labels


def kubernetes_objects(config: StackConfig) -> list[dict[str, Any]]:
    """Every Kubernetes object of the stack, in apply order."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NAMESPACE,
                "labels": {
                    f"{LABEL_PREFIX}/environment": config.environment,
                    "pod-security.kubernetes.io/enforce": "baseline",
                },
            },
        },
    ]
