"""``InferenceStack``: the serverless inference platform on a Kubernetes cluster.

Every object is built as plain data in :mod:`components.plan.kubernetes`; this module only wires
each one, unchanged, into a ``pulumi_kubernetes`` resource and orders them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.plan.kubernetes import ChartRelease, InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import (
    SCALER_CA_PLACEHOLDER,
    TLS_CA_KEY,
    TLS_CERT_KEY,
    TLS_PRIVATE_KEY,
    gateway_url,
    route_table,
    scaler_server_names,
)
from components.plan.kubernetes.objects import Obj
from components.plan.kubernetes.spec import MODELS_NAMESPACE
from components.providers.scaler_pki import ScalerPki, ca_fingerprint

ResourceClass = Callable[..., pulumi.CustomResource]

# The kinds the plan builds, with their typed pulumi_kubernetes class; anything else (KEDA's
# ScaledObject, K3s's HelmChartConfig) goes through CustomResource.
_TYPED: dict[tuple[str, str], ResourceClass] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "Service"): k8s.core.v1.Service,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("apps/v1", "DaemonSet"): k8s.apps.v1.DaemonSet,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("networking.k8s.io/v1", "Ingress"): k8s.networking.v1.Ingress,
    ("node.k8s.io/v1", "RuntimeClass"): k8s.node.v1.RuntimeClass,
}
# Top-level fields of an object as the typed classes name their arguments.
_FIELD_ARGS = {
    "metadata": "metadata",
    "spec": "spec",
    "data": "data",
    "stringData": "string_data",
    "type": "type",
    "handler": "handler",
}


def resource_name(stack_name: str, obj: Obj) -> str:
    """A Pulumi name unique per object: kind, namespace and name."""
    meta = obj["metadata"]
    parts = [stack_name, obj["kind"].lower(), meta.get("namespace"), meta["name"]]
    return "-".join(p for p in parts if p)


def kubernetes_resource(name: str, obj: Obj, opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """One plan object as one pulumi_kubernetes resource, field for field."""
    fields = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    if obj["kind"] == "Secret":
        # only digests are in the plan's Secrets, but a Secret's content stays secret anyway
        for key in ("data", "stringData"):
            if key in fields:
                fields[key] = pulumi.Output.secret(fields[key])
    cls = _TYPED.get((obj["apiVersion"], obj["kind"]))
    if cls is None:
        return k8s.apiextensions.CustomResource(
            name, api_version=obj["apiVersion"], kind=obj["kind"], opts=opts, **fields
        )
    unknown = set(fields) - set(_FIELD_ARGS)
    if unknown:
        raise ValueError(f"{name}: no wiring for field(s) {', '.join(sorted(unknown))}")
    return cls(name, opts=opts, **{_FIELD_ARGS[k]: v for k, v in fields.items()})


def helm_release(
    name: str, chart: ChartRelease, opts: pulumi.ResourceOptions
) -> k8s.helm.v3.Release:
    return k8s.helm.v3.Release(
        name,
        name=chart.name,
        chart=chart.chart,
        version=chart.version,
        namespace=chart.namespace,
        repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repository),
        values=chart.values,
        create_namespace=False,
        opts=opts,
    )


class InferenceStack(pulumi.ComponentResource):
    """The OpenAI-compatible, scale-to-zero inference platform on one cluster.

    Resources, in order: namespaces (with Pod Security levels) and NetworkPolicies; RuntimeClass
    ``nvidia`` (unless the cluster is K3s, which ships it); Helm releases of the NVIDIA device
    plugin, the DCGM exporter and KEDA (after the models namespace, where it binds a Role); the
    weights warmer (ConfigMap, DaemonSet); the scaler's mutual TLS (``ScalerPki``: a private CA,
    the replicas' and KEDA's certificates; their two Secrets; KEDA's TriggerAuthentication); the
    gateway (route-table ConfigMap, API-key Secret, Deployment, Services, PodDisruptionBudget,
    Ingress); per model a Deployment (replicas left
    to KEDA, after the warmer), a Service, a headless Service of its ready replicas and a
    ``ScaledObject`` (after KEDA and after the gateway's Deployment and Services, whose scaler
    it names); on K3s the Traefik timeouts (HelmChartConfig).

    Give it a ``provider`` for the cluster (``K3sCluster.provider``) or a ``kubeconfig`` (a
    cluster built elsewhere: a provider is made from it).

    Outputs: ``gateway_url`` (the OpenAI base URL), ``models`` (served names), ``route_table``.

    Example::

        spec = InferenceStackSpec.from_stack(stack)
        stack_on_k3s = InferenceStack("prod-fra", spec, provider=cluster.provider)
        pulumi.export("gatewayUrl", stack_on_k3s.gateway_url)
    """

    def __init__(
        self,
        name: str,
        spec: InferenceStackSpec,
        opts: pulumi.ResourceOptions | None = None,
        *,
        provider: k8s.Provider | None = None,
        kubeconfig: pulumi.Input[str] | None = None,
    ) -> None:
        super().__init__("sovereign:inference_stack:InferenceStack", name, None, opts)
        if (provider is None) == (kubeconfig is None):
            raise ValueError(f"{name}: give exactly one of provider= or kubeconfig=")
        if provider is None:
            provider = k8s.Provider(
                f"{name}-k8s",
                kubeconfig=pulumi.Output.secret(kubeconfig),
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.provider = provider
        plan = inference_plan(spec)
        # children do not inherit a component's depends_on: the first ones carry it
        upstream = _as_list(opts.depends_on if opts else None)

        def child(depends: Sequence[pulumi.Resource], **extra: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(
                parent=self, provider=provider, depends_on=list(depends), **extra
            )

        def wire(
            obj: Obj, depends: Sequence[pulumi.Resource], **extra: Any
        ) -> pulumi.CustomResource:
            return kubernetes_resource(resource_name(name, obj), obj, child(depends, **extra))

        self.namespaces = [wire(o, upstream) for o in plan.namespaces]
        by_namespace = {
            o["metadata"]["name"]: r for o, r in zip(plan.namespaces, self.namespaces, strict=True)
        }

        def home(namespace: str) -> list[pulumi.Resource]:
            # a namespaced object waits for its own namespace (which waits for the cluster)
            return [by_namespace[namespace]] if namespace in by_namespace else upstream

        def placed(obj: Obj, *more: pulumi.Resource, **extra: Any) -> pulumi.CustomResource:
            namespace = obj["metadata"].get("namespace")
            depends = home(namespace) if namespace else [*self.namespaces]
            return wire(obj, [*depends, *more], **extra)

        self.network_policies = [placed(o) for o in plan.network_policies]
        self.runtime_class = placed(plan.runtime_class) if plan.runtime_class else None
        extra = [self.runtime_class] if self.runtime_class else []
        self.gpu_charts = [
            helm_release(f"{name}-{c.name}", c, child([*home(c.namespace), *extra]))
            for c in plan.gpu_charts
        ]
        # the scaler's mutual TLS: certificates issued once into the state, keys only as secrets
        self.scaler_pki = ScalerPki(
            f"{name}-scaler-pki", scaler_server_names(), opts=pulumi.ResourceOptions(parent=self)
        )
        pki = self.scaler_pki
        # the gateway's and KEDA's pods carry the CA's fingerprint, so a new CA restarts both
        ca_sha256 = pki.caCert.apply(ca_fingerprint)
        # the chart binds a Role in the models namespace (watchNamespace): it must exist first
        self.keda = helm_release(
            f"{name}-{plan.keda.name}",
            dataclasses.replace(plan.keda, values=_with_scaler_ca(plan.keda.values, ca_sha256)),
            child([*home(plan.keda.namespace), *home(MODELS_NAMESPACE)]),
        )
        self.warmer = [placed(o) for o in plan.warmer]
        gateway_tls, keda_tls, authentication = plan.scaler_trust
        self.scaler_secrets = [
            placed(
                {**gateway_tls, "stringData": _tls_data(pki.caCert, pki.serverCert, pki.serverKey)}
            ),
            placed({**keda_tls, "stringData": _tls_data(pki.caCert, pki.kedaCert, pki.kedaKey)}),
        ]
        # a custom resource of KEDA's: after its chart (the CRDs) and the Secret it names
        self.scaler_authentication = placed(authentication, self.keda, self.scaler_secrets[1])
        first = [o for o in plan.gateway if o["kind"] in ("ConfigMap", "Secret")]
        rest = [o for o in plan.gateway if o["kind"] not in ("ConfigMap", "Secret")]
        config = [placed(o) for o in first]
        self.gateway = config + [
            placed(_with_scaler_ca(o, ca_sha256), *config, self.scaler_secrets[0]) for o in rest
        ]
        # KEDA dials the gateway's scaler as soon as a ScaledObject exists, and an HPA made while
        # the scaler cannot answer has no metric: the ScaledObjects wait for the gateway to serve
        scaler = [
            r
            for o, r in zip([*first, *rest], self.gateway, strict=True)
            if o["kind"] in ("Deployment", "Service")
        ]
        self.deployments: dict[str, pulumi.CustomResource] = {}
        self.services: dict[str, pulumi.CustomResource] = {}
        self.replicas_services: dict[str, pulumi.CustomResource] = {}
        self.scaled_objects: dict[str, pulumi.CustomResource] = {}
        for model in plan.models:
            deployment = placed(
                model.deployment,
                *self.gpu_charts,
                *self.warmer,
                # KEDA owns the replica count: never set it back
                ignore_changes=["spec.replicas"],
            )
            self.deployments[model.name] = deployment
            self.services[model.name] = placed(model.service)
            self.replicas_services[model.name] = placed(model.replicas_service)
            self.scaled_objects[model.name] = placed(
                model.scaled_object, self.keda, deployment, self.scaler_authentication, *scaler
            )
        self.edge = [wire(o, upstream) for o in plan.edge]
        self.gateway_url: pulumi.Output[str] = pulumi.Output.from_input(gateway_url(spec))
        self.models: pulumi.Output[list[str]] = pulumi.Output.from_input(
            [m.served for m in spec.inference.models]
        )
        self.route_table: pulumi.Output[str] = pulumi.Output.from_input(route_table(spec).to_json())
        self.register_outputs(
            {
                "gateway_url": self.gateway_url,
                "models": self.models,
                "route_table": self.route_table,
            }
        )


def _tls_data(
    ca: pulumi.Input[str], cert: pulumi.Input[str], key: pulumi.Input[str]
) -> dict[str, pulumi.Input[str]]:
    return {TLS_CA_KEY: ca, TLS_CERT_KEY: cert, TLS_PRIVATE_KEY: key}


def _with_scaler_ca(value: Any, ca_sha256: pulumi.Output[str]) -> Any:
    """``value`` with the plan's placeholder for the scaler CA's fingerprint replaced by it."""
    if isinstance(value, dict):
        return {k: _with_scaler_ca(v, ca_sha256) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_scaler_ca(v, ca_sha256) for v in value]
    return ca_sha256 if value == SCALER_CA_PLACEHOLDER else value


def _as_list(value: Any) -> list[pulumi.Resource]:
    if value is None:
        return []
    if isinstance(value, pulumi.Resource):
        return [value]
    return list(value)
