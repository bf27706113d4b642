"""The inference stack's objects, as the plan builds them: schema-valid, and saying what the
stack promises (scale to zero, placement, security levels, network allows, secrets as digests)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from components.config import StackConfig, load_stack_file
from components.plan.kubernetes import InferencePlan, InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import edge_timeout_seconds
from components.plan.kubernetes.serving import server_args, startup_budget_seconds
from components.plan.kubernetes.spec import (
    GATEWAY_NAMESPACE,
    GPU_NAMESPACE,
    KEDA_NAMESPACE,
    MODELS_NAMESPACE,
    WEIGHTS_NAMESPACE,
)
from components.review_tree import render_stack
from tests.k8s_schemas import (
    chart_defaults,
    kubernetes_version,
    scaled_object_schema,
    undeclared_fields,
    validate_builtin,
    validate_scaled_object,
    validate_trigger_authentication,
    values_problems,
)

ROOT = Path(__file__).resolve().parents[2]
SERVING_STACKS = [
    p
    for p in sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
    if load_stack_file(p).inference.models
]
CUSTOM_KINDS = {"ScaledObject", "HelmChartConfig", "TriggerAuthentication"}


def stack_variant(tmp_path: Path, edit: Any, base: str = "Pulumi.staging.yaml") -> StackConfig:
    """A shipped stack with ``edit(config_section)`` applied, loaded like any stack file."""
    data = yaml.safe_load((ROOT / "stacks" / base).read_text())
    edit(data["config"])
    path = tmp_path / f"Pulumi.{tmp_path.name[:20].lower().replace('_', '-')}.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_stack_file(path)


def with_cpu_node_and_own_server(config: dict[str, Any]) -> None:
    hosts = config["sovereign-inference:hosts"]
    cpu = json.loads(json.dumps(hosts[1]))
    cpu.update(name="stg-cpu-1", address="198.51.100.23", gpu={"count": 0}, nvme=[])
    digest = hashlib.sha256(b"stg-cpu-1 host key").digest()
    cpu["ssh"]["hostKey"] = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    hosts.append(cpu)
    model = config["sovereign-inference:inference"]["models"][0]
    image = config["sovereign-inference:inference"]["image"]
    model.update(
        image=image.replace("vllm/vllm-openai", "teams/sglang"),
        args=["python3", "-m", "sglang.launch_server", "--port", "8000"],
        env={"SGLANG_LOG_LEVEL": "info"},
        gpu={"model": "RTX-6000-ADA-48GB"},
    )


def plans() -> list[tuple[str, InferencePlan, StackConfig]]:
    found = []
    for path in SERVING_STACKS:
        config = load_stack_file(path)
        found.append((path.name, inference_plan(InferenceStackSpec.from_stack(config)), config))
    return found


@pytest.fixture(scope="module")
def existing_cluster(tmp_path_factory: pytest.TempPathFactory) -> tuple[InferencePlan, StackConfig]:
    """A stack with a CPU node and a bring-your-own server, as a non-K3s cluster would run it."""
    config = stack_variant(tmp_path_factory.mktemp("cpu"), with_cpu_node_and_own_server)
    spec = InferenceStackSpec.from_stack(config).model_copy(update={"k3s": False})
    return inference_plan(spec), config


def test_serving_stacks_exist() -> None:
    assert {p.name for p in SERVING_STACKS} >= {"Pulumi.staging.yaml", "Pulumi.prod-fra.yaml"}


@pytest.mark.parametrize(
    ("name", "plan", "config"), plans(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_object_is_valid_for_the_pinned_kubernetes(
    name: str, plan: InferencePlan, config: StackConfig
) -> None:
    version = kubernetes_version(config.k3s.version)
    for obj in plan.objects():
        if obj["kind"] in CUSTOM_KINDS:
            continue
        validate_builtin(obj, version)


def test_existing_cluster_objects_are_valid_too(
    existing_cluster: tuple[InferencePlan, StackConfig],
) -> None:
    plan, config = existing_cluster
    assert plan.runtime_class is not None
    version = kubernetes_version(config.k3s.version)
    for obj in plan.objects():
        if obj["kind"] == "ScaledObject":
            validate_scaled_object(obj)
        elif obj["kind"] == "TriggerAuthentication":
            validate_trigger_authentication(obj)
        else:
            validate_builtin(obj, version)


def test_strict_validation_catches_a_misspelt_field() -> None:
    (_, plan, config), *_ = plans()
    broken = json.loads(json.dumps(plan.models[0].deployment))
    broken["spec"]["template"]["spec"]["runtimeClass"] = "nvidia"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(broken, kubernetes_version(config.k3s.version))


def test_custom_resources_are_not_checked_by_kubernetes_validate() -> None:
    """Why ScaledObjects are checked against the KEDA CRD here instead."""
    (_, plan, config), *_ = plans()
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_builtin(plan.models[0].scaled_object, kubernetes_version(config.k3s.version))


@pytest.mark.parametrize(
    ("name", "plan", "config"), plans(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_scaled_objects_match_the_keda_crd_and_scale_to_zero(
    name: str, plan: InferencePlan, config: StackConfig
) -> None:
    assert len(plan.models) == len(config.inference.models)
    for model, objects in zip(config.inference.models, plan.models, strict=True):
        validate_scaled_object(objects.scaled_object)
        spec = objects.scaled_object["spec"]
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] == model.max_replicas
        assert spec["cooldownPeriod"] == model.idle_seconds
        assert objects.deployment["spec"]["replicas"] == 0


def test_the_crd_check_refuses_a_bad_scaled_object() -> None:
    (_, plan, _), *_ = plans()
    wrong_type = json.loads(json.dumps(plan.models[0].scaled_object))
    wrong_type["spec"]["minReplicaCount"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        validate_scaled_object(wrong_type)
    pruned = json.loads(json.dumps(plan.models[0].scaled_object))
    pruned["spec"]["idleSeconds"] = 300
    with pytest.raises(AssertionError, match=r"\.spec\.idleSeconds"):
        validate_scaled_object(pruned)
    assert undeclared_fields({"spec": {"triggers": [{"typo": 1}]}}, scaled_object_schema()) == [
        ".spec.triggers[0].typo"
    ]


def _schema() -> dict[str, Any]:
    from tests.k8s_schemas import scaled_object_schema

    return scaled_object_schema()


@pytest.mark.parametrize(
    ("name", "plan", "config"), plans(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_chart_values_are_values_of_the_pinned_charts(
    name: str, plan: InferencePlan, config: StackConfig
) -> None:
    pins = {
        "keda": config.inference.charts.keda,
        "nvidia-device-plugin": config.inference.charts.nvidia_device_plugin,
        "dcgm-exporter": config.inference.charts.dcgm_exporter,
    }
    assert {c.chart for c in plan.charts} == set(pins)
    version = kubernetes_version(config.k3s.version)
    for chart in plan.charts:
        assert chart.version == pins[chart.chart]
        assert values_problems(chart.values, chart_defaults(chart.chart, chart.version)) == []
        # the pod-level values are Kubernetes fields: hold them to the Pod schema as well
        pod_fields = {
            k: chart.values[k]
            for k in ("affinity", "tolerations", "runtimeClassName")
            if k in chart.values
        }
        if pod_fields:
            pod: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "values-check"},
                "spec": {"containers": [{"name": "c", "image": "example"}], **pod_fields},
            }
            validate_builtin(pod, version)


def test_chart_values_check_catches_an_unknown_key() -> None:
    defaults = chart_defaults("dcgm-exporter", "4.1.1")
    assert values_problems({"serviceMonitor": {"enable": False}}, defaults) == [
        ".serviceMonitor.enable: not a value of this chart"
    ]
    assert values_problems({"serviceMonitor": {"enabled": "no"}}, defaults) == [
        ".serviceMonitor.enabled: expected bool like the chart's default"
    ]


def test_namespaces_carry_pod_security_levels() -> None:
    (_, plan, _), *_ = plans()
    levels = {
        ns["metadata"]["name"]: ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
        for ns in plan.namespaces
    }
    assert levels == {
        GATEWAY_NAMESPACE: "restricted",
        KEDA_NAMESPACE: "restricted",
        # hostPath (the node's weight cache) is refused by baseline and restricted alike
        WEIGHTS_NAMESPACE: "privileged",
        MODELS_NAMESPACE: "privileged",
        GPU_NAMESPACE: "privileged",
    }
    for ns in plan.namespaces:
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/audit"] == "restricted"


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def test_restricted_namespaces_run_restricted_pods_and_others_drop_everything() -> None:
    (_, plan, _), *_ = plans()
    workloads = [o for o in plan.objects() if o["kind"] in ("Deployment", "DaemonSet")]
    assert workloads
    for obj in workloads:
        pod = obj["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(pod):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False
            # one exception: a model's weights init container hands the compile cache directory
            # to the server's user
            handover = obj["kind"] == "Deployment" and container["name"] == "weights"
            handover = handover and obj["metadata"]["namespace"] == MODELS_NAMESPACE
            added = {"add": ["CHOWN"]} if handover else {}
            assert ctx["capabilities"] == {"drop": ["ALL"], **added}
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
            assert ctx["readOnlyRootFilesystem"] is True
        if obj["metadata"]["namespace"] == GATEWAY_NAMESPACE:
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert all(c["securityContext"]["runAsNonRoot"] for c in _containers(pod))
            assert not any("hostPath" in v for v in pod.get("volumes", []))
    for model in plan.models:
        (server,) = model.deployment["spec"]["template"]["spec"]["containers"]
        assert server["securityContext"]["runAsNonRoot"] is True
        cache = [m for m in server["volumeMounts"] if m["name"] == "weights-cache"]
        assert cache
        assert cache[0]["readOnly"] is True


def test_network_policies_deny_by_default_and_allow_exactly_the_listed_paths() -> None:
    (_, plan, config), *_ = plans()
    policies = {
        (p["metadata"]["namespace"], p["metadata"]["name"]): p["spec"]
        for p in plan.network_policies
    }
    for ns in (GATEWAY_NAMESPACE, MODELS_NAMESPACE, WEIGHTS_NAMESPACE):
        assert policies[(ns, "default-deny")] == {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
        }
        dns = policies[(ns, "allow-dns")]["egress"][0]
        assert {p["port"] for p in dns["ports"]} == {53}
    assert set(policies) == {
        *(
            (ns, n)
            for ns in (GATEWAY_NAMESPACE, MODELS_NAMESPACE, WEIGHTS_NAMESPACE)
            for n in ("default-deny", "allow-dns")
        ),
        (GATEWAY_NAMESPACE, "allow-clients"),
        (GATEWAY_NAMESPACE, "allow-scaler"),
        (GATEWAY_NAMESPACE, "allow-to-models"),
        (MODELS_NAMESPACE, "allow-from-gateway"),
        (MODELS_NAMESPACE, "allow-object-store"),
        (WEIGHTS_NAMESPACE, "allow-object-store"),
    }
    clients = policies[(GATEWAY_NAMESPACE, "allow-clients")]["ingress"]
    assert clients == [{"ports": [{"protocol": "TCP", "port": config.inference.gateway.port}]}]
    scaler = policies[(GATEWAY_NAMESPACE, "allow-scaler")]["ingress"][0]
    assert scaler["ports"] == [{"protocol": "TCP", "port": 9090}]
    keda_peer = scaler["from"][0]
    assert keda_peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": KEDA_NAMESPACE
    }
    to_models = policies[(MODELS_NAMESPACE, "allow-from-gateway")]["ingress"][0]
    assert to_models["ports"] == [{"protocol": "TCP", "port": 8000}]
    store = policies[(WEIGHTS_NAMESPACE, "allow-object-store")]["egress"][0]
    assert store["ports"] == [{"protocol": "TCP", "port": 443}]
    allowlist = config.residency.egress_allowlist
    cidrs = [p["ipBlock"]["cidr"] for p in store["to"]]
    if allowlist:
        assert cidrs == list(allowlist)
    else:
        assert cidrs == ["0.0.0.0/0", "::/0"]
        assert store["to"][0]["ipBlock"]["except"] == [
            config.k3s.cluster_cidr,
            config.k3s.service_cidr,
        ]


def test_api_keys_reach_the_cluster_only_as_sha256(tmp_path: Path) -> None:
    prod = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    assert prod.inference.gateway.tenants
    plan = inference_plan(InferenceStackSpec.from_stack(prod))
    (secret,) = [o for o in plan.gateway if o["kind"] == "Secret"]
    lines = secret["stringData"]["api-keys"].splitlines()
    expected = [
        f"{t.name}:{hashlib.sha256(t.api_key.get_secret_value().encode()).hexdigest()}"
        for t in prod.inference.gateway.tenants
    ]
    assert lines == expected
    everything = json.dumps(plan.objects()) + json.dumps([c.values for c in plan.charts])
    for tenant in prod.inference.gateway.tenants:
        assert tenant.api_key.get_secret_value() not in everything


def test_startup_probe_is_sized_from_weights_and_read_speed() -> None:
    prod = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    spec = InferenceStackSpec.from_stack(prod)
    plan = inference_plan(spec)
    by_name = {m.name: m for m in plan.models}
    llama = next(m for m in prod.inference.models if m.name == "llama-70b")
    # 160 GiB of weights at most (minGpuMemoryGib) at 1024 MiB/s (cache.minReadMibPerSecond's
    # default), plus 300 s of engine start
    assert prod.cache.min_read_mib_per_second == 1024
    assert startup_budget_seconds(spec, llama) == 160 + 300
    (server,) = by_name["llama-70b"].deployment["spec"]["template"]["spec"]["containers"]
    probe = server["startupProbe"]
    assert probe["httpGet"]["path"] == "/health"
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 460
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    # a bigger model gets a longer budget
    mistral = next(m for m in prod.inference.models if m.name == "mistral-small")
    assert startup_budget_seconds(spec, mistral) < startup_budget_seconds(spec, llama)


def test_model_pods_land_only_on_fitting_gpu_nodes_inside_the_policy() -> None:
    prod = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    plan = inference_plan(InferenceStackSpec.from_stack(prod))
    for model, objects in zip(prod.inference.models, plan.models, strict=True):
        pod = objects.deployment["spec"]["template"]["spec"]
        (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        rules = {e["key"]: e for e in term["matchExpressions"]}
        assert rules["sovereign-inference/country"]["values"] == sorted(
            prod.residency.allowed_countries
        )
        assert rules["sovereign-inference/gpu-count"] == {
            "key": "sovereign-inference/gpu-count",
            "operator": "Gt",
            "values": [str(model.gpus_per_replica - 1)],
        }
        if model.gpu is not None:
            assert rules["sovereign-inference/gpu-model"]["values"] == [model.gpu.model]
        assert pod["runtimeClassName"] == "nvidia"
        (server,) = pod["containers"]
        args = server["args"]
        assert args[args.index("--load-format") + 1] == "runai_streamer"
        assert args[args.index("--model") + 1] == (
            f"{prod.cache.mount_point}/{model.name}/{model.source.revision}"
        )
        if model.max_model_len:
            assert args[args.index("--max-model-len") + 1] == str(model.max_model_len)
        (init,) = pod["initContainers"]
        assert init["image"] == prod.inference.weights_image
        assert init["args"][:1] == ["ensure"]


def test_vllm_is_told_the_sequences_the_sizing_assumed_unless_the_model_says() -> None:
    prod = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    spec = InferenceStackSpec.from_stack(prod)
    for model in prod.inference.models:
        args = server_args(spec, model)
        assert args.count("--max-num-seqs") == 1
        assert args[args.index("--max-num-seqs") + 1] == str(model.target_concurrency)
    model = prod.inference.models[0]
    # the model's own limit, in any spelling vLLM's parser accepts, is the one vLLM gets
    for own in (("--max-num-seqs", "4"), ("--max-num-seqs=4",), ("--max_num_seqs", "4")):
        args = server_args(spec, model.model_copy(update={"args": own}))
        assert not any(
            a.startswith(("--max-num-seqs", "--max_num_seqs")) for a in args[: -len(own)]
        )
        assert tuple(args[-len(own) :]) == own


def test_bring_your_own_server_keeps_probes_gpus_cache_and_scaling(
    existing_cluster: tuple[InferencePlan, StackConfig],
) -> None:
    plan, config = existing_cluster
    model = config.inference.models[0]
    pod = plan.models[0].deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"] == model.image
    assert server["args"] == list(model.args)
    assert "command" not in server  # the team's image decides how it starts
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["SGLANG_LOG_LEVEL"] == "info"
    assert env["SOVEREIGN_MODEL_DIR"].endswith(f"/{model.name}/{model.source.revision}")
    assert env["VLLM_NO_USAGE_STATS"] == env["DO_NOT_TRACK"] == env["HF_HUB_OFFLINE"] == "1"
    assert server["startupProbe"]["httpGet"]["path"] == "/health"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == str(model.gpus_per_replica)
    rules = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert {
        "key": "sovereign-inference/gpu-model",
        "operator": "In",
        "values": ["RTX-6000-ADA-48GB"],
    } in rules
    assert plan.models[0].scaled_object["spec"]["minReplicaCount"] == 0


def test_gateway_stays_off_gpu_nodes_only_when_cpu_nodes_exist(
    existing_cluster: tuple[InferencePlan, StackConfig],
) -> None:
    plan, _ = existing_cluster
    (deployment,) = [o for o in plan.gateway if o["kind"] == "Deployment"]
    affinity = deployment["spec"]["template"]["spec"]["affinity"]
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ] == [
        {
            "matchExpressions": [
                {"key": "sovereign-inference/gpu-count", "operator": "In", "values": ["0"]}
            ]
        }
    ]
    assert "podAntiAffinity" in affinity
    (_, gpu_only, _), *_ = plans()
    (deployment,) = [o for o in gpu_only.gateway if o["kind"] == "Deployment"]
    assert "nodeAffinity" not in deployment["spec"]["template"]["spec"]["affinity"]


def test_gateway_runs_the_configured_replicas_behind_a_budget_and_two_services() -> None:
    prod = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    plan = inference_plan(InferenceStackSpec.from_stack(prod))
    kinds = [(o["kind"], o["metadata"]["name"]) for o in plan.gateway]
    assert ("PodDisruptionBudget", "sovereign-gateway") in kinds
    (deployment,) = [o for o in plan.gateway if o["kind"] == "Deployment"]
    assert deployment["spec"]["replicas"] == prod.inference.gateway.replicas
    services = {o["metadata"]["name"]: o["spec"] for o in plan.gateway if o["kind"] == "Service"}
    assert {p["port"] for p in services["sovereign-gateway"]["ports"]} == {80, 9090}
    assert services["sovereign-gateway-peers"]["clusterIP"] == "None"
    (ingress,) = [o for o in plan.gateway if o["kind"] == "Ingress"]
    assert ingress["spec"]["tls"] == [
        {"hosts": [prod.inference.gateway.host], "secretName": prod.inference.gateway.tls_secret}
    ]
    assert ingress["spec"]["rules"][0]["host"] == prod.inference.gateway.host


def test_edge_timeouts_exceed_cold_start_plus_request() -> None:
    prod = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    spec = InferenceStackSpec.from_stack(prod)
    plan = inference_plan(spec)
    (config,) = plan.edge
    assert (config["apiVersion"], config["kind"]) == ("helm.cattle.io/v1", "HelmChartConfig")
    assert config["metadata"]["name"] == "traefik"
    assert config["metadata"]["namespace"] == "kube-system"
    values = yaml.safe_load(config["spec"]["valuesContent"])
    held = (
        prod.inference.gateway.cold_start_timeout_seconds
        + prod.inference.gateway.request_timeout_seconds
    )
    assert edge_timeout_seconds(spec) > held
    # flags, not ports.<name>.transport: the chart K3s v1.31 packages ignores those (test_edge)
    timeouts = [a for a in values["additionalArguments"] if ".respondingTimeouts." in a]
    assert len(timeouts) == 6  # read, write and idle on web and websecure
    for flag in timeouts:
        assert int(flag.rpartition("=")[2].removesuffix("s")) > held


def test_warmer_runs_on_gpu_nodes_and_prefetches_only_marked_models(tmp_path: Path) -> None:
    def one_not_prefetched(config: dict[str, Any]) -> None:
        models = config["sovereign-inference:inference"]["models"]
        second = json.loads(json.dumps(models[0]))
        second.update(name="cold-only", servedName="org/cold-only", prefetch=False)
        models.append(second)

    config = stack_variant(tmp_path, one_not_prefetched)
    plan = inference_plan(InferenceStackSpec.from_stack(config))
    models_map, daemon_set = plan.warmer
    listed = json.loads(models_map["data"]["models.json"])
    assert [e["model"] for e in listed] == [m.name for m in config.inference.models if m.prefetch]
    assert "cold-only" not in [e["model"] for e in listed]
    pod = daemon_set["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert {
        "key": "sovereign-inference/gpu-count",
        "operator": "Gt",
        "values": ["0"],
    } in term["matchExpressions"]
    # every model still gets its init container, prefetched or not
    assert len(plan.models) == 2
    assert all(m.deployment["spec"]["template"]["spec"]["initContainers"] for m in plan.models)


def test_a_hand_built_spec_is_held_to_the_residency_policy() -> None:
    stack = load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")
    foreign = stack.inference.model_copy(
        update={"gateway_image": "ghcr.io/someone/gateway:1@sha256:" + "a" * 64}
    )
    with pytest.raises(ValueError, match=r"inference\.gatewayImage: registry ghcr\.io"):
        InferenceStackSpec(environment="team", inference=foreign, residency=stack.residency)


@pytest.mark.parametrize(
    ("name", "plan", "config"), plans(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_a_cold_start_fits_inside_the_gateway_hold(
    name: str, plan: InferencePlan, config: StackConfig
) -> None:
    """A replica that starts within its probe budget answers before the gateway gives up on the
    held request (weights already on the node: prefetched, so the init container returns at once)."""
    spec = InferenceStackSpec.from_stack(config)
    for model in config.inference.models:
        budget = startup_budget_seconds(spec, model)
        assert budget < config.inference.gateway.cold_start_timeout_seconds


@pytest.mark.parametrize("stack_file", SERVING_STACKS, ids=lambda p: p.name)
def test_every_file_render_writes_is_valid(stack_file: Path, tmp_path: Path) -> None:
    """The files a reviewer reads are the ones checked: objects, ScaledObjects, chart values."""
    config = load_stack_file(stack_file)
    render_stack(config, tmp_path / "out")
    kube = tmp_path / "out" / "kubernetes"
    version = kubernetes_version(config.k3s.version)
    files = sorted(kube.glob("*.yaml"))
    kinds = set()
    for path in files:
        obj = yaml.safe_load(path.read_text())
        kinds.add(obj["kind"])
        if obj["kind"] == "ScaledObject":
            validate_scaled_object(obj)
        elif obj["kind"] == "TriggerAuthentication":
            validate_trigger_authentication(obj)
        elif obj["kind"] == "HelmChartConfig":
            assert json.loads(obj["spec"]["valuesContent"])["additionalArguments"]
        else:
            validate_builtin(obj, version)
    assert {"Deployment", "Service", "ScaledObject", "NetworkPolicy", "Namespace"} <= kinds
    charts = sorted((kube / "charts").glob("*.yaml"))
    assert len(charts) == 3
    for path in charts:
        release = yaml.safe_load(path.read_text())
        defaults = chart_defaults(release["chart"], release["version"])
        assert values_problems(release["values"], defaults) == [], path.name
