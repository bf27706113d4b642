"""Small builders shared by the inference stack's objects: metadata, security contexts, affinity."""

from __future__ import annotations

from typing import Any

from components.plan.kubernetes.spec import (
    COMPONENT_LABEL,
    COUNTRY_LABEL,
    GPU_COUNT_LABEL,
    GPU_RESOURCE,
    PART_OF,
    InferenceStackSpec,
)

Obj = dict[str, Any]

# Pod Security Standards' "restricted" profile asks for exactly this of every container.
_RESTRICTED_CONTAINER: Obj = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# An unprivileged user that exists in distroless and most slim images.
SERVICE_UID = 65532


def metadata(name: str, namespace: str | None, component: str, **labels: str) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {**PART_OF, COMPONENT_LABEL: component, **labels}
    return meta


def restricted_container(uid: int = SERVICE_UID) -> Obj:
    """A container security context that passes the ``restricted`` Pod Security profile."""
    return {**_RESTRICTED_CONTAINER, "runAsUser": uid, "runAsGroup": uid}


def root_writer_container() -> Obj:
    """For containers that write into the root-owned node cache: the restricted context with
    uid 0 instead (still no capabilities, no privilege escalation, a read-only image filesystem
    and the runtime's seccomp profile)."""
    return {**_RESTRICTED_CONTAINER, "runAsNonRoot": False, "runAsUser": 0}


def restricted_pod(uid: int = SERVICE_UID) -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def residency_expression(spec: InferenceStackSpec) -> Obj:
    """Only nodes labelled with a country inside the residency policy."""
    return {
        "key": COUNTRY_LABEL,
        "operator": "In",
        "values": sorted(spec.residency.allowed_countries),
    }


def gpu_node_expression(min_gpus: int = 1) -> Obj:
    """Nodes with at least ``min_gpus`` GPUs, from the node's GPU-count label."""
    return {"key": GPU_COUNT_LABEL, "operator": "Gt", "values": [str(min_gpus - 1)]}


def required_node_affinity(*expressions: Obj) -> Obj:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": list(expressions)}]
            }
        }
    }


# GPU nodes are often tainted so that only GPU work lands there (nvidia.com/gpu:NoSchedule).
GPU_TOLERATIONS: list[Obj] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
