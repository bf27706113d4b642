"""The cluster-wide inference judgement (pure): the objects the API server holds, read through
the stack's kubeconfig output by :mod:`components.verification.cluster_api`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sovereign_gateway.trigger import METADATA_MODEL_KEY

from components.config.models import StackConfig
from components.config.residency import country_allowed, registry_allowed
from components.plan.checks import CLUSTER, cluster_checks
from components.plan.kubernetes.gateway import TRAEFIK_DEPLOYMENT, traefik_arguments
from components.plan.kubernetes.serving import TELEMETRY_OPT_OUTS
from components.plan.kubernetes.spec import (
    COUNTRY_LABEL,
    GATEWAY_NAMESPACE,
    MODEL_LABEL,
    MODELS_NAMESPACE,
    SYSTEM_NAMESPACE,
    WEIGHTS_NAMESPACE,
    InferenceStackSpec,
)
from components.verification.layers.inference import container_env, missing_opt_outs
from components.verification.results import Finding, skipped, verdict

LAYER = "inference"


@dataclass(frozen=True)
class ClusterObjects:
    """What the API server returned, as its JSON lists (``{"items": [...]}``)."""

    scaled_objects: dict[str, Any]
    deployments: dict[str, Any]
    daemon_sets: dict[str, Any]
    pods: dict[str, Any]
    nodes: dict[str, Any]
    system_deployments: dict[str, Any]  # kube-system's: where K3s runs its packaged Traefik


def _items(listing: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = listing.get("items") or []
    return items


def _name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '?')}".lstrip("/")


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("kind") == "Pod" or "template" not in obj.get("spec", {}):
        spec: dict[str, Any] = obj.get("spec", {})
        return spec
    template: dict[str, Any] = obj["spec"]["template"].get("spec", {})
    return template


def _images_check(config: StackConfig, workloads: list[dict[str, Any]]) -> Finding:
    """Every image in the toolkit's namespaces is a digest from an allowed registry."""
    allowed = config.residency.allowed_registries
    images: dict[str, str] = {}
    for workload in workloads:
        pod = _pod_spec(workload)
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            images[f"{_name(workload)}/{container.get('name')}"] = str(container.get("image", ""))
    wrong = {
        where: image or "no image"
        for where, image in images.items()
        if "@sha256:" not in image or not registry_allowed(image, allowed)
    }
    return verdict(
        LAYER,
        CLUSTER,
        "images",
        not wrong,
        "; ".join(f"{w}: {i}" for w, i in wrong.items()) or f"{len(images)} image(s), all pinned",
        f"a digest (@sha256:) from {', '.join(sorted(allowed))}",
        images=images,
    )


def _telemetry_check(model_name: str, workload: dict[str, Any] | None) -> Finding:
    check = f"telemetry-off:{model_name}"
    expected = ", ".join(f"{k}={v}" for k, v in TELEMETRY_OPT_OUTS.items())
    if workload is None:
        return verdict(LAYER, CLUSTER, check, False, "no Deployment", expected)
    leaky = {
        str(container.get("name")): missing
        for container in _pod_spec(workload).get("containers", [])
        if (missing := missing_opt_outs(container_env(container)))
    }
    observed = "; ".join(f"{c} missing {', '.join(m)}" for c, m in leaky.items()) or "all set"
    return verdict(LAYER, CLUSTER, check, not leaky, observed, expected, workload=_name(workload))


def _scaled_object_check(
    model_name: str, served: str, scaled: dict[str, dict[str, Any]]
) -> Finding:
    obj = scaled.get(model_name)
    expected = f"minReplicaCount 0, scaling Deployment {model_name}, trigger model {served}"
    if obj is None:
        return verdict(
            LAYER, CLUSTER, f"scale-to-zero:{model_name}", False, "no ScaledObject", expected
        )
    spec = obj.get("spec", {})
    triggers = [t.get("metadata", {}).get(METADATA_MODEL_KEY) for t in spec.get("triggers", [])]
    target = spec.get("scaleTargetRef", {}).get("name")
    minimum = spec.get("minReplicaCount", 0)  # KEDA's default is 0
    ok = minimum == 0 and target == model_name and served in triggers
    observed = f"minReplicaCount {minimum}, scaling {target}, trigger models {triggers}"
    return verdict(LAYER, CLUSTER, f"scale-to-zero:{model_name}", ok, observed, expected)


def _scheduled_model_pods(objects: ClusterObjects) -> list[dict[str, Any]]:
    return [
        pod
        for pod in _items(objects.pods)
        if pod.get("metadata", {}).get("namespace", MODELS_NAMESPACE) == MODELS_NAMESPACE
        and pod.get("spec", {}).get("nodeName")
    ]


def _placement_check(config: StackConfig, objects: ClusterObjects) -> Finding:
    """Model pods ran only on nodes labelled with an allowed country."""
    countries = {
        n.get("metadata", {}).get("name"): n.get("metadata", {})
        .get("labels", {})
        .get(COUNTRY_LABEL)
        for n in _items(objects.nodes)
    }
    pods = _scheduled_model_pods(objects)
    if not pods:
        return skipped(LAYER, CLUSTER, "placement", "no model pod is scheduled (scaled to zero)")
    allowed = config.residency.allowed_countries
    placed = {_name(pod): pod["spec"]["nodeName"] for pod in pods}
    outside = {
        pod: f"on {node} ({countries.get(node) or 'no country label'})"
        for pod, node in placed.items()
        if not country_allowed(countries.get(node), allowed)
    }
    return verdict(
        LAYER,
        CLUSTER,
        "placement",
        not outside,
        "; ".join(f"{p} {where}" for p, where in outside.items()) or f"{len(pods)} pod(s) inside",
        "a node labelled with a country in residency.allowedCountries",
        nodes={pod: f"{node} ({countries.get(node)})" for pod, node in placed.items()},
    )


def _flag_values(args: list[str]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for arg in args:
        flag, _, value = arg.partition("=")
        # compared without case, so that a differently spelled copy of a flag counts as a conflict
        values.setdefault(flag.lower(), []).append(value)
    return values


def _traefik_check(config: StackConfig, objects: ClusterObjects) -> Finding:
    """The edge's timeouts as Traefik runs them: the flags the plan passes through the packaged
    chart's ``additionalArguments``, on the live Deployment's container, each with one value."""
    check = "traefik-timeouts"
    planned = traefik_arguments(InferenceStackSpec.from_stack(config))
    if not planned:
        return skipped(LAYER, CLUSTER, check, "the plan sets no Traefik flags")
    expected = " ".join(planned)
    deployment = next(
        (
            d
            for d in _items(objects.system_deployments)
            if d.get("metadata", {}).get("name") == TRAEFIK_DEPLOYMENT
            and d.get("metadata", {}).get("namespace", SYSTEM_NAMESPACE) == SYSTEM_NAMESPACE
        ),
        None,
    )
    if deployment is None:
        observed = f"no Deployment {SYSTEM_NAMESPACE}/{TRAEFIK_DEPLOYMENT}"
        return verdict(LAYER, CLUSTER, check, False, observed, expected)
    containers = _pod_spec(deployment).get("containers", [])
    running = _flag_values([str(a) for c in containers for a in c.get("args", [])])
    wrong = []
    for flag, value in _flag_values(planned).items():
        seen = running.get(flag, [])
        if seen != value:
            wrong.append(f"{flag}={'|'.join(seen) if seen else '(absent)'}")
    observed = ", ".join(wrong) if wrong else "all set"
    return verdict(LAYER, CLUSTER, check, not wrong, observed, expected)


# The API server classes a pod BestEffort when no container requests or limits CPU or memory:
# the kubelet evicts such pods first under memory pressure.
BEST_EFFORT = "BestEffort"


def _qos_check(objects: ClusterObjects) -> Finding:
    running = {
        _name(pod): pod.get("status", {}).get("qosClass") or "unreported"
        for pod in _items(objects.pods)
        if pod.get("metadata", {}).get("namespace") == MODELS_NAMESPACE
        and MODEL_LABEL in pod.get("metadata", {}).get("labels", {})
        and pod.get("status", {}).get("phase") == "Running"
    }
    if not running:
        return skipped(LAYER, CLUSTER, "qos", "no model pod is running (scaled to zero)")
    wrong = {pod: qos for pod, qos in running.items() if qos in (BEST_EFFORT, "unreported")}
    return verdict(
        LAYER,
        CLUSTER,
        "qos",
        not wrong,
        "; ".join(f"{p} {q}" for p, q in wrong.items()) or ", ".join(sorted(set(running.values()))),
        "Burstable or Guaranteed (CPU and memory requested)",
        pods=running,
    )


def inference_cluster_checks(config: StackConfig, objects: ClusterObjects) -> list[Finding]:
    """Judge the deployed inference objects (pure), one result per check of
    :func:`cluster_checks`: every model scales to zero through KEDA and keeps telemetry off,
    every image is a digest from an allowed registry, model pods ran only on nodes inside the
    residency policy and are not BestEffort, and on K3s the packaged Traefik runs with the edge
    timeouts the plan set."""
    ours = {MODELS_NAMESPACE, GATEWAY_NAMESPACE, WEIGHTS_NAMESPACE}
    scaled = {
        o["metadata"]["name"]: o
        for o in _items(objects.scaled_objects)
        if o.get("metadata", {}).get("namespace") == MODELS_NAMESPACE
    }
    deployments = {
        o["metadata"]["name"]: o
        for o in _items(objects.deployments)
        if o.get("metadata", {}).get("namespace") == MODELS_NAMESPACE
        and MODEL_LABEL in o.get("metadata", {}).get("labels", {})
    }
    results = [verdict(LAYER, CLUSTER, "cluster-api", True, "answered", "the API answers")]
    for model in config.inference.models:
        results.append(_scaled_object_check(model.name, model.served, scaled))
        results.append(_telemetry_check(model.name, deployments.get(model.name)))
    workloads = [
        o
        for o in [*_items(objects.deployments), *_items(objects.daemon_sets), *_items(objects.pods)]
        if o.get("metadata", {}).get("namespace") in ours
    ]
    results += [
        _images_check(config, workloads),
        _placement_check(config, objects),
        _qos_check(objects),
    ]
    if config.k3s.install:
        results.append(_traefik_check(config, objects))
    return results


def cluster_not_judged(config: StackConfig, observed: str, expected: str) -> list[Finding]:
    """The cluster API could not be read: that one failure, and every other planned cluster
    check skipped for it."""
    planned = [c.name for c in cluster_checks(config) if c.name != "cluster-api"]
    return [
        verdict(LAYER, CLUSTER, "cluster-api", False, observed, expected),
        *[skipped(LAYER, CLUSTER, name, "the cluster API was not read") for name in planned],
    ]
