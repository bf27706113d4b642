"""The inference layer on one host: the inference pods this host's kubeconfig shows keep
telemetry off and read weights only from allowed object stores (servers only; agents have no
kubeconfig). The cluster-wide judgement is :mod:`components.verification.layers.cluster`."""

from __future__ import annotations

import json
from typing import Any

from components.config.residency import endpoint_allowed
from components.plan.kubernetes.serving import TELEMETRY_OPT_OUTS
from components.verification.layers.facts import Context
from components.verification.results import Finding, skipped, verdict

LAYER = "inference"
SOURCES: dict[str, tuple[str, ...]] = {
    "telemetry-off": ("inference_pods",),
    "object-store": ("inference_pods",),
}
CHECKS = ("telemetry-off", "object-store")


def parse_pods(text: str) -> list[dict[str, Any]] | None:
    """The pods of ``kubectl get pods -o json``, or None when the host could not list them."""
    if not text:
        return None
    pods: list[dict[str, Any]] = json.loads(text).get("items", [])
    return pods


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal environment (values from secrets or fields are not literals)."""
    return {e.get("name"): e.get("value") for e in container.get("env", []) if "value" in e}


def missing_opt_outs(env: dict[str, str]) -> list[str]:
    """The telemetry opt-outs the plan sets that ``env`` lacks."""
    return [k for k, v in TELEMETRY_OPT_OUTS.items() if env.get(k) != v]


def judge(ctx: Context) -> list[Finding]:
    name = ctx.host.name
    if not ctx.config.k3s.install:
        why = "k3s.install is false for this stack"
        return [skipped(LAYER, name, check, why) for check in CHECKS]
    pods = parse_pods(ctx.facts.get("inference_pods"))
    if pods is None:
        why = "no cluster API on this host (agents have no kubeconfig)"
        return [skipped(LAYER, name, check, why) for check in CHECKS]
    if not pods:
        why = "no inference pods are running (scaled to zero)"
        return [skipped(LAYER, name, check, why) for check in CHECKS]
    allowed = ctx.config.residency.allowed_object_store_endpoints
    leaky: dict[str, list[str]] = {}
    endpoints: dict[str, list[str]] = {}
    for pod in pods:
        pod_name = pod.get("metadata", {}).get("name", "?")
        for container in pod.get("spec", {}).get("containers", []):
            env = container_env(container)
            where = f"{pod_name}/{container.get('name')}"
            if missing := missing_opt_outs(env):
                leaky[where] = missing
            used = sorted({v for k, v in env.items() if k and "ENDPOINT" in k.upper() and v})
            if used:
                endpoints[where] = used
    stray = {
        where: [e for e in used if not endpoint_allowed(e, allowed)]
        for where, used in endpoints.items()
    }
    stray = {where: found for where, found in stray.items() if found}
    return [
        verdict(
            LAYER,
            name,
            "telemetry-off",
            not leaky,
            "; ".join(f"{w} missing {', '.join(m)}" for w, m in leaky.items()) or "all set",
            ", ".join(f"{k}={v}" for k, v in TELEMETRY_OPT_OUTS.items()),
            containers=len([c for p in pods for c in p.get("spec", {}).get("containers", [])]),
        ),
        verdict(
            LAYER,
            name,
            "object-store",
            not stray,
            "; ".join(f"{w} uses {', '.join(e)}" for w, e in stray.items())
            or (", ".join(sorted({e for used in endpoints.values() for e in used})) or "none set"),
            "only allowed object-store endpoints",
            endpoints=endpoints,
        ),
    ]
