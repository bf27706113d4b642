"""Namespaces with their Pod Security levels, and the NetworkPolicies between them.

Pod Security levels: the gateway and KEDA run under ``restricted``. The warmer and the model
servers mount the node's weight cache with ``hostPath``, which both ``baseline`` and
``restricted`` forbid outright, so their namespaces must enforce ``privileged``; they still
audit against ``restricted``, and every container there drops all capabilities, never escalates,
and runs under the runtime's seccomp profile (the model server also as a non-root user). The
device plugin (kubelet socket ``hostPath``) and DCGM exporter (``SYS_ADMIN``) need
``privileged`` too and live alone in their own namespace.

NetworkPolicies: every namespace of ours denies all traffic, then allows exactly: clients to the
gateway's HTTP port; the gateway to the model Services; KEDA's operator to the gateway's scaler
port, and the gateway replicas to each other on it (the scaler sums counts over the replicas);
the configured metrics scraper (``gateway.metricsScraper``) to the gateway's admin port, and no
one else; DNS; the warmer and the models' weight init containers to the allowed object stores.
"""

from __future__ import annotations

import ipaddress

from sovereign_gateway.ports import ADMIN_HTTP_PORT, SCALER_GRPC_PORT

from components.config.residency import endpoint_port
from components.plan.kubernetes.gateway import GATEWAY_LABELS
from components.plan.kubernetes.objects import Obj, metadata
from components.plan.kubernetes.spec import (
    COMPONENT_LABEL,
    GATEWAY_NAMESPACE,
    GPU_NAMESPACE,
    KEDA_NAMESPACE,
    KEDA_OPERATOR,
    MODEL_PORT,
    MODELS_NAMESPACE,
    NAMESPACE_NAME_LABEL,
    SYSTEM_NAMESPACE,
    WEIGHTS_NAMESPACE,
    InferenceStackSpec,
)
from components.plan.kubernetes.warmer import WARMER_LABELS

PSA = "pod-security.kubernetes.io"
POD_SECURITY: dict[str, str] = {
    GATEWAY_NAMESPACE: "restricted",
    KEDA_NAMESPACE: "restricted",
    WEIGHTS_NAMESPACE: "privileged",  # hostPath: the node's weight cache
    MODELS_NAMESPACE: "privileged",  # hostPath: the node's weight cache
    GPU_NAMESPACE: "privileged",  # device plugin socket (hostPath), DCGM (SYS_ADMIN)
}
MODEL_POD_LABELS = {COMPONENT_LABEL: "model-server"}


def namespaces(spec: InferenceStackSpec) -> list[Obj]:
    found = []
    for name, level in POD_SECURITY.items():
        meta = metadata(
            name, None, "namespace", **{"sovereign-inference/environment": spec.environment}
        )
        meta["labels"].update(
            {f"{PSA}/enforce": level, f"{PSA}/audit": "restricted", f"{PSA}/warn": level}
        )
        found.append({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
    return found


def _policy(name: str, namespace: str, spec: Obj) -> Obj:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, namespace, "network-policy"),
        "spec": spec,
    }


def _in_namespace(namespace: str, labels: dict[str, str]) -> Obj:
    return {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
        "podSelector": {"matchLabels": labels},
    }


def _dns(namespace: str) -> Obj:
    return _policy(
        "allow-dns",
        namespace,
        {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [_in_namespace(SYSTEM_NAMESPACE, {"k8s-app": "kube-dns"})],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                }
            ],
        },
    )


def object_store_peers(spec: InferenceStackSpec) -> list[Obj]:
    """Where object-store traffic may go. Policies match addresses, not names: with an egress
    allowlist the addresses are those CIDRs; without one, anything outside the cluster's ranges
    (the hosts' firewall still holds egress to the allowlist)."""
    if spec.residency.egress_allowlist:
        return [
            {"ipBlock": {"cidr": str(ipaddress.ip_network(c, strict=False))}}
            for c in spec.residency.egress_allowlist
        ]
    v4 = [c for c in spec.cluster_cidrs if ipaddress.ip_network(c).version == 4]
    v6 = [c for c in spec.cluster_cidrs if ipaddress.ip_network(c).version == 6]
    return [
        {"ipBlock": {"cidr": "0.0.0.0/0", **({"except": v4} if v4 else {})}},
        {"ipBlock": {"cidr": "::/0", **({"except": v6} if v6 else {})}},
    ]


def object_store_ports(spec: InferenceStackSpec) -> list[Obj]:
    ports = sorted({endpoint_port(e) for e in spec.residency.allowed_object_store_endpoints})
    return [{"protocol": "TCP", "port": p} for p in ports]


def _object_store(namespace: str, labels: dict[str, str], spec: InferenceStackSpec) -> Obj:
    return _policy(
        "allow-object-store",
        namespace,
        {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Egress"],
            "egress": [{"to": object_store_peers(spec), "ports": object_store_ports(spec)}],
        },
    )


def metrics_scraper_policy(spec: InferenceStackSpec) -> Obj | None:
    """The configured scraper's pods, and only they, to the gateway's admin port."""
    scraper = spec.inference.gateway.metrics_scraper
    if scraper is None:
        return None
    return _policy(
        "allow-metrics-scraper",
        GATEWAY_NAMESPACE,
        {
            "podSelector": {"matchLabels": GATEWAY_LABELS},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [_in_namespace(scraper.namespace, dict(scraper.pod_labels))],
                    "ports": [{"protocol": "TCP", "port": ADMIN_HTTP_PORT}],
                }
            ],
        },
    )


def network_policies(spec: InferenceStackSpec) -> list[Obj]:
    deny = [
        _policy(
            "default-deny",
            ns,
            {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        )
        for ns in (GATEWAY_NAMESPACE, MODELS_NAMESPACE, WEIGHTS_NAMESPACE)
    ]
    gateway_port = spec.inference.gateway.port
    allows = [
        _policy(
            "allow-clients",
            GATEWAY_NAMESPACE,
            {
                "podSelector": {"matchLabels": GATEWAY_LABELS},
                "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"protocol": "TCP", "port": gateway_port}]}],
            },
        ),
        _policy(
            "allow-scaler",
            GATEWAY_NAMESPACE,
            {
                "podSelector": {"matchLabels": GATEWAY_LABELS},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            _in_namespace(
                                KEDA_NAMESPACE, {"app.kubernetes.io/name": KEDA_OPERATOR}
                            ),
                            {"podSelector": {"matchLabels": GATEWAY_LABELS}},
                        ],
                        "ports": [{"protocol": "TCP", "port": SCALER_GRPC_PORT}],
                    }
                ],
                "egress": [
                    {
                        "to": [{"podSelector": {"matchLabels": GATEWAY_LABELS}}],
                        "ports": [{"protocol": "TCP", "port": SCALER_GRPC_PORT}],
                    }
                ],
            },
        ),
        _policy(
            "allow-to-models",
            GATEWAY_NAMESPACE,
            {
                "podSelector": {"matchLabels": GATEWAY_LABELS},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [_in_namespace(MODELS_NAMESPACE, MODEL_POD_LABELS)],
                        "ports": [{"protocol": "TCP", "port": MODEL_PORT}],
                    }
                ],
            },
        ),
        _policy(
            "allow-from-gateway",
            MODELS_NAMESPACE,
            {
                "podSelector": {"matchLabels": MODEL_POD_LABELS},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [_in_namespace(GATEWAY_NAMESPACE, GATEWAY_LABELS)],
                        "ports": [{"protocol": "TCP", "port": MODEL_PORT}],
                    }
                ],
            },
        ),
        _object_store(MODELS_NAMESPACE, MODEL_POD_LABELS, spec),
        _object_store(WEIGHTS_NAMESPACE, WARMER_LABELS, spec),
    ]
    scraper = metrics_scraper_policy(spec)
    if scraper is not None:
        allows.append(scraper)
    dns = [_dns(ns) for ns in (GATEWAY_NAMESPACE, MODELS_NAMESPACE, WEIGHTS_NAMESPACE)]
    return deny + allows + dns
