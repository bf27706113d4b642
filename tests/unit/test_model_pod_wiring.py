"""What a model pod and the warmer need on a node before a request waits: the image pulled, a
compile cache that outlives the pod, a headless Service the gateway can reach every replica by."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sovereign_weights.layout import CachePaths

from components.config import load_stack_file
from components.plan.cold_start import cold_start_estimate_seconds
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.serving import (
    COMPILE_CACHE_DIR,
    COMPILE_CACHE_ENV,
    SERVER_UID,
    startup_budget_seconds,
)
from components.plan.kubernetes.spec import GATEWAY_NAMESPACE, replicas_service_name
from components.plan.kubernetes.warmer import NOOP_PROGRAM, PREPULL_DIR
from tests.unit.test_inference_objects import stack_variant, with_cpu_node_and_own_server

ROOT = Path(__file__).resolve().parents[2]


def prod_spec() -> InferenceStackSpec:
    return InferenceStackSpec.from_stack(load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml"))


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = obj["spec"]["template"]["spec"]
    return pod


def test_the_warmer_pre_pulls_every_serving_image_even_without_prefetch(tmp_path: Path) -> None:
    def nothing_prefetched(config: dict[str, Any]) -> None:
        with_cpu_node_and_own_server(config)
        models = config["sovereign-inference:inference"]["models"]
        second = json.loads(json.dumps(models[0]))
        second.update(name="vllm-cold", servedName="org/vllm-cold", prefetch=False)
        second.pop("image", None)
        second.pop("args", None)
        models.append(second)
        for model in models:
            model["prefetch"] = False

    config = stack_variant(tmp_path, nothing_prefetched)
    spec = InferenceStackSpec.from_stack(config)
    plan = inference_plan(spec)
    _, daemon_set = plan.warmer
    inits = pod_of(daemon_set)["initContainers"]
    writer, *pulls = inits
    assert writer["args"] == ["noop-program", "--out", NOOP_PROGRAM]
    assert writer["image"] == spec.inference.weights_image
    wanted = {m.image or spec.inference.image for m in spec.inference.models}
    assert len(wanted) == 2  # the team's own image and the stack's vLLM image
    assert sorted(c["image"] for c in pulls) == sorted(wanted)
    for pull in pulls:
        # runs the program from the shared emptyDir: nothing of the image itself
        assert pull["command"] == [NOOP_PROGRAM]
        assert pull["volumeMounts"] == [
            {"name": "prepull", "mountPath": PREPULL_DIR, "readOnly": True}
        ]
        assert pull["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod_of(daemon_set)["volumes"]}
    assert "emptyDir" in volumes["prepull"]
    assert json.loads(plan.warmer[0]["data"]["models.json"]) == []


def test_each_revision_and_image_gets_a_compile_cache_on_the_node() -> None:
    spec = prod_spec()
    plan = inference_plan(spec)
    for model, objects in zip(spec.inference.models, plan.models, strict=True):
        pod = pod_of(objects.deployment)
        image = model.image or spec.inference.image
        digest = image.rpartition("@")[2]
        expected = CachePaths(Path(spec.cache_mount_point), model.name, model.source.revision)
        volumes = {v["name"]: v for v in pod["volumes"]}
        (server,) = pod["containers"]
        (compile_mount,) = [
            m for m in server["volumeMounts"] if m["mountPath"] == COMPILE_CACHE_DIR
        ]
        # a read-write subPath of the node cache: resolved only once the init container, which
        # refuses an unmarked cache, has made the directory; no hostPath the kubelet would create
        # on a bare mount point before any container runs
        cache = volumes[compile_mount["name"]]["hostPath"]
        assert cache == {"path": spec.cache_mount_point, "type": "Directory"}
        node_path = Path(cache["path"]) / compile_mount["subPath"]
        assert node_path == expected.compile_dir(digest)
        assert not compile_mount.get("readOnly", False)
        assert not any(
            v.get("hostPath", {}).get("type") == "DirectoryOrCreate" for v in volumes.values()
        )
        env = {e["name"]: e["value"] for e in server["env"]}
        for name in COMPILE_CACHE_ENV:
            assert env[name].startswith(COMPILE_CACHE_DIR + "/"), name
        (ensure,) = pod["initContainers"]
        args = ensure["args"]
        assert args[args.index("--compile-image") + 1] == digest
        assert args[args.index("--compile-owner") + 1] == str(SERVER_UID)
        assert server["securityContext"]["runAsUser"] == SERVER_UID


def test_a_cold_start_estimate_is_what_remains_once_image_weights_and_kernels_are_on_the_node() -> (
    None
):
    spec = prod_spec()
    for model in spec.inference.models:
        estimate = cold_start_estimate_seconds(spec, model)
        assert 0 < estimate < startup_budget_seconds(spec, model)
    by_name = {m.name: m for m in spec.inference.models}
    # the read from NVMe grows with the weights
    assert cold_start_estimate_seconds(
        spec, by_name["mistral-small"]
    ) < cold_start_estimate_seconds(spec, by_name["llama-70b"])


def test_the_headless_service_reaches_pods_the_gateway_may_connect_to() -> None:
    spec = prod_spec()
    plan = inference_plan(spec)
    admit = next(p for p in plan.network_policies if p["metadata"]["name"] == "allow-from-gateway")
    selected = admit["spec"]["podSelector"]["matchLabels"]
    (rule,) = admit["spec"]["ingress"]
    allowed_ports = {p["port"] for p in rule["ports"]}
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": GATEWAY_NAMESPACE
    }
    for model in plan.models:
        headless = model.replicas_service
        assert headless["metadata"]["name"] == replicas_service_name(model.name)
        assert headless["spec"]["clusterIP"] == "None"
        pod_labels = model.deployment["spec"]["template"]["metadata"]["labels"]
        assert headless["spec"]["selector"].items() <= pod_labels.items()
        assert selected.items() <= pod_labels.items()
        (port,) = headless["spec"]["ports"]
        (server,) = pod_of(model.deployment)["containers"]
        container_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
        assert container_ports[port["targetPort"]] in allowed_ports


def test_replicas_service_names_stay_dns_labels_and_apart_for_long_model_names() -> None:
    long_a = "m" * 60 + "-a"
    long_b = "m" * 60 + "-b"
    names = {replicas_service_name(n) for n in ("short", long_a, long_b)}
    assert "short-replicas" in names
    assert len(names) == 3
    assert all(len(n) <= 63 and n.endswith("-replicas") for n in names)
