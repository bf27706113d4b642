"""Upstream Helm charts, pinned by version in config, with their values as plain data.

None of the three charts ships a ``values.schema.json`` at the pinned versions (checked in
kedacore/charts ``keda/`` at 2.16.1, NVIDIA/k8s-device-plugin ``deployments/helm/`` at v0.17.1 and
NVIDIA/dcgm-exporter ``deployment/`` at chart 4.1.1); the tests hold the values to the keys of
each chart's own ``values.yaml`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from components.plan.kubernetes.gateway import scaler_ca_annotations
from components.plan.kubernetes.objects import (
    GPU_TOLERATIONS,
    gpu_node_expression,
    required_node_affinity,
)
from components.plan.kubernetes.spec import (
    GPU_NAMESPACE,
    KEDA_NAMESPACE,
    KEDA_OPERATOR,
    MODELS_NAMESPACE,
    RUNTIME_CLASS,
    InferenceStackSpec,
)

KEDA_REPOSITORY: Final = "https://kedacore.github.io/charts"
DEVICE_PLUGIN_REPOSITORY: Final = "https://nvidia.github.io/k8s-device-plugin"
DCGM_EXPORTER_REPOSITORY: Final = "https://nvidia.github.io/dcgm-exporter/helm-charts"
# The device plugin hands a pod its GPUs as a list of volume mounts, which the hosts' container
# runtime is set to accept (components.plan.host_steps.CONTAINER_TOOLKIT_SETTINGS); the default
# ("envvar") would need the runtime to trust NVIDIA_VISIBLE_DEVICES from any container.
DEVICE_LIST_STRATEGY: Final = "volume-mounts"


@dataclass(frozen=True)
class ChartRelease:
    """One Helm release: which chart, from where, at which version, with which values."""

    name: str
    chart: str
    repository: str
    version: str
    namespace: str
    values: dict[str, Any] = field(default_factory=dict)


def gpu_daemonset_placement() -> dict[str, Any]:
    """Chart values that put a per-GPU-node DaemonSet on the GPU nodes, in the NVIDIA runtime.

    The charts' default affinity wants Node Feature Discovery labels; ours say it."""
    return {
        "runtimeClassName": RUNTIME_CLASS,
        "affinity": required_node_affinity(gpu_node_expression()),
        "tolerations": GPU_TOLERATIONS,
    }


def keda_chart(spec: InferenceStackSpec) -> ChartRelease:
    return ChartRelease(
        name="keda",
        chart="keda",
        repository=KEDA_REPOSITORY,
        version=spec.inference.charts.keda,
        namespace=KEDA_NAMESPACE,
        values={
            "crds": {"install": True},
            # KEDA acts only on the models' ScaledObjects
            "watchNamespace": MODELS_NAMESPACE,
            # the NetworkPolicy that admits KEDA to the scaler port selects on this name
            "operator": {"name": KEDA_OPERATOR},
            # KEDA keeps its first connection to the gateway's scaler, with the CA it was made
            # with, until the operator restarts: a new CA restarts it
            "podAnnotations": {"keda": scaler_ca_annotations()},
        },
    )


def device_plugin_chart(spec: InferenceStackSpec) -> ChartRelease:
    return ChartRelease(
        name="nvidia-device-plugin",
        chart="nvidia-device-plugin",
        repository=DEVICE_PLUGIN_REPOSITORY,
        version=spec.inference.charts.nvidia_device_plugin,
        namespace=GPU_NAMESPACE,
        values={
            **gpu_daemonset_placement(),
            "gfd": {"enabled": False},
            "deviceListStrategy": DEVICE_LIST_STRATEGY,
        },
    )


def dcgm_exporter_chart(spec: InferenceStackSpec) -> ChartRelease:
    return ChartRelease(
        name="dcgm-exporter",
        chart="dcgm-exporter",
        repository=DCGM_EXPORTER_REPOSITORY,
        version=spec.inference.charts.dcgm_exporter,
        namespace=GPU_NAMESPACE,
        values={
            **gpu_daemonset_placement(),
            # on by default, it needs the Prometheus operator's CRDs, which a bare cluster lacks
            "serviceMonitor": {"enabled": False},
        },
    )
