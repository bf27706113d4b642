"""The contracts between the inference stack and the services it deploys, held from both sides.

The plan writes, the services read: the gateway's own loaders read the route table and the API-key
file that ``render`` wrote, the gateway's and the warmer's own command-line parsers read the
arguments the pods are started with, and every ScaledObject's trigger names a model the gateway
serves, at the gateway's scaler address.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sovereign_gateway.auth import parse_api_keys
from sovereign_gateway.ports import SCALER_GRPC_PORT
from sovereign_gateway.routes import load_route_table
from sovereign_gateway.settings import parse_settings
from sovereign_weights.__main__ import build_parser
from sovereign_weights.layout import CachePaths
from sovereign_weights.prefetch import load_models_file

from components.config import load_stack_file
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.spec import (
    GATEWAY,
    GATEWAY_API_KEYS,
    GATEWAY_NAMESPACE,
    MODELS_NAMESPACE,
)
from components.review_tree import render_stack

ROOT = Path(__file__).resolve().parents[2]
SERVING_STACKS = [
    p
    for p in sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
    if load_stack_file(p).inference.models
]


@pytest.fixture(params=SERVING_STACKS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    stack_file: Path = request.param
    out = tmp_path / "render"
    render_stack(load_stack_file(stack_file), out)
    return stack_file, out / "kubernetes"


def _objects(directory: Path, kind: str) -> list[dict[str, Any]]:
    found = [yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))]
    return [o for o in found if o["kind"] == kind]


def _container(obj: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    pod = obj["spec"]["template"]["spec"]
    key = "initContainers" if init else "containers"
    (container,) = [c for c in pod[key] if c["name"] == name]
    found: dict[str, Any] = container
    return found


def test_gateway_loads_the_rendered_route_table(rendered: tuple[Path, Path]) -> None:
    stack_file, out = rendered
    config = load_stack_file(stack_file)
    table = load_route_table(out / "routes.json")
    assert [r.name for r in table.models] == [m.served for m in config.inference.models]
    services = {s["metadata"]["name"]: s for s in _objects(out, "Service")}
    for model, route in zip(config.inference.models, table.models, strict=True):
        assert route.target_concurrency == model.target_concurrency
        assert route.gpus_per_replica == model.gpus_per_replica
        assert (
            route.cold_start_timeout_seconds == config.inference.gateway.cold_start_timeout_seconds
        )
        assert route.request_timeout_seconds == config.inference.gateway.request_timeout_seconds
        # the upstream is the model's own Service, on its port
        service = services[model.name]
        port = service["spec"]["ports"][0]["port"]
        assert route.upstream == f"http://{model.name}.{MODELS_NAMESPACE}.svc.cluster.local:{port}"
    assert [t.name for t in table.tenants] == [t.name for t in config.inference.gateway.tenants]
    assert table.metering.price_per_gpu_hour == config.inference.metering.price_per_gpu_hour
    # the ConfigMap the gateway mounts holds the same file
    (routes,) = [
        c for c in _objects(out, "ConfigMap") if c["metadata"]["name"] == "sovereign-gateway-routes"
    ]
    assert routes["data"]["routes.json"] == (out / "routes.json").read_text()


def test_every_trigger_names_a_served_model_at_the_gateway_scaler(
    rendered: tuple[Path, Path],
) -> None:
    _, out = rendered
    served = {r.name for r in load_route_table(out / "routes.json").models}
    scaled = _objects(out, "ScaledObject")
    assert scaled
    gateway_services = [
        s for s in _objects(out, "Service") if s["metadata"]["namespace"] == GATEWAY_NAMESPACE
    ]
    (scaler_service,) = [s for s in gateway_services if s["metadata"]["name"] == GATEWAY]
    scaler_ports = {p["port"] for p in scaler_service["spec"]["ports"] if p["name"] == "scaler"}
    assert scaler_ports == {SCALER_GRPC_PORT}
    for obj in scaled:
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["type"] == "external-push"
        assert trigger["metadata"]["model"] in served
        host, _, port = trigger["metadata"]["scalerAddress"].rpartition(":")
        assert host == f"{GATEWAY}.{GATEWAY_NAMESPACE}.svc.cluster.local"
        assert int(port) in scaler_ports
    assert {o["spec"]["triggers"][0]["metadata"]["model"] for o in scaled} == served


def test_gateway_parses_its_arguments_and_key_file(rendered: tuple[Path, Path]) -> None:
    stack_file, out = rendered
    config = load_stack_file(stack_file)
    (deployment,) = [d for d in _objects(out, "Deployment") if d["metadata"]["name"] == GATEWAY]
    gateway = _container(deployment, "gateway")
    settings = parse_settings(gateway["args"])
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert settings.listen.port == ports["http"] == config.inference.gateway.port
    assert settings.scaler_listen.port == ports["scaler"] == SCALER_GRPC_PORT
    assert settings.admin_listen.port == ports["admin"]
    assert settings.peers_dns is not None
    assert (
        settings.peers_dns.host == f"sovereign-gateway-peers.{GATEWAY_NAMESPACE}.svc.cluster.local"
    )
    mounts = {m["mountPath"] for m in gateway["volumeMounts"]}
    assert str(settings.routes.parent) in mounts
    secrets = [s for s in _objects(out, "Secret") if s["metadata"]["name"] == GATEWAY_API_KEYS]
    if config.inference.gateway.tenants:
        assert settings.api_keys is not None
        assert str(settings.api_keys.parent) in mounts
        (rendered_secret,) = secrets
        # render shows which tenants have keys, never the digests
        assert rendered_secret["stringData"]["api-keys"] == "".join(
            f"{t.name}:[secret]\n" for t in config.inference.gateway.tenants
        )
        plan = inference_plan(InferenceStackSpec.from_stack(config))
        (secret,) = [o for o in plan.gateway if o["kind"] == "Secret"]
        keys = parse_api_keys(secret["stringData"]["api-keys"], "planned secret")
        assert keys.tenants == {t.name for t in config.inference.gateway.tenants}
        for tenant in config.inference.gateway.tenants:
            bearer = f"Bearer {tenant.api_key.get_secret_value()}"
            assert keys.tenant_for(bearer) == tenant.name
    else:
        assert settings.api_keys is None
        assert not secrets


def test_warmer_and_init_containers_parse_their_arguments(
    rendered: tuple[Path, Path], tmp_path: Path
) -> None:
    stack_file, out = rendered
    config = load_stack_file(stack_file)
    parser = build_parser()
    (warmer,) = _objects(out, "DaemonSet")
    container = _container(warmer, "warmer")
    args = parser.parse_args(container["args"])
    assert args.command == "prefetch"
    assert str(args.cache) == config.cache.mount_point
    assert args.allowed_endpoints == list(config.residency.allowed_object_store_endpoints)
    (models_map,) = [
        c for c in _objects(out, "ConfigMap") if c["metadata"]["name"] == "sovereign-weights-models"
    ]
    models_file = tmp_path / "models.json"
    models_file.write_text(models_map["data"]["models.json"])
    entries = load_models_file(models_file)
    assert [e.model for e in entries] == [m.name for m in config.inference.models if m.prefetch]
    assert str(args.models_file).endswith("/models.json")
    deployments = {d["metadata"]["name"]: d for d in _objects(out, "Deployment")}
    for model in config.inference.models:
        ensure = parser.parse_args(
            _container(deployments[model.name], "weights", init=True)["args"]
        )
        assert ensure.command == "ensure"
        assert (ensure.endpoint, ensure.uri, ensure.revision, ensure.model) == (
            model.source.endpoint,
            model.source.uri,
            model.source.revision,
            model.name,
        )
        # vLLM reads exactly the directory the warmer completes (by atomic rename)
        complete = CachePaths(Path(ensure.cache), ensure.model, ensure.revision).complete_dir
        server = _container(deployments[model.name], "server")
        if model.image is None:
            assert server["args"][server["args"].index("--model") + 1] == str(complete)
        env = {e["name"]: e["value"] for e in server["env"]}
        assert env["SOVEREIGN_MODEL_DIR"] == str(complete)
