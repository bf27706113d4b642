"""Verification's inference checks: the pure judgement, and reading the cluster through the
kubeconfig output from a real HTTPS server on loopback.

The API lists are shaped as the API server returns them: the plan's objects (what the stack
applied) with the fields the server adds, a running pod made from a model's template with the QoS
class the API server gives it, Node objects carrying the labels K3s sets from the stack, and K3s's
Traefik Deployment as its packaged chart (27.0.2, tests/data/traefik-chart-27.0.2) renders it.
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
from components.plan.kubernetes.gateway import edge_timeout_seconds, traefik_values
from components.verification.cluster_api import (
    ApiReader,
    parse_kubeconfig,
    read_cluster_objects,
    verify_inference_cluster,
)
from components.verification.layers import ClusterObjects, inference_cluster_checks

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "k3s-admin-token-for-tests-4b9e1c"
TRAEFIK_CHART = ROOT / "tests" / "data" / "traefik-chart-27.0.2"


@pytest.fixture(scope="module")
def prod() -> StackConfig:
    return load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")


def qos_class(pod_spec: dict[str, Any]) -> str:
    """The class the API server records in ``status.qosClass`` (Kubernetes
    pkg/apis/core/helper/qos): BestEffort when no container requests or limits CPU or memory,
    Guaranteed when every container's CPU and memory requests equal its limits."""
    containers = [*pod_spec.get("initContainers", []), *pod_spec.get("containers", [])]
    compute = ("cpu", "memory")

    def amounts(container: dict[str, Any], kind: str) -> dict[str, Any]:
        given = container.get("resources", {}).get(kind, {})
        return {k: v for k, v in given.items() if k in compute}

    if not any(amounts(c, "requests") or amounts(c, "limits") for c in containers):
        return "BestEffort"
    guaranteed = all(
        set(amounts(c, "limits")) == set(compute)
        and {**amounts(c, "limits"), **amounts(c, "requests")} == amounts(c, "limits")
        for c in containers
    )
    return "Guaranteed" if guaranteed else "Burstable"


def traefik_deployment(values: dict[str, Any]) -> dict[str, Any]:
    """K3s's Traefik Deployment as the packaged chart renders its args from ``values`` layered
    over the chart's own values.yaml: the global arguments, one address per entry point, then
    ``additionalArguments`` verbatim (its _podtemplate.tpl)."""
    chart = yaml.safe_load((TRAEFIK_CHART / "values.yaml").read_text())
    template = (TRAEFIK_CHART / "_podtemplate.tpl").read_text()
    assert "- {{ . | quote }}" in template.split("additionalArguments")[-1]
    args = list(chart.get("globalArguments") or [])
    for name, port in sorted(chart["ports"].items()):
        if port:
            args.append(f"--entrypoints.{name}.address=:{port['port']}/{port['protocol'].lower()}")
    args += ["--api.dashboard=true", "--ping=true", "--providers.kubernetesingress"]
    args += values.get("additionalArguments", [])
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "traefik", "namespace": "kube-system", "uid": "5f1d9c3a-0000"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "traefik",
                            "image": "rancher/mirrored-library-traefik:2.11.10",
                            "args": args,
                        }
                    ]
                }
            }
        },
        "status": {"replicas": 1},
    }


def api_lists(config: StackConfig) -> dict[str, dict[str, Any]]:
    spec = InferenceStackSpec.from_stack(config)
    plan = inference_plan(spec)
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
    pod: dict[str, Any] = {
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
    pod["status"]["qosClass"] = qos_class(pod["spec"])
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
        "systemdeployments": {
            "kind": "DeploymentList",
            "items": [traefik_deployment(traefik_values(spec))] if spec.k3s else [],
        },
    }


def objects_from(lists: dict[str, dict[str, Any]]) -> ClusterObjects:
    return ClusterObjects(
        scaled_objects=lists["scaledobjects"],
        deployments=lists["deployments"],
        daemon_sets=lists["daemonsets"],
        pods=lists["pods"],
        nodes=lists["nodes"],
        system_deployments=lists["systemdeployments"],
    )


def by_check(results: list[Any]) -> dict[str, Any]:
    return {r.check: r for r in results}


def test_what_the_stack_applied_passes(prod: StackConfig) -> None:
    results = inference_cluster_checks(prod, objects_from(api_lists(prod)))
    checks = by_check(results)
    for model in prod.inference.models:
        assert checks[f"scale-to-zero:{model.name}"].status == "pass"
        assert checks[f"telemetry-off:{model.name}"].status == "pass"
    assert any(w.startswith("sovereign-gateway/") for w in checks["images"].evidence["images"])
    assert checks["placement"].status == "pass"
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
    telemetry = checks[f"telemetry-off:{first.name}"]
    assert telemetry.status == "fail"
    assert telemetry.observed == "server missing DO_NOT_TRACK"
    image = checks["images"]
    assert image.status == "fail"
    assert image.observed == (
        f"sovereign-inference/{first.name}/server: docker.io/vllm/vllm-openai:latest"
    )
    placement = checks["placement"]
    assert placement.status == "fail"
    assert "(US)" in placement.observed


def test_scaled_to_zero_means_no_placement_to_judge(prod: StackConfig) -> None:
    lists = api_lists(prod)
    lists["pods"]["items"] = []
    checks = by_check(inference_cluster_checks(prod, objects_from(lists)))
    assert checks["placement"].status == "skip"
    assert checks["placement"].observed == "no model pod is scheduled (scaled to zero)"
    assert [r.check for r in checks.values() if r.status == "fail"] == []


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
            "/apis/apps/v1/namespaces/kube-system/deployments": lists["systemdeployments"],
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
    results = verify_inference_cluster(prod, api_server.kubeconfig(token="wrong-token-123456"))
    (result,) = [r for r in results if r.status == "fail"]
    assert (result.check, result.status) == ("cluster-api", "fail")
    assert "HTTP 401" in result.observed
    assert "wrong-token" not in json.dumps([r.observed for r in results])
    (missing,) = [r for r in verify_inference_cluster(prod, None) if r.status == "fail"]
    assert missing.check == "cluster-api"
    assert "kubeconfig" in missing.observed


def test_the_server_certificate_is_checked(api_server: FakeApiServer, prod: StackConfig) -> None:
    text = yaml.safe_load(api_server.kubeconfig())
    del text["clusters"][0]["cluster"]["certificate-authority-data"]
    (result,) = [
        r for r in verify_inference_cluster(prod, yaml.safe_dump(text)) if r.status == "fail"
    ]
    assert result.check == "cluster-api"
    assert "CERTIFICATE_VERIFY_FAILED" in result.observed or "SSL" in result.observed


def test_verify_stack_judges_the_cluster_through_the_kubeconfig_output(
    api_server: FakeApiServer, prod: StackConfig, tmp_path: Path
) -> None:
    from components.verification.runner import verify_stack

    judged = verify_stack(prod, tmp_path, hosts=[], kubeconfig=api_server.kubeconfig())
    assert judged.results
    assert all(r.layer == "inference" and r.status == "pass" for r in judged.results)
    unjudged = verify_stack(prod, tmp_path, hosts=[], kubeconfig=None)
    assert [(r.check, r.status) for r in unjudged.failed] == [("cluster-api", "fail")]
    assert {r.status for r in unjudged.results if r.check != "cluster-api"} == {"skip"}
    hosts_only = verify_stack(prod, tmp_path, hosts=[], layers=("host",), kubeconfig=None)
    assert hosts_only.results == []


# --- what only a live cluster shows: Traefik's flags, the pods' QoS class ------------------------


def test_traefik_running_without_the_planned_timeouts_fails(prod: StackConfig) -> None:
    lists = api_lists(prod)
    spec = InferenceStackSpec.from_stack(prod)
    seconds = f"{edge_timeout_seconds(spec)}s"
    # the values an earlier plan sent: chart 27 renders no flag from ports.*.transport
    ignored = {
        "ports": {
            "web": {"transport": {"respondingTimeouts": {"readTimeout": seconds}}},
            "websecure": {"transport": {"respondingTimeouts": {"readTimeout": seconds}}},
        }
    }
    lists["systemdeployments"]["items"] = [traefik_deployment(ignored)]
    result = by_check(inference_cluster_checks(prod, objects_from(lists)))["traefik-timeouts"]
    assert result.status == "fail"
    assert "--entrypoints.web.transport.respondingtimeouts.readtimeout=(absent)" in result.observed
    assert f"readTimeout={seconds}" in result.expected


def test_a_second_traefik_timeout_flag_with_another_value_fails(prod: StackConfig) -> None:
    lists = api_lists(prod)
    args = lists["systemdeployments"]["items"][0]["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    args.append("--entrypoints.websecure.transport.respondingTimeouts.readTimeout=60s")
    result = by_check(inference_cluster_checks(prod, objects_from(lists)))["traefik-timeouts"]
    assert result.status == "fail"
    assert "--entrypoints.websecure.transport.respondingtimeouts.readtimeout=" in result.observed
    assert result.observed.endswith("|60s")


def test_no_traefik_deployment_fails_and_a_cluster_without_k3s_has_none_to_judge(
    prod: StackConfig,
) -> None:
    lists = api_lists(prod)
    lists["systemdeployments"]["items"] = []
    result = by_check(inference_cluster_checks(prod, objects_from(lists)))["traefik-timeouts"]
    assert (result.status, result.observed) == ("fail", "no Deployment kube-system/traefik")
    not_k3s = prod.model_copy(update={"k3s": prod.k3s.model_copy(update={"install": False})})
    assert "traefik-timeouts" not in by_check(
        inference_cluster_checks(not_k3s, objects_from(lists))
    )


def test_a_best_effort_model_pod_fails(prod: StackConfig) -> None:
    lists = api_lists(prod)
    pod = lists["pods"]["items"][0]
    for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        requested = container.get("resources", {})
        for kind in ("requests", "limits"):
            requested[kind] = {
                k: v for k, v in requested.get(kind, {}).items() if k not in ("cpu", "memory")
            }
    pod["status"]["qosClass"] = qos_class(pod["spec"])
    checks = by_check(inference_cluster_checks(prod, objects_from(lists)))
    qos = checks["qos"]
    assert (qos.status, qos.observed) == (
        "fail",
        f"{pod['metadata']['namespace']}/{pod['metadata']['name']} BestEffort",
    )
    pod["status"]["phase"] = "Pending"
    checks = by_check(inference_cluster_checks(prod, objects_from(lists)))
    assert checks["qos"].status == "skip"


def test_the_applied_model_pods_are_not_best_effort(prod: StackConfig) -> None:
    checks = by_check(inference_cluster_checks(prod, objects_from(api_lists(prod))))
    qos = checks["qos"]
    assert qos.status == "pass"
    assert qos.observed in ("Burstable", "Guaranteed")


def test_traefik_is_read_from_kube_system_through_the_kubeconfig(
    api_server: FakeApiServer, prod: StackConfig
) -> None:
    results = by_check(verify_inference_cluster(prod, api_server.kubeconfig()))
    assert results["traefik-timeouts"].status == "pass"
    assert ("GET", "/apis/apps/v1/namespaces/kube-system/deployments") in api_server.requests
