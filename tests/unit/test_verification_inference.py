"""Verification's inference checks: the pure judgement, and reading the cluster through the
kubeconfig output from a real HTTPS server on loopback.

The API lists are shaped as the API server returns them: the plan's objects (what the stack
applied) with the fields the server adds, a running pod made from a model's template, and Node
objects carrying the labels K3s sets from the stack.
"""

from __future__ import annotations

import base64
import copy
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import StackConfig, load_stack_file
from components.plan.cluster import node_labels
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.verification.cluster_api import (
    ApiReader,
    parse_kubeconfig,
    read_cluster_objects,
    verify_inference_cluster,
)
from components.verification.layers import ClusterObjects, inference_cluster_checks

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "k3s-admin-token-for-tests-4b9e1c"


@pytest.fixture(scope="module")
def prod() -> StackConfig:
    return load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")


def api_lists(config: StackConfig) -> dict[str, dict[str, Any]]:
    plan = inference_plan(InferenceStackSpec.from_stack(config))
    objects = plan.objects()

    def listing(kind: str) -> dict[str, Any]:
        items = []
        for obj in objects:
            if obj["kind"] == kind:
                served = copy.deepcopy(obj)
                served["metadata"]["uid"] = "0b7c1d2e-0000-4000-8000-000000000000"
                served["status"] = {}
                items.append(served)
        return {"apiVersion": "v1", "kind": f"{kind}List", "items": items}

    first = plan.models[0].deployment
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{first['metadata']['name']}-7d9f6c5b4-x2k8p",
            "namespace": first["metadata"]["namespace"],
            "labels": first["spec"]["template"]["metadata"]["labels"],
        },
        "spec": {
            **copy.deepcopy(first["spec"]["template"]["spec"]),
            "nodeName": config.hosts[0].name,
        },
        "status": {"phase": "Running"},
    }
    nodes = [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": h.name, "labels": node_labels(config, h)},
        }
        for h in config.hosts
    ]
    return {
        "scaledobjects": listing("ScaledObject"),
        "deployments": listing("Deployment"),
        "daemonsets": listing("DaemonSet"),
        "pods": {"kind": "PodList", "items": [pod]},
        "nodes": {"kind": "NodeList", "items": nodes},
    }


def objects_from(lists: dict[str, dict[str, Any]]) -> ClusterObjects:
    return ClusterObjects(
        scaled_objects=lists["scaledobjects"],
        deployments=lists["deployments"],
        daemon_sets=lists["daemonsets"],
        pods=lists["pods"],
        nodes=lists["nodes"],
    )


def by_check(results: list[Any]) -> dict[str, Any]:
    return {r.check: r for r in results}


def test_what_the_stack_applied_passes(prod: StackConfig) -> None:
    results = inference_cluster_checks(prod, objects_from(api_lists(prod)))
    checks = by_check(results)
    for model in prod.inference.models:
        assert checks[f"scale-to-zero:{model.name}"].status == "pass"
        assert checks[f"telemetry-off:sovereign-inference/{model.name}/server"].status == "pass"
    assert any(c.startswith("image:sovereign-gateway/") for c in checks)
    assert any(c.startswith("placement:") for c in checks)
    assert [r.message() for r in results if r.status != "pass"] == []


def test_each_broken_promise_fails_with_what_was_seen(prod: StackConfig) -> None:
    lists = api_lists(prod)
    lists["scaledobjects"]["items"][0]["spec"]["minReplicaCount"] = 1
    del lists["scaledobjects"]["items"][1]
    model_deployment = lists["deployments"]["items"][0]
    server = model_deployment["spec"]["template"]["spec"]["containers"][0]
    server["env"] = [e for e in server["env"] if e["name"] != "DO_NOT_TRACK"]
    server["image"] = "docker.io/vllm/vllm-openai:latest"
    lists["nodes"]["items"][0]["metadata"]["labels"]["sovereign-inference/country"] = "US"
    checks = by_check(inference_cluster_checks(prod, objects_from(lists)))
    first, second = prod.inference.models[0], prod.inference.models[1]
    assert checks[f"scale-to-zero:{first.name}"].status == "fail"
    assert "minReplicaCount 1" in checks[f"scale-to-zero:{first.name}"].observed
    assert checks[f"scale-to-zero:{second.name}"].observed == "no ScaledObject"
    telemetry = checks[f"telemetry-off:sovereign-inference/{first.name}/server"]
    assert telemetry.status == "fail"
    assert telemetry.observed == "missing DO_NOT_TRACK"
    image = checks[f"image:sovereign-inference/{first.name}/server"]
    assert image.status == "fail"
    assert image.observed == "docker.io/vllm/vllm-openai:latest"
    (placement,) = [r for c, r in checks.items() if c.startswith("placement:")]
    assert placement.status == "fail"
    assert "(US)" in placement.observed


def test_scaled_to_zero_means_no_placement_to_judge(prod: StackConfig) -> None:
    lists = api_lists(prod)
    lists["pods"]["items"] = []
    checks = by_check(inference_cluster_checks(prod, objects_from(lists)))
    assert not [c for c in checks if c.startswith("placement:")]
    assert all(r.status == "pass" for r in checks.values())


# --- reading through the kubeconfig ---------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "server.crt", tmp / "server.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=k3s", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


class FakeApiServer:
    """An HTTPS server on loopback answering the API paths with prepared lists."""

    def __init__(self, tmp: Path, lists: dict[str, dict[str, Any]]) -> None:
        self.cert, key = _self_signed(tmp)
        self.requests: list[tuple[str, str]] = []
        answers = {
            "/apis/keda.sh/v1alpha1/namespaces/sovereign-inference/scaledobjects": lists[
                "scaledobjects"
            ],
            "/api/v1/nodes": lists["nodes"],
        }
        for ns in ("sovereign-inference", "sovereign-gateway", "sovereign-weights"):
            for kind, prefix in (
                ("deployments", "/apis/apps/v1"),
                ("daemonsets", "/apis/apps/v1"),
                ("pods", "/api/v1"),
            ):
                items = [o for o in lists[kind]["items"] if o["metadata"]["namespace"] == ns]
                answers[f"{prefix}/namespaces/{ns}/{kind}"] = {"items": items}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append((self.command, self.path))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = answers.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body or {"kind": "Status"}).encode())

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, token: str = TOKEN) -> str:
        port = self.server.server_address[1]
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "default",
                        "cluster": {
                            "server": f"https://127.0.0.1:{port}",
                            "certificate-authority-data": base64.b64encode(
                                self.cert.read_bytes()
                            ).decode(),
                        },
                    }
                ],
                "users": [{"name": "default", "user": {"token": token}}],
                "contexts": [
                    {"name": "default", "context": {"cluster": "default", "user": "default"}}
                ],
                "current-context": "default",
            }
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api_server(tmp_path: Path, prod: StackConfig) -> Iterator[FakeApiServer]:
    server = FakeApiServer(tmp_path, api_lists(prod))
    try:
        yield server
    finally:
        server.close()


def test_reads_the_objects_with_gets_only_and_judges_them(
    api_server: FakeApiServer, prod: StackConfig
) -> None:
    objects = read_cluster_objects(ApiReader(parse_kubeconfig(api_server.kubeconfig())))
    assert len(objects.scaled_objects["items"]) == len(prod.inference.models)
    assert {m for m, _ in api_server.requests} == {"GET"}
    results = verify_inference_cluster(prod, api_server.kubeconfig())
    assert results
    assert all(r.status == "pass" for r in results)


def test_a_refused_token_fails_the_check_without_quoting_it(
    api_server: FakeApiServer, prod: StackConfig
) -> None:
    (result,) = verify_inference_cluster(prod, api_server.kubeconfig(token="wrong-token-123456"))
    assert (result.check, result.status) == ("cluster-api", "fail")
    assert "HTTP 401" in result.observed
    assert "wrong-token" not in result.observed
    (missing,) = verify_inference_cluster(prod, None)
    assert missing.status == "fail"
    assert "kubeconfig" in missing.observed


def test_the_server_certificate_is_checked(api_server: FakeApiServer, prod: StackConfig) -> None:
    text = yaml.safe_load(api_server.kubeconfig())
    del text["clusters"][0]["cluster"]["certificate-authority-data"]
    (result,) = verify_inference_cluster(prod, yaml.safe_dump(text))
    assert result.status == "fail"
    assert "CERTIFICATE_VERIFY_FAILED" in result.observed or "SSL" in result.observed


def test_verify_stack_judges_the_cluster_through_the_kubeconfig_output(
    api_server: FakeApiServer, prod: StackConfig, tmp_path: Path
) -> None:
    from components.verification.runner import verify_stack

    judged = verify_stack(prod, tmp_path, hosts=[], kubeconfig=api_server.kubeconfig())
    assert judged.results
    assert all(r.layer == "inference" and r.status == "pass" for r in judged.results)
    unjudged = verify_stack(prod, tmp_path, hosts=[], kubeconfig=None)
    assert [(r.check, r.status) for r in unjudged.results] == [("cluster-api", "fail")]
    hosts_only = verify_stack(prod, tmp_path, hosts=[], layers=("host",), kubeconfig=None)
    assert hosts_only.results == []
