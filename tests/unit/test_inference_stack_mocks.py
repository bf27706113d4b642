"""``InferenceStack`` alone, on a cluster this toolkit did not build: the existing-cluster path.

A team's own Pulumi program builds the spec by hand and hands over its kubeconfig file; under
Pulumi mocks this checks that the stack makes its own provider from that file (as a secret), puts
every planned object and chart on it, and orders KEDA before the ScaledObjects.
"""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import yaml

from components.config import load_stack_file
from components.inference_stack import InferenceStack
from components.plan.kubernetes import ClusterNode, InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import GATEWAY_SCALER_TLS, KEDA_SCALER_CLIENT_TLS
from components.plan.kubernetes.spec import (
    GATEWAY_NAMESPACE,
    MODELS_NAMESPACE,
    replicas_service_name,
)
from tests.unit.test_program_mocks import (
    HELM_TYPE,
    INFERENCE_TYPE,
    K8S_PROVIDER_TYPE,
    SCALED_OBJECT_TYPE,
    STACK_TYPE,
    ProgramRun,
    as_wire,
    run_mocked,
    scaler_ca_as_planned,
    unwrap_secrets,
    without_secrets,
)

ROOT = Path(__file__).resolve().parents[2]
CLIENT_KEY = "existing-cluster-client-key-93b1f0d2"


def team_spec() -> InferenceStackSpec:
    """What a team writes: the stack's inference and residency sections, its own nodes."""
    stack = load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")
    return InferenceStackSpec(
        environment="team-ml",
        inference=stack.inference,
        residency=stack.residency,
        nodes=(
            ClusterNode(name="gpu-a", gpu_model="RTX-6000-ADA-48GB", gpu_count=1, country="DE"),
            ClusterNode(name="cpu-a", country="DE"),
        ),
    )


@pytest.fixture
def kubeconfig_file(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "team", "cluster": {"server": "https://10.0.0.1:6443"}}],
                "users": [{"name": "team", "user": {"client-key-data": CLIENT_KEY}}],
                "contexts": [{"name": "team", "context": {"cluster": "team", "user": "team"}}],
                "current-context": "team",
            }
        )
    )
    return path


@pytest.fixture
def team_run(kubeconfig_file: Path, monkeypatch: pytest.MonkeyPatch) -> ProgramRun:
    def body() -> None:
        stack = InferenceStack("team-ml", team_spec(), kubeconfig=kubeconfig_file.read_text())
        pulumi.export("gatewayUrl", stack.gateway_url)

    return run_mocked(body, {}, [], "team", monkeypatch)


def test_the_stack_builds_its_provider_from_the_kubeconfig_as_a_secret(
    team_run: ProgramRun,
) -> None:
    (provider,) = team_run.of_type(K8S_PROVIDER_TYPE)
    assert "kubeconfig" in provider.secret_paths
    assert team_run.by_urn[provider.parent].type == INFERENCE_TYPE
    assert team_run.by_urn[provider.parent].parent.split("::")[2] == STACK_TYPE
    for reg in team_run.registrations:
        assert CLIENT_KEY not in json.dumps(without_secrets(reg.raw_inputs)), reg.name
    assert unwrap_secrets(provider.raw_inputs)["kubeconfig"].count(CLIENT_KEY) == 1


def test_every_planned_object_and_chart_lands_on_that_provider(team_run: ProgramRun) -> None:
    spec = team_spec()
    plan = inference_plan(spec)
    (provider,) = team_run.of_type(K8S_PROVIDER_TYPE)
    registered = [
        r
        for r in team_run.registrations
        if r.type.startswith("kubernetes:") and r.type != HELM_TYPE
    ]
    assert len(registered) == len(plan.objects())
    kinds = sorted(r.raw_inputs["kind"] for r in registered)
    assert kinds == sorted(o["kind"] for o in plan.objects())
    # not K3s: the RuntimeClass is created here, and no K3s Traefik config is applied
    assert "RuntimeClass" in kinds
    assert "HelmChartConfig" not in kinds
    for reg in registered:
        assert reg.provider.startswith(provider.urn)
        inputs = unwrap_secrets(reg.raw_inputs)
        if inputs["metadata"]["name"] in (GATEWAY_SCALER_TLS, KEDA_SCALER_CLIENT_TLS):
            # filled in by the wiring from ScalerPki (tests/unit/test_scaler_trust_plan.py)
            inputs.pop("stringData")
        inputs = scaler_ca_as_planned(inputs)
        match = [
            o
            for o in plan.objects()
            if o["kind"] == inputs["kind"] and o["metadata"] == inputs["metadata"]
        ]
        assert [as_wire(o) for o in match] == [inputs]
    releases = team_run.of_type(HELM_TYPE)
    assert sorted(r.raw_inputs["name"] for r in releases) == sorted(c.name for c in plan.charts)
    keda = next(r for r in releases if r.raw_inputs["name"] == "keda")
    assert scaler_ca_as_planned(keda.raw_inputs["values"]) == as_wire(plan.keda.values)
    for reg in team_run.of_type(SCALED_OBJECT_TYPE):
        assert keda.urn in reg.dependencies
    assert team_run.stack_outputs["gatewayUrl"] == f"https://{spec.inference.gateway.host}/v1"


def test_exactly_one_way_to_reach_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    def body() -> None:
        InferenceStack("team-ml", team_spec())

    with pytest.raises(Exception, match="exactly one of provider= or kubeconfig="):
        run_mocked(body, {}, [], "team", monkeypatch)


def test_keda_waits_for_the_models_namespace_and_scaled_objects_for_the_gateway(
    team_run: ProgramRun,
) -> None:
    """KEDA's chart binds a Role in the models namespace; a ScaledObject made before the
    gateway's scaler serves gets an HPA without a metric."""
    by_kind_and_namespace = {
        (
            r.raw_inputs["kind"],
            r.raw_inputs["metadata"].get("namespace"),
            r.raw_inputs["metadata"]["name"],
        ): r
        for r in team_run.registrations
        if r.type.startswith("kubernetes:") and r.type != HELM_TYPE
    }
    models_namespace = by_kind_and_namespace[("Namespace", None, MODELS_NAMESPACE)]
    keda = next(r for r in team_run.of_type(HELM_TYPE) if r.raw_inputs["name"] == "keda")
    assert models_namespace.urn in keda.dependencies
    gateway = [
        r
        for (kind, namespace, _), r in by_kind_and_namespace.items()
        if namespace == GATEWAY_NAMESPACE and kind in ("Deployment", "Service")
    ]
    assert len(gateway) == 3  # the Deployment, its HTTP Service and the scaler's peers Service
    scaled = team_run.of_type(SCALED_OBJECT_TYPE)
    assert scaled
    for reg in scaled:
        assert {r.urn for r in gateway} <= set(reg.dependencies), reg.name


def test_each_model_gets_a_headless_service_of_its_ready_replicas(team_run: ProgramRun) -> None:
    services = {
        r.raw_inputs["metadata"]["name"]: r.raw_inputs["spec"]
        for r in team_run.registrations
        if r.type == "kubernetes:core/v1:Service"
    }
    for model in team_spec().inference.models:
        headless = services[replicas_service_name(model.name)]
        assert headless["clusterIP"] == "None"
        assert headless["publishNotReadyAddresses"] is False
        assert headless["selector"] == services[model.name]["selector"]


def test_an_existing_nvidia_runtime_class_is_not_created_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = team_spec().model_copy(update={"nvidia_runtime_class_exists": True})

    def body() -> None:
        InferenceStack("team-ml", spec, kubeconfig="apiVersion: v1\nkind: Config\n")

    run = run_mocked(body, {}, [], "team", monkeypatch)
    kinds = [
        r.raw_inputs.get("kind") for r in run.registrations if r.type.startswith("kubernetes:")
    ]
    assert "RuntimeClass" not in kinds
    assert "Deployment" in kinds
