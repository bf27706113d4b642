"""The gateway: route table, API keys, Deployment, Services, disruption budget, ingress."""

from __future__ import annotations

import hashlib
import json
from typing import Final

from sovereign_gateway.ports import ADMIN_HTTP_PORT, SCALER_GRPC_PORT
from sovereign_gateway.routes import Metering, ModelRoute, RouteTable, TenantLimit

from components.plan.kubernetes.models import model_upstream
from components.plan.kubernetes.objects import (
    Obj,
    metadata,
    required_node_affinity,
    restricted_container,
    restricted_pod,
)
from components.plan.kubernetes.spec import (
    API_KEYS_FILE,
    COMPONENT_LABEL,
    GATEWAY,
    GATEWAY_API_KEYS,
    GATEWAY_NAMESPACE,
    GATEWAY_PEERS,
    GATEWAY_ROUTES,
    GPU_COUNT_LABEL,
    HOSTNAME_LABEL,
    ROUTES_FILE,
    SYSTEM_NAMESPACE,
    InferenceStackSpec,
    service_host,
)

GATEWAY_COMMAND: Final = ("sovereign-gateway",)
ROUTES_DIR: Final = "/etc/sovereign-gateway/routes"
KEYS_DIR: Final = "/etc/sovereign-gateway/keys"
DRAIN_SECONDS: Final = 30
# K3s's bundled Traefik reads overrides of its chart values from this HelmChartConfig.
TRAEFIK_CONFIG: Final = "traefik"
TRAEFIK_INGRESS_CLASS: Final = "traefik"
# The edge waits this much longer than the gateway itself may hold and serve one request.
EDGE_TIMEOUT_MARGIN_SECONDS: Final = 60
GATEWAY_LABELS: Final = {COMPONENT_LABEL: "gateway"}


def route_table(spec: InferenceStackSpec) -> RouteTable:
    """The gateway's route table, built with the gateway's own schema."""
    gateway = spec.inference.gateway
    return RouteTable(
        models=[
            ModelRoute(
                name=m.served,
                upstream=model_upstream(m),
                target_concurrency=m.target_concurrency,
                max_pending_requests=gateway.max_pending_requests,
                cold_start_timeout_seconds=gateway.cold_start_timeout_seconds,
                request_timeout_seconds=gateway.request_timeout_seconds,
                gpus_per_replica=m.gpus_per_replica,
            )
            for m in spec.inference.models
        ],
        tenants=[
            TenantLimit(name=t.name, max_concurrent_requests=t.max_concurrent_requests)
            for t in gateway.tenants
        ],
        metering=Metering(
            price_per_gpu_hour=spec.inference.metering.price_per_gpu_hour,
            currency=spec.inference.metering.currency,
        ),
    )


def routes_config_map(spec: InferenceStackSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(GATEWAY_ROUTES, GATEWAY_NAMESPACE, "gateway"),
        "data": {ROUTES_FILE: route_table(spec).to_json()},
    }


def api_keys_text(spec: InferenceStackSpec) -> str:
    """``tenant:sha256hex`` lines: only the keys' digests ever reach the cluster."""
    return "".join(
        f"{t.name}:{hashlib.sha256(t.api_key.get_secret_value().encode()).hexdigest()}\n"
        for t in spec.inference.gateway.tenants
    )


def api_keys_secret(spec: InferenceStackSpec) -> Obj | None:
    if not spec.inference.gateway.tenants:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(GATEWAY_API_KEYS, GATEWAY_NAMESPACE, "gateway"),
        "type": "Opaque",
        "stringData": {API_KEYS_FILE: api_keys_text(spec)},
    }


def gateway_args(spec: InferenceStackSpec) -> list[str]:
    args = [
        "--routes",
        f"{ROUTES_DIR}/{ROUTES_FILE}",
        "--listen",
        f":{spec.inference.gateway.port}",
        "--scaler-listen",
        f":{SCALER_GRPC_PORT}",
        "--admin-listen",
        f":{ADMIN_HTTP_PORT}",
        # every replica sums its peers' counts, so KEDA sees the same numbers from any of them
        "--peers-dns",
        f"{service_host(GATEWAY_PEERS, GATEWAY_NAMESPACE)}:{SCALER_GRPC_PORT}",
        "--drain-seconds",
        str(DRAIN_SECONDS),
    ]
    if spec.inference.gateway.tenants:
        args += ["--api-keys", f"{KEYS_DIR}/{API_KEYS_FILE}"]
    return args


def gateway_deployment(spec: InferenceStackSpec) -> Obj:
    gateway = spec.inference.gateway
    volumes: list[Obj] = [{"name": "routes", "configMap": {"name": GATEWAY_ROUTES}}]
    mounts: list[Obj] = [{"name": "routes", "mountPath": ROUTES_DIR, "readOnly": True}]
    if gateway.tenants:
        volumes.append({"name": "api-keys", "secret": {"secretName": GATEWAY_API_KEYS}})
        mounts.append({"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod(),
        "terminationGracePeriodSeconds": DRAIN_SECONDS + 15,
        "affinity": {
            "podAntiAffinity": {
                # preferred: a one-node cluster still runs every replica
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": {"matchLabels": GATEWAY_LABELS},
                            "topologyKey": HOSTNAME_LABEL,
                        },
                    }
                ]
            }
        },
        "containers": [
            {
                "name": "gateway",
                "image": spec.inference.gateway_image,
                "command": list(GATEWAY_COMMAND),
                "args": gateway_args(spec),
                "ports": [
                    {"name": "http", "containerPort": gateway.port, "protocol": "TCP"},
                    {"name": "scaler", "containerPort": SCALER_GRPC_PORT, "protocol": "TCP"},
                    {"name": "admin", "containerPort": ADMIN_HTTP_PORT, "protocol": "TCP"},
                ],
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "http"},
                    "periodSeconds": 5,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 10,
                    "failureThreshold": 6,
                },
                "resources": {
                    "requests": {"cpu": "250m", "memory": "256Mi"},
                    "limits": {"memory": "1Gi"},
                },
                "securityContext": restricted_container(),
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
    }
    if spec.has_cpu_nodes:
        # GPUs are for models: the gateway stays on the CPU nodes when there are any
        pod["affinity"].update(
            required_node_affinity({"key": GPU_COUNT_LABEL, "operator": "In", "values": ["0"]})
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(GATEWAY, GATEWAY_NAMESPACE, "gateway"),
        "spec": {
            "replicas": gateway.replicas,
            "selector": {"matchLabels": GATEWAY_LABELS},
            "template": {
                # no checksum annotation: the gateway reloads the mounted route table and key
                # file in place, so a model added or a key rotated never restarts the entry point
                "metadata": {"labels": GATEWAY_LABELS},
                "spec": pod,
            },
        },
    }


def gateway_services() -> list[Obj]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(GATEWAY, GATEWAY_NAMESPACE, "gateway"),
            "spec": {
                "type": "ClusterIP",
                "selector": GATEWAY_LABELS,
                "ports": [
                    {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                    {
                        "name": "scaler",
                        "port": SCALER_GRPC_PORT,
                        "targetPort": "scaler",
                        "protocol": "TCP",
                        "appProtocol": "grpc",
                    },
                ],
            },
        },
        {
            # one DNS record per replica, ready or not, for the replicas to find each other
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(GATEWAY_PEERS, GATEWAY_NAMESPACE, "gateway"),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": GATEWAY_LABELS,
                "ports": [
                    {
                        "name": "scaler",
                        "port": SCALER_GRPC_PORT,
                        "targetPort": "scaler",
                        "protocol": "TCP",
                        "appProtocol": "grpc",
                    }
                ],
            },
        },
    ]


def gateway_disruption_budget() -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(GATEWAY, GATEWAY_NAMESPACE, "gateway"),
        # one replica at a time: a drain never takes the whole entry point away
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": GATEWAY_LABELS}},
    }


def _is_hostname(host: str) -> bool:
    return any(c.isalpha() for c in host) and ":" not in host


def gateway_ingress(spec: InferenceStackSpec) -> Obj:
    gateway = spec.inference.gateway
    rule: Obj = {
        "http": {
            "paths": [
                {
                    "path": "/",
                    "pathType": "Prefix",
                    "backend": {"service": {"name": GATEWAY, "port": {"name": "http"}}},
                }
            ]
        }
    }
    if _is_hostname(gateway.host):
        rule = {"host": gateway.host, **rule}
    ingress_spec: Obj = {"ingressClassName": TRAEFIK_INGRESS_CLASS, "rules": [rule]}
    if gateway.tls_secret:
        tls: Obj = {"secretName": gateway.tls_secret}
        if _is_hostname(gateway.host):
            tls = {"hosts": [gateway.host], **tls}
        ingress_spec["tls"] = [tls]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata(GATEWAY, GATEWAY_NAMESPACE, "gateway"),
        "spec": ingress_spec,
    }


def edge_timeout_seconds(spec: InferenceStackSpec) -> int:
    """How long the edge keeps a request open: above the cold-start hold plus the request."""
    gateway = spec.inference.gateway
    return (
        gateway.cold_start_timeout_seconds
        + gateway.request_timeout_seconds
        + EDGE_TIMEOUT_MARGIN_SECONDS
    )


def traefik_values(spec: InferenceStackSpec) -> Obj:
    seconds = f"{edge_timeout_seconds(spec)}s"

    def transport() -> Obj:
        timeouts = {"readTimeout": seconds, "writeTimeout": seconds, "idleTimeout": seconds}
        return {"transport": {"respondingTimeouts": timeouts}}

    return {"ports": {"web": transport(), "websecure": transport()}}


def traefik_config(spec: InferenceStackSpec) -> Obj:
    """K3s's Traefik, told not to cut a request the gateway is still holding or streaming."""
    return {
        "apiVersion": "helm.cattle.io/v1",
        "kind": "HelmChartConfig",
        "metadata": metadata(TRAEFIK_CONFIG, SYSTEM_NAMESPACE, "ingress"),
        # JSON is YAML: the chart values read the same to the helm controller, and a reviewer
        # grepping the render for "secure:" (a stack secret) is not sent to Traefik's websecure
        "spec": {"valuesContent": json.dumps(traefik_values(spec), indent=2, sort_keys=True)},
    }


def gateway_url(spec: InferenceStackSpec) -> str:
    """The OpenAI base URL clients use."""
    host = spec.inference.gateway.host
    scheme = "https" if spec.inference.gateway.tls_secret else "http"
    return f"{scheme}://[{host}]/v1" if ":" in host else f"{scheme}://{host}/v1"
