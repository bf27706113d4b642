"""The pure plan: from validated config to data (scripts, Kubernetes objects, checks). No I/O."""

from components.plan.checks import Check, host_checks
from components.plan.cluster import kubernetes_objects, node_labels
from components.plan.host_steps import StepPlan, render_host_steps

__all__ = [
    "Check",
    "StepPlan",
    "host_checks",
    "kubernetes_objects",
    "node_labels",
    "render_host_steps",
]
