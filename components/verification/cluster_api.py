"""Read the deployed inference objects through the stack's kubeconfig output (read-only).

Only GET requests, to the API server named in the kubeconfig's current context, authenticated
with its client certificate or bearer token and checked against its CA. The judgement is
:func:`components.verification.layers.cluster.inference_cluster_checks` (pure).
"""

from __future__ import annotations

import base64
import json
import ssl
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config.models import StackConfig
from components.plan.kubernetes.spec import (
    GATEWAY_NAMESPACE,
    MODELS_NAMESPACE,
    SYSTEM_NAMESPACE,
    WEIGHTS_NAMESPACE,
)
from components.verification.layers.cluster import (
    ClusterObjects,
    cluster_not_judged,
    inference_cluster_checks,
)
from components.verification.results import Finding

API_TIMEOUT_SECONDS = 20


class ClusterUnreachable(Exception):
    """The kubeconfig is unusable or the API server did not answer (no credential is quoted)."""


@dataclass(frozen=True)
class ApiAccess:
    """Where the API server is and how to authenticate, from one kubeconfig context."""

    server: str
    ca_pem: bytes | None
    client_cert_pem: bytes | None
    client_key_pem: bytes | None
    token: str | None


def _data(entry: dict[str, Any], key: str) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        return Path(entry[key]).read_bytes()
    return None


def parse_kubeconfig(text: str) -> ApiAccess:
    """The current context's server and credentials (pure apart from referenced files)."""
    try:
        config = yaml.safe_load(text)
        context_name = config["current-context"]
        context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        return ApiAccess(
            server=str(cluster["server"]).rstrip("/"),
            ca_pem=_data(cluster, "certificate-authority"),
            client_cert_pem=_data(user, "client-certificate"),
            client_key_pem=_data(user, "client-key"),
            token=user.get("token"),
        )
    except (yaml.YAMLError, KeyError, TypeError, StopIteration, OSError, ValueError) as exc:
        raise ClusterUnreachable(f"kubeconfig unusable ({type(exc).__name__})") from None


class ApiReader:
    """GETs JSON from the API server; one TLS context for all requests."""

    def __init__(self, access: ApiAccess) -> None:
        self._access = access
        context = ssl.create_default_context(
            cadata=access.ca_pem.decode() if access.ca_pem else None
        )
        if access.client_cert_pem and access.client_key_pem:
            # ssl loads a client key only from a file: a private directory, gone afterwards
            with tempfile.TemporaryDirectory() as private:
                cert, key = Path(private) / "cert.pem", Path(private) / "key.pem"
                cert.write_bytes(access.client_cert_pem)
                key.touch(mode=0o600)
                key.write_bytes(access.client_key_pem)
                context.load_cert_chain(cert, key)
        self._context = context

    def get(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self._access.server + path, method="GET")  # noqa: S310
        request.add_header("Accept", "application/json")
        if self._access.token:
            request.add_header("Authorization", f"Bearer {self._access.token}")
        try:
            with urllib.request.urlopen(  # noqa: S310 - https to the kubeconfig's server only
                request, context=self._context, timeout=API_TIMEOUT_SECONDS
            ) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {"items": []}  # e.g. KEDA's CRD not installed: nothing of that kind
            raise ClusterUnreachable(f"GET {path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ClusterUnreachable(f"GET {path}: {type(exc).__name__}: {exc}") from None


def read_cluster_objects(reader: ApiReader) -> ClusterObjects:
    """Everything the inference checks judge, in a handful of list requests (kube-system's
    Deployments for K3s's packaged Traefik: what it runs with can only be seen there)."""

    def in_ours(kind_path: str) -> dict[str, Any]:
        items: list[Any] = []
        for namespace in (MODELS_NAMESPACE, GATEWAY_NAMESPACE, WEIGHTS_NAMESPACE):
            items += reader.get(kind_path.format(ns=namespace)).get("items", [])
        return {"items": items}

    return ClusterObjects(
        scaled_objects=reader.get(
            f"/apis/keda.sh/v1alpha1/namespaces/{MODELS_NAMESPACE}/scaledobjects"
        ),
        deployments=in_ours("/apis/apps/v1/namespaces/{ns}/deployments"),
        daemon_sets=in_ours("/apis/apps/v1/namespaces/{ns}/daemonsets"),
        pods=in_ours("/api/v1/namespaces/{ns}/pods"),
        nodes=reader.get("/api/v1/nodes"),
        system_deployments=reader.get(f"/apis/apps/v1/namespaces/{SYSTEM_NAMESPACE}/deployments"),
    )


def verify_inference_cluster(config: StackConfig, kubeconfig: str | None) -> list[Finding]:
    """The cluster-wide inference checks, from the stack's ``kubeconfig`` output."""
    if not config.inference.models:
        return []
    if not kubeconfig:
        return cluster_not_judged(
            config,
            "no kubeconfig in the stack outputs",
            "pulumi stack output --json --show-secrets (the kubeconfig output)",
        )
    try:
        objects = read_cluster_objects(ApiReader(parse_kubeconfig(kubeconfig)))
    except ClusterUnreachable as exc:
        return cluster_not_judged(config, str(exc), "the API answers")
    return inference_cluster_checks(config, objects)
