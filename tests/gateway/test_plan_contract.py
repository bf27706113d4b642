"""What the plan deploys the gateway with, read through the gateway's own parsers.

The route table names each model's headless Service as its ``replicas`` address, so every ready
replica is probed and metered; the gateway pod drains for the request timeout, after a preStop wait
for its endpoint's removal, inside a grace period that covers both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sovereign_gateway.routes import parse_route_table, split_host_port
from sovereign_gateway.settings import parse_settings

from components.config import StackConfig, load_stack_file
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import (
    GATEWAY_MEMORY_LIMIT_BYTES,
    GATEWAY_SHUTDOWN_MARGIN_SECONDS,
    gateway_deployment,
    route_table,
)
from components.plan.kubernetes.serving import ENDPOINT_REMOVAL_SECONDS
from components.plan.kubernetes.spec import MODELS_NAMESPACE, service_host
from tests.k8s_schemas import kubernetes_version, validate_builtin

ROOT = Path(__file__).resolve().parents[2]
STAGING = ROOT / "stacks" / "Pulumi.staging.yaml"


def staging(tmp_path: Path, request_timeout: int = 600) -> StackConfig:
    data = yaml.safe_load(STAGING.read_text())
    inference = data["config"]["sovereign-inference:inference"]
    inference.setdefault("gateway", {})["requestTimeoutSeconds"] = request_timeout
    stack = tmp_path / "Pulumi.variant.yaml"
    stack.write_text(yaml.safe_dump(data))
    return load_stack_file(stack)


def test_each_routes_replicas_address_is_its_models_headless_service(tmp_path: Path) -> None:
    spec = InferenceStackSpec.from_stack(staging(tmp_path))
    table = parse_route_table(route_table(spec).to_json())
    plan = inference_plan(spec)
    assert plan.models
    for model, route in zip(plan.models, table.models, strict=True):
        assert route.replicas is not None
        host, port = split_host_port(route.replicas)
        headless = model.replicas_service
        assert host == service_host(headless["metadata"]["name"], MODELS_NAMESPACE)
        assert headless["spec"]["clusterIP"] == "None"
        assert port in {p["port"] for p in headless["spec"]["ports"]}
        # the same pods as the Service requests go through
        assert headless["spec"]["selector"] == model.service["spec"]["selector"]
        assert route.upstream.endswith(f":{port}")


@pytest.mark.parametrize("request_timeout", [600, 3600])
def test_the_gateway_drains_for_the_request_timeout_after_leaving_the_endpoints(
    tmp_path: Path, request_timeout: int
) -> None:
    config = staging(tmp_path, request_timeout)
    deployment = gateway_deployment(InferenceStackSpec.from_stack(config))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    settings = parse_settings(container["args"])
    assert settings.drain_seconds >= request_timeout
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == ENDPOINT_REMOVAL_SECONDS
    # the kubelet's SIGKILL comes only after the preStop wait, the whole drain and the exit
    assert pod["terminationGracePeriodSeconds"] >= (
        ENDPOINT_REMOVAL_SECONDS + settings.drain_seconds + GATEWAY_SHUTDOWN_MARGIN_SECONDS
    )
    validate_builtin(deployment, kubernetes_version(config.k3s.version))


def test_the_bodies_the_gateway_may_hold_fit_its_memory_limit(tmp_path: Path) -> None:
    deployment = gateway_deployment(InferenceStackSpec.from_stack(staging(tmp_path)))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = parse_settings(container["args"])
    limit = GATEWAY_MEMORY_LIMIT_BYTES
    assert container["resources"]["limits"]["memory"] == f"{limit // 1024**2}Mi"
    # held bodies cost about twice their bytes; one body's routing parse (the event loop parses
    # one at a time) up to ~25 times its size; half the limit stays for the process itself
    assert 2 * settings.max_held_bytes + 25 * settings.max_body_bytes <= limit
