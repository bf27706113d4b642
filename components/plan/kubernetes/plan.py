"""The whole inference stack as data, grouped in the order it must be applied."""

from __future__ import annotations

from dataclasses import dataclass, field

from components.plan.kubernetes.charts import (
    ChartRelease,
    dcgm_exporter_chart,
    device_plugin_chart,
    keda_chart,
)
from components.plan.kubernetes.gateway import (
    KEDA_SCALER_CLIENT_TLS,
    TLS_CA_KEY,
    TLS_CERT_KEY,
    TLS_PRIVATE_KEY,
    api_keys_secret,
    gateway_deployment,
    gateway_disruption_budget,
    gateway_ingress,
    gateway_services,
    routes_config_map,
    scaler_tls_secrets,
    traefik_config,
)
from components.plan.kubernetes.objects import Obj
from components.plan.kubernetes.security import namespaces, network_policies
from components.plan.kubernetes.serving import (
    model_deployment,
    model_replicas_service,
    model_service,
    scaled_object,
    scaler_trigger_authentication,
)
from components.plan.kubernetes.spec import RUNTIME_CLASS, InferenceStackSpec
from components.plan.kubernetes.warmer import warmer_config_map, warmer_daemon_set


@dataclass(frozen=True)
class ModelObjects:
    """One model's Deployment, its Services (one address for requests, a headless one listing
    each ready replica for probes and metering) and its ScaledObject."""

    name: str
    deployment: Obj
    service: Obj
    replicas_service: Obj
    scaled_object: Obj


@dataclass(frozen=True)
class InferencePlan:
    """Apply order: namespaces and policies; GPU plumbing and KEDA (charts); the warmer; the
    models (a ScaledObject only once KEDA's CRDs exist); the gateway; the edge."""

    namespaces: list[Obj]
    network_policies: list[Obj]
    runtime_class: Obj | None
    gpu_charts: list[ChartRelease]
    keda: ChartRelease
    warmer: list[Obj]
    models: list[ModelObjects]
    gateway: list[Obj]
    edge: list[Obj] = field(default_factory=list)
    # the scaler's mutual TLS: its two Secrets (data filled in by the wiring from ``ScalerPki``,
    # never in the plan) and KEDA's TriggerAuthentication
    scaler_trust: list[Obj] = field(default_factory=list)

    @property
    def charts(self) -> list[ChartRelease]:
        return [*self.gpu_charts, self.keda]

    def objects(self) -> list[Obj]:
        """Every plain object (charts aside), in apply order."""
        found = [*self.namespaces, *self.network_policies]
        if self.runtime_class is not None:
            found.append(self.runtime_class)
        found += self.warmer
        found += self.scaler_trust
        for model in self.models:
            found += [model.deployment, model.service, model.replicas_service, model.scaled_object]
        return found + self.gateway + self.edge


def runtime_class() -> Obj:
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "metadata": {"name": RUNTIME_CLASS},
        "handler": RUNTIME_CLASS,
    }


def inference_plan(spec: InferenceStackSpec) -> InferencePlan:
    warmer: list[Obj] = []
    # prefetched or not, every model's image is pre-pulled by the warmer
    if spec.inference.models:
        warmer = [warmer_config_map(spec), warmer_daemon_set(spec)]
    secret = api_keys_secret(spec)
    gateway = [routes_config_map(spec)]
    if secret is not None:
        gateway.append(secret)
    gateway += [
        gateway_deployment(spec),
        *gateway_services(),
        gateway_disruption_budget(),
        gateway_ingress(spec),
    ]
    return InferencePlan(
        namespaces=namespaces(spec),
        network_policies=network_policies(spec),
        # K3s ships RuntimeClass nvidia itself (its bundled runtimes.yaml manifest)
        runtime_class=None if spec.k3s or spec.nvidia_runtime_class_exists else runtime_class(),
        gpu_charts=[device_plugin_chart(spec), dcgm_exporter_chart(spec)],
        keda=keda_chart(spec),
        warmer=warmer,
        models=[
            ModelObjects(
                m.name,
                model_deployment(spec, m),
                model_service(m),
                model_replicas_service(m),
                scaled_object(spec, m),
            )
            for m in spec.inference.models
        ],
        gateway=gateway,
        edge=[traefik_config(spec)] if spec.k3s else [],
        scaler_trust=[
            *scaler_tls_secrets(),
            scaler_trigger_authentication(
                KEDA_SCALER_CLIENT_TLS, (TLS_CA_KEY, TLS_CERT_KEY, TLS_PRIVATE_KEY)
            ),
        ],
    )
