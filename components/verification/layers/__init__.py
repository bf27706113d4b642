"""Judging one host's collected facts, layer by layer (pure), one module per layer.

Layers, in order (as the GPU Operator's validator orders them): host, driver, runtime, cache,
k3s, inference, residency; the cluster as a whole is judged by :mod:`.cluster`. Each layer module
owns its part of the collector script (``<layer>.sh``), the pure parse of its sections, and its
judgement. What they report is held to the plan (:func:`components.plan.checks.host_checks`):
every planned check gets exactly one result, a check that cannot be judged is skipped with the
reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from components.config.models import HostSpec, StackConfig
from components.plan.checks import CLUSTER, LAYERS, Check, host_checks
from components.verification.layers import (
    cache,
    driver,
    host,
    inference,
    k3s,
    residency,
    runtime,
)
from components.verification.layers.cache import (
    CACHE_READ_PROBE_MIB,
    CACHE_READ_PROBE_MIN_MIB,
    CACHE_READ_PROBE_SECONDS,
    CacheRead,
    parse_cache_read,
)
from components.verification.layers.cluster import ClusterObjects, inference_cluster_checks
from components.verification.layers.facts import (
    Context,
    HostFacts,
    collector_script,
    parse_sections,
)
from components.verification.layers.runtime import (
    K3S_CONTAINERD_DIR,
    K3S_CONTAINERD_TEMPLATES,
    containerd_default_runtime,
)
from components.verification.results import Finding, skipped, verdict

__all__ = [
    "CACHE_READ_PROBE_MIB",
    "CACHE_READ_PROBE_MIN_MIB",
    "CACHE_READ_PROBE_SECONDS",
    "CLUSTER",
    "K3S_CONTAINERD_DIR",
    "K3S_CONTAINERD_TEMPLATES",
    "LAYER_JUDGES",
    "CacheRead",
    "ClusterObjects",
    "Context",
    "HostFacts",
    "collector_script",
    "containerd_default_runtime",
    "evaluate_host",
    "inference_cluster_checks",
    "not_judged",
    "parse_cache_read",
    "parse_sections",
    "planned_checks",
    "runtime_layer",
]

LAYER_JUDGES: dict[str, Callable[[Context], list[Finding]]] = {
    "host": host.judge,
    "driver": driver.judge,
    "runtime": runtime.judge,
    "cache": cache.judge,
    "k3s": k3s.judge,
    "inference": inference.judge,
    "residency": residency.judge,
}
runtime_layer = runtime.judge
LAYER_SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "host": host.SOURCES,
    "driver": driver.SOURCES,
    "runtime": runtime.SOURCES,
    "cache": cache.SOURCES,
    "k3s": k3s.SOURCES,
    "inference": inference.SOURCES,
    "residency": residency.SOURCES,
}
# A section quoted as evidence is cut here: the report stays readable, the verdict says the rest.
EVIDENCE_CHARS = 4000
# Judged whichever layers are selected: without them nothing else can be.
ALWAYS_JUDGED = ("host.reachable", "host.facts-complete")


def planned_checks(
    config: StackConfig, spec: HostSpec, layers: tuple[str, ...] = LAYERS
) -> list[Check]:
    """The host's planned checks of the selected layers, reachability and completeness always."""
    return [c for c in host_checks(config, spec) if c.layer in layers or c.id in ALWAYS_JUDGED]


def not_judged(
    config: StackConfig, spec: HostSpec, layers: tuple[str, ...], failed: Finding
) -> list[Finding]:
    """One failure for the host, and every other planned check skipped for it: a host that
    could not be judged reads as one line, not one per layer."""
    reason = f"not judged: {failed.layer}.{failed.check} failed"
    return [failed] + [
        skipped(c.layer, spec.name, c.name, reason)
        for c in planned_checks(config, spec, layers)
        if c.id != f"{failed.layer}.{failed.check}"
    ]


def _with_sources(facts: HostFacts, result: Finding) -> Finding:
    """A judged result without evidence of its own gets the sections it was judged from."""
    if result.evidence or result.status == "skip":
        return result
    sources = LAYER_SOURCES.get(result.layer, {})
    names = sources.get(result.check.split(":")[0]) or sources.get("*", ())
    quoted = {name: facts.get(name)[:EVIDENCE_CHARS] for name in names}
    return replace(result, evidence={"facts": quoted}) if quoted else result


def evaluate_host(ctx: Context, layers: tuple[str, ...] = LAYERS) -> list[Finding]:
    """One result per planned check of the selected layers, in plan order."""
    if not ctx.facts.complete:
        failed = verdict(
            "host",
            ctx.host.name,
            "facts-complete",
            False,
            "fact collection did not finish",
            "the fact collection ran to its end",
        )
        reachable = host.reached(ctx)
        rest = not_judged(ctx.config, ctx.host, layers, failed)
        return [reachable, *(r for r in rest if r.check != "reachable")]
    judged = [
        host.reached(ctx),
        verdict("host", ctx.host.name, "facts-complete", True, "complete", "complete"),
    ]
    for layer in layers:
        judged += LAYER_JUDGES[layer](ctx)
    judged = [_with_sources(ctx.facts, r) for r in judged]
    by_id = {f"{r.layer}.{r.check}": r for r in judged}
    planned = planned_checks(ctx.config, ctx.host, layers)
    missing = [
        verdict(c.layer, ctx.host.name, c.name, False, "no judgement for this check", c.expected)
        for c in planned
        if c.id not in by_id
    ]
    order = {c.id: i for i, c in enumerate(planned)}
    ordered = sorted(judged, key=lambda r: order.get(f"{r.layer}.{r.check}", len(order)))
    return ordered + missing
