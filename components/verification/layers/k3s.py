"""The K3s layer: the pinned version, the node Ready, and every node label the plan sets, as the
node registers them (``/etc/sovereign/node-labels``) and, where this host has a kubeconfig, as the
Node object carries them."""

from __future__ import annotations

import json
from typing import Any

from components.plan.checks import RESIDENCY_LABELS
from components.plan.cluster import node_labels
from components.verification.layers.facts import Context
from components.verification.results import Finding, skipped, verdict

LAYER = "k3s"
SOURCES: dict[str, tuple[str, ...]] = {
    "version": ("k3s_version",),
    "node-ready": ("k3s_node",),
    "label": ("node_labels",),
}
NODE_LABELS_FILE = "/etc/sovereign/node-labels"


def parse_node_labels(text: str) -> dict[str, str]:
    """``key=value`` lines of the node-labels file (pure)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def parse_node(text: str) -> dict[str, Any] | None:
    """The Node object from ``kubectl get node -o json``, or None when the host has none (pure)."""
    if not text:
        return None
    node: dict[str, Any] = json.loads(text)
    return node


def parse_version(text: str) -> str | None:
    """``k3s version v1.31.6+k3s1 (...)`` → ``v1.31.6+k3s1`` (pure)."""
    words = text.split()
    return words[2] if len(words) > 2 else None


def label_check(ctx: Context, layer: str, key: str) -> Finding:
    """One node label, from both places it shows: the file the node registers with, and the
    Node object when this host can read it."""
    wanted = node_labels(ctx.config, ctx.host)[key]
    in_file = parse_node_labels(ctx.facts.get("node_labels")).get(key)
    node = parse_node(ctx.facts.get("k3s_node"))
    on_node = node.get("metadata", {}).get("labels", {}).get(key) if node else None
    seen = {NODE_LABELS_FILE: in_file or "absent"}
    if node is not None:
        seen["Node object"] = on_node or "absent"
    wrong = {where: value for where, value in seen.items() if value != wanted}
    observed = (
        ", ".join(f"{value} in {where}" for where, value in wrong.items())
        if wrong
        else in_file or "absent"
    )
    return verdict(layer, ctx.host.name, f"label:{key}", not wrong, observed, wanted, **seen)


def judge(ctx: Context) -> list[Finding]:
    name, k3s = ctx.host.name, ctx.config.k3s
    if k3s.install:
        observed = parse_version(ctx.facts.get("k3s_version")) or "not installed"
        results = [
            verdict(LAYER, name, "version", observed == k3s.version, observed, k3s.version),
            _node_ready(ctx),
        ]
    else:
        why = "k3s.install is false for this stack"
        results = [skipped(LAYER, name, "version", why), skipped(LAYER, name, "node-ready", why)]
    for key in sorted(node_labels(ctx.config, ctx.host)):
        if key not in RESIDENCY_LABELS:
            results.append(label_check(ctx, LAYER, key))
    return results


def _node_ready(ctx: Context) -> Finding:
    node = parse_node(ctx.facts.get("k3s_node"))
    if node is None:
        return skipped(
            LAYER, ctx.host.name, "node-ready", "no kubeconfig on this host (agents have none)"
        )
    conditions = node.get("status", {}).get("conditions", [])
    ready = [c for c in conditions if c.get("type") == "Ready"]
    return verdict(
        LAYER,
        ctx.host.name,
        "node-ready",
        bool(ready) and ready[0].get("status") == "True",
        ready[0].get("status") if ready else "unknown",
        "True",
    )
