"""What the inference stack is built from, and the names every object of it shares.

:class:`InferenceStackSpec` is the whole argument of ``InferenceStack``: the stack's ``inference``
and ``residency`` sections plus the facts about the cluster's nodes that placement needs. It is
built from a stack file (:meth:`InferenceStackSpec.from_stack`) or by hand for a cluster this
toolkit did not build. Pure: no Pulumi, no I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Final

from pydantic import Field, model_validator

from components.config.catalog import packaged_traefik
from components.config.errors import CrossFieldProblems, Problem
from components.config.models import (
    DEFAULT_CACHE_READ_MIB_PER_SECOND,
    REPLICAS_SERVICE_SUFFIX,
    CacheReadMibPerSecond,
    CacheSpec,
    Country,
    DnsLabel,
    InferenceSpec,
    Model,
    ResidencyPolicy,
    StackConfig,
    inference_residency_problems,
)
from components.plan import cluster
from components.plan.cluster import LABEL_PREFIX

# --- namespaces -----------------------------------------------------------------------------
# The model pods keep the namespace verification has always read (collect_facts.sh lists its pods).
MODELS_NAMESPACE: Final = "sovereign-inference"
GATEWAY_NAMESPACE: Final = "sovereign-gateway"
WEIGHTS_NAMESPACE: Final = "sovereign-weights"
GPU_NAMESPACE: Final = "sovereign-gpu"
KEDA_NAMESPACE: Final = "keda"
# K3s runs its bundled Traefik and CoreDNS here.
SYSTEM_NAMESPACE: Final = "kube-system"

# --- labels ---------------------------------------------------------------------------------
PART_OF: Final = {"app.kubernetes.io/part-of": "sovereign-inference"}
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
MODEL_LABEL: Final = f"{LABEL_PREFIX}/model"
# Node labels, as K3s sets them on each node (components.plan.cluster.node_labels).
GPU_MODEL_LABEL: Final = cluster.GPU_MODEL_LABEL
GPU_COUNT_LABEL: Final = cluster.GPU_COUNT_LABEL
COUNTRY_LABEL: Final = cluster.COUNTRY_LABEL
# Set by the API server on every namespace since Kubernetes 1.22.
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
HOSTNAME_LABEL: Final = "kubernetes.io/hostname"

# --- object names ---------------------------------------------------------------------------
GATEWAY: Final = "sovereign-gateway"
GATEWAY_PEERS: Final = "sovereign-gateway-peers"
GATEWAY_ROUTES: Final = "sovereign-gateway-routes"
GATEWAY_API_KEYS: Final = "sovereign-gateway-api-keys"
WARMER: Final = "sovereign-weights-warmer"
WARMER_MODELS: Final = "sovereign-weights-models"
# Optional Secret with object-store credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) that the
# warmer and each model's init container read when it exists; created out of band by the operator.
OBJECT_STORE_CREDENTIALS: Final = "object-store-credentials"
RUNTIME_CLASS: Final = "nvidia"
GPU_RESOURCE: Final = "nvidia.com/gpu"
KEDA_OPERATOR: Final = "keda-operator"  # the chart's operator.name (app.kubernetes.io/name)

# --- ports ----------------------------------------------------------------------------------
MODEL_PORT: Final = 8000  # vLLM's default; a bring-your-own server listens here too
ROUTES_FILE: Final = "routes.json"
API_KEYS_FILE: Final = "api-keys"
WARMER_MODELS_FILE: Final = "models.json"


class ClusterNode(Model):
    """One node as placement sees it: its GPUs and the country it is in."""

    name: DnsLabel
    gpu_model: str | None = None
    gpu_count: int = Field(default=0, ge=0)
    country: Country


class InferenceStackSpec(Model):
    """Everything ``InferenceStack`` builds from.

    ``nodes`` are facts about the cluster (empty when unknown: then no node is assumed to be a CPU
    node). ``k3s`` says the cluster is K3s, whose bundled RuntimeClass ``nvidia`` and Traefik
    ingress are used instead of creating them; ``k3s_version`` (required then) is its release,
    which picks the Traefik chart K3s packages. ``cluster_cidrs`` are the pod and service ranges,
    which object-store egress never reaches into. ``nvidia_runtime_class_exists`` says a cluster
    built elsewhere already has RuntimeClass ``nvidia`` (a K3s cluster, the GPU Operator's), which
    is then used and not created a second time. ``cache_filesystem_marked`` says every GPU node's
    cache is the filesystem this toolkit's cache step mounted and marked: the weights tool then
    refuses a cache directory without the marker (a bare mount point when the array is missing)
    instead of filling the node's root disk. ``cache_min_read_mib_per_second`` is the read speed
    verification holds every node's cache to (``cache.minReadMibPerSecond``).
    """

    environment: DnsLabel
    inference: InferenceSpec
    residency: ResidencyPolicy
    nodes: tuple[ClusterNode, ...] = ()
    cache_mount_point: str = CacheSpec().mount_point
    k3s: bool = False
    k3s_version: str | None = None
    nvidia_runtime_class_exists: bool = False
    cache_filesystem_marked: bool = False
    # the read speed verification holds every node's cache to: probes and estimates use it
    cache_min_read_mib_per_second: CacheReadMibPerSecond = DEFAULT_CACHE_READ_MIB_PER_SECOND
    cluster_cidrs: tuple[str, ...] = ("10.42.0.0/16", "10.43.0.0/16")

    @model_validator(mode="after")
    def _inside_the_policy(self) -> InferenceStackSpec:
        # the same rules StackConfig applies, for a spec built by hand for an existing cluster
        problems = inference_residency_problems(self.inference, self.residency)
        for i, cidr in enumerate(self.cluster_cidrs):
            try:
                ipaddress.ip_network(cidr)
            except ValueError:
                problems.append(Problem(f"clusterCidrs[{i}]", "expected a CIDR"))
        if self.k3s_version is not None:
            try:
                packaged_traefik(self.k3s_version)
            except ValueError as exc:
                problems.append(Problem("k3sVersion", str(exc)))
        elif self.k3s:
            problems.append(
                Problem("k3sVersion", "required when k3s is true (the release, like v1.31.6+k3s1)")
            )
        if problems:
            raise CrossFieldProblems(problems)
        return self

    @classmethod
    def from_stack(cls, stack: StackConfig) -> InferenceStackSpec:
        """The spec of a stack whose hosts this toolkit set up (K3s when ``k3s.install``)."""
        return cls(
            environment=stack.environment,
            inference=stack.inference,
            residency=stack.residency,
            nodes=tuple(
                ClusterNode(
                    name=h.name, gpu_model=h.gpu.model, gpu_count=h.gpu.count, country=h.country
                )
                for h in stack.hosts
            ),
            cache_mount_point=stack.cache.mount_point,
            cache_min_read_mib_per_second=stack.cache.min_read_mib_per_second,
            k3s=stack.k3s.install,
            k3s_version=stack.k3s.version if stack.k3s.install else None,
            # the cache step marks the filesystem it mounts, and runs on hosts that list drives
            cache_filesystem_marked=all(h.nvme for h in stack.hosts if h.gpu.count),
            cluster_cidrs=(stack.k3s.cluster_cidr, stack.k3s.service_cidr),
        )

    @property
    def has_cpu_nodes(self) -> bool:
        return any(n.gpu_count == 0 for n in self.nodes)


DNS_LABEL_MAX: Final = 63


def replicas_service_name(model_name: str) -> str:
    """The headless Service that lists every ready replica of a model (one DNS record each).

    ``<model>-replicas``; a model name too long for the suffix keeps its head and gains a short
    digest of the whole name, so two long names never share a Service."""
    suffix = REPLICAS_SERVICE_SUFFIX
    name = f"{model_name}{suffix}"
    if len(name) <= DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(model_name.encode()).hexdigest()[:8]
    head = model_name[: DNS_LABEL_MAX - len(suffix) - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}{suffix}"


def service_host(name: str, namespace: str) -> str:
    """The in-cluster DNS name of a Service."""
    return f"{name}.{namespace}.svc.cluster.local"
