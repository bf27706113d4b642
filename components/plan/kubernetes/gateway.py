"""The gateway: route table, API keys, Deployment, Services, disruption budget, ingress."""

from __future__ import annotations

import json
from typing import Final

from sovereign_gateway.auth import api_key_line
from sovereign_gateway.ports import ADMIN_HTTP_PORT, SCALER_GRPC_PORT
from sovereign_gateway.routes import Metering, ModelRoute, RouteTable, TenantLimit
from sovereign_weights.units import GIB

from components.config.catalog import (
    TRAEFIK_WEB_ENTRY_POINT,
    TRAEFIK_WEBSECURE_ENTRY_POINT,
    PackagedTraefik,
    packaged_traefik,
)
from components.plan import cold_start  # the module: it imports this package's models in turn
from components.plan.cluster import LABEL_PREFIX
from components.plan.kubernetes.objects import (
    Obj,
    metadata,
    required_node_affinity,
    restricted_container,
    restricted_pod,
)
from components.plan.kubernetes.serving import (
    ENDPOINT_REMOVAL_SECONDS,
    drain_deadline_seconds,
    memory_quantity,
    model_replicas_address,
    model_upstream,
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
    MODELS_NAMESPACE,
    ROUTES_FILE,
    SYSTEM_NAMESPACE,
    InferenceStackSpec,
    service_host,
)

GATEWAY_COMMAND: Final = ("sovereign-gateway",)
ROUTES_DIR: Final = "/etc/sovereign-gateway/routes"
KEYS_DIR: Final = "/etc/sovereign-gateway/keys"
# After the drain: the listeners and gRPC streams closing and the process exiting.
GATEWAY_SHUTDOWN_MARGIN_SECONDS: Final = 10
# K3s's bundled Traefik reads overrides of its chart values from this HelmChartConfig.
TRAEFIK_CONFIG: Final = "traefik"
# The Deployment K3s's packaged chart runs Traefik as (its fullname: the release name, traefik).
TRAEFIK_DEPLOYMENT: Final = "traefik"
TRAEFIK_INGRESS_CLASS: Final = "traefik"
# Traefik's Kubernetes Ingress provider reads a router's entry points and TLS from these.
TRAEFIK_ENTRYPOINTS_ANNOTATION: Final = "traefik.ingress.kubernetes.io/router.entrypoints"
TRAEFIK_TLS_ANNOTATION: Final = "traefik.ingress.kubernetes.io/router.tls"
# Traefik's entry-point responding timeouts, as its static configuration names them.
TRAEFIK_TIMEOUTS: Final = ("readTimeout", "writeTimeout", "idleTimeout")
# The edge waits this much longer than the gateway itself may hold and serve one request.
EDGE_TIMEOUT_MARGIN_SECONDS: Final = 60
# The gateway pod's memory limit, and the request bodies it may hold at once inside it: a kept
# byte costs about two (the body and the copy sent on), one body's routing parse briefly costs up
# to ~25 times its size (one at a time: the event loop parses), the rest is the process itself.
GATEWAY_MEMORY_LIMIT_BYTES: Final = GIB
GATEWAY_HELD_BYTES: Final = GATEWAY_MEMORY_LIMIT_BYTES // 4
GATEWAY_LABELS: Final = {COMPONENT_LABEL: "gateway"}
# Mutual TLS on the scaler listener (see ``components.providers.scaler_pki``): the replicas'
# certificate in the gateway's namespace, KEDA's client certificate beside its ScaledObjects.
GATEWAY_SCALER_TLS: Final = "sovereign-gateway-scaler-tls"
KEDA_SCALER_CLIENT_TLS: Final = "sovereign-gateway-scaler-client"
SCALER_TLS_DIR: Final = "/etc/sovereign-gateway/scaler-tls"
# the keys of a kubernetes.io/tls Secret, with the CA beside them
TLS_CA_KEY: Final = "ca.crt"
TLS_CERT_KEY: Final = "tls.crt"
TLS_PRIVATE_KEY: Final = "tls.key"
# A pod-template annotation that carries the scaler CA's fingerprint on the gateway and on KEDA's
# operator: both read their certificates once (the gateway at start; KEDA keeps its first
# connection per scalerAddress for good), so a new CA must restart both. The fingerprint is
# known only once ``ScalerPki`` has issued the set: the plan holds a placeholder that the wiring
# replaces, so a render stays free of certificates.
SCALER_CA_ANNOTATION: Final = f"{LABEL_PREFIX}/scaler-ca-sha256"
SCALER_CA_PLACEHOLDER: Final = "<sha256 of the scaler CA certificate, set at deploy>"
ADMIN_TOKEN_DIR: Final = "/etc/sovereign-gateway/admin-token"  # noqa: S105  (a path)
ADMIN_TOKEN_KEY: Final = "token"  # noqa: S105  (the key in the Secret)


def route_table(spec: InferenceStackSpec) -> RouteTable:
    """The gateway's route table, built with the gateway's own schema."""
    gateway = spec.inference.gateway
    return RouteTable(
        models=[
            ModelRoute(
                name=m.served,
                upstream=model_upstream(m),
                replicas=model_replicas_address(m),
                target_concurrency=m.target_concurrency,
                max_pending_requests=gateway.max_pending_requests,
                cold_start_timeout_seconds=gateway.cold_start_timeout_seconds,
                request_timeout_seconds=gateway.request_timeout_seconds,
                gpus_per_replica=m.gpus_per_replica,
                max_replicas=m.max_replicas,
                expected_cold_start_seconds=cold_start.cold_start_estimate_seconds(spec, m),
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
    """The gateway's key file: only the keys' digests ever reach the cluster."""
    return "".join(
        api_key_line(t.name, t.api_key.get_secret_value()) for t in spec.inference.gateway.tenants
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


def gateway_termination_grace_seconds(spec: InferenceStackSpec) -> int:
    """From the pod's deletion to SIGKILL: the preStop wait for the endpoint's removal (the
    replica still serves meanwhile), the drain, then the exit."""
    return ENDPOINT_REMOVAL_SECONDS + drain_deadline_seconds(spec) + GATEWAY_SHUTDOWN_MARGIN_SECONDS


def scaler_server_names() -> list[str]:
    """The names in the replicas' certificate: the Service KEDA dials, then the peers' name."""
    return [
        service_host(GATEWAY, GATEWAY_NAMESPACE),
        service_host(GATEWAY_PEERS, GATEWAY_NAMESPACE),
    ]


def scaler_ca_annotations() -> dict[str, str]:
    """The pod annotations that restart a reader of the scaler's certificates on a new CA."""
    return {SCALER_CA_ANNOTATION: SCALER_CA_PLACEHOLDER}


def scaler_tls_secrets() -> list[Obj]:
    """The two Secrets of the scaler's mutual TLS, without their data: the wiring fills it from
    the ``ScalerPki`` resource as Pulumi secrets, so no key is ever in the plan or a render."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(name, namespace, "gateway"),
            "type": "kubernetes.io/tls",
        }
        for name, namespace in (
            (GATEWAY_SCALER_TLS, GATEWAY_NAMESPACE),
            (KEDA_SCALER_CLIENT_TLS, MODELS_NAMESPACE),
        )
    ]


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
        # a request held for a cold model at the end gets a 503 to retry
        str(drain_deadline_seconds(spec)),
        "--max-held-bytes",
        str(GATEWAY_HELD_BYTES),
        # only KEDA and the other replicas hold a certificate of the stack's scaler CA
        "--scaler-tls-cert",
        f"{SCALER_TLS_DIR}/{TLS_CERT_KEY}",
        "--scaler-tls-key",
        f"{SCALER_TLS_DIR}/{TLS_PRIVATE_KEY}",
        "--scaler-tls-ca",
        f"{SCALER_TLS_DIR}/{TLS_CA_KEY}",
        "--peer-tls-server-name",
        service_host(GATEWAY_PEERS, GATEWAY_NAMESPACE),
    ]
    if spec.inference.gateway.tenants:
        args += ["--api-keys", f"{KEYS_DIR}/{API_KEYS_FILE}"]
    scraper = spec.inference.gateway.metrics_scraper
    if scraper is not None and scraper.token_secret:
        args += ["--admin-token-file", f"{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_KEY}"]
    return args


def gateway_deployment(spec: InferenceStackSpec) -> Obj:
    gateway = spec.inference.gateway
    volumes: list[Obj] = [{"name": "routes", "configMap": {"name": GATEWAY_ROUTES}}]
    mounts: list[Obj] = [{"name": "routes", "mountPath": ROUTES_DIR, "readOnly": True}]
    if gateway.tenants:
        volumes.append({"name": "api-keys", "secret": {"secretName": GATEWAY_API_KEYS}})
        mounts.append({"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True})
    volumes.append({"name": "scaler-tls", "secret": {"secretName": GATEWAY_SCALER_TLS}})
    mounts.append({"name": "scaler-tls", "mountPath": SCALER_TLS_DIR, "readOnly": True})
    scraper = gateway.metrics_scraper
    if scraper is not None and scraper.token_secret:
        volumes.append(
            {
                "name": "admin-token",
                "secret": {
                    "secretName": scraper.token_secret,
                    "items": [{"key": ADMIN_TOKEN_KEY, "path": ADMIN_TOKEN_KEY}],
                },
            }
        )
        mounts.append({"name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": True})
    pod: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod(),
        "terminationGracePeriodSeconds": gateway_termination_grace_seconds(spec),
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
                # SIGTERM (which stops the listener) only once Traefik and kube-proxy have
                # dropped this endpoint; requests arriving meanwhile are still served
                "lifecycle": {"preStop": {"sleep": {"seconds": ENDPOINT_REMOVAL_SECONDS}}},
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "http"},
                    "periodSeconds": 10,
                    "failureThreshold": 6,
                },
                "resources": {
                    "requests": {"cpu": "250m", "memory": "256Mi"},
                    "limits": {"memory": memory_quantity(GATEWAY_MEMORY_LIMIT_BYTES)},
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
                # no checksum of the route table or the keys: the gateway reloads both in place,
                # so a model added or a key rotated never restarts the entry point; the scaler's
                # certificates are read at start, so a new CA does
                "metadata": {
                    "labels": GATEWAY_LABELS,
                    "annotations": scaler_ca_annotations(),
                },
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


def _packaged_traefik(spec: InferenceStackSpec) -> PackagedTraefik | None:
    """The Traefik chart K3s installs, or None on a cluster whose ingress is the operator's."""
    if not spec.k3s:
        return None
    if spec.k3s_version is None:  # refused by InferenceStackSpec; kept for the type checker
        raise ValueError("k3sVersion: required when k3s is true")
    return packaged_traefik(spec.k3s_version)


def gateway_ingress(spec: InferenceStackSpec) -> Obj:
    """The gateway's Ingress: on ``websecure`` with TLS, or on ``web`` when the stack serves
    plain HTTP on purpose. A cluster that is not K3s is expected to run Traefik with the chart's
    entry-point names."""
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
    meta = metadata(GATEWAY, GATEWAY_NAMESPACE, "gateway")
    chart = _packaged_traefik(spec)
    web = chart.web_entry_point if chart else TRAEFIK_WEB_ENTRY_POINT
    websecure = chart.websecure_entry_point if chart else TRAEFIK_WEBSECURE_ENTRY_POINT
    if gateway.tls_secret:
        tls: Obj = {"secretName": gateway.tls_secret}
        if _is_hostname(gateway.host):
            tls = {"hosts": [gateway.host], **tls}
        ingress_spec["tls"] = [tls]
        # websecure only: on web the router would answer too, and API keys would cross in clear
        meta["annotations"] = {
            TRAEFIK_ENTRYPOINTS_ANNOTATION: websecure,
            TRAEFIK_TLS_ANNOTATION: "true",
        }
    else:
        meta["annotations"] = {TRAEFIK_ENTRYPOINTS_ANNOTATION: web}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": meta,
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


def traefik_arguments(spec: InferenceStackSpec) -> list[str]:
    """The command-line flags K3s's Traefik must run with: both entry points' responding
    timeouts above the longest hold plus request, and, unless the stack serves plain HTTP on
    purpose, every ``web`` request redirected to HTTPS. Empty when the cluster is not K3s (its
    ingress controller is the operator's).

    Flags, not the chart's ``ports.<name>.transport`` values: the chart K3s v1.31 packages
    (27.0.201+up27.0.2) templates those only from chart 28 on and passes ``additionalArguments``
    through verbatim; Traefik v2.11 would otherwise cut every request at its 60 s default
    ``readTimeout``. Verification compares these with the live Traefik Deployment's args.
    """
    chart = _packaged_traefik(spec)
    if chart is None:
        return []
    seconds = f"{edge_timeout_seconds(spec)}s"
    args = [
        f"--entryPoints.{entry_point}.transport.respondingTimeouts.{timeout}={seconds}"
        for entry_point in (chart.web_entry_point, chart.websecure_entry_point)
        for timeout in TRAEFIK_TIMEOUTS
    ]
    if not spec.inference.gateway.plain_http:
        # to the port the Service exposes, as the chart's own ports.web.redirectTo does: the
        # entry point's name would redirect to its container port (8443)
        redirect = f"--entryPoints.{chart.web_entry_point}.http.redirections.entryPoint"
        args += [f"{redirect}.to=:{chart.websecure_exposed_port}", f"{redirect}.scheme=https"]
    return args


def traefik_values(spec: InferenceStackSpec) -> Obj:
    """The packaged chart's values that carry :func:`traefik_arguments` to Traefik."""
    return {"additionalArguments": traefik_arguments(spec)}


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
    scheme = "http" if spec.inference.gateway.plain_http else "https"
    return f"{scheme}://[{host}]/v1" if ":" in host else f"{scheme}://{host}/v1"
