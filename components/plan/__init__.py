"""The pure plan: from validated config to data (scripts, Kubernetes objects, checks). No I/O."""

from components.plan.checks import Check, host_checks
from components.plan.cluster import first_server, node_labels
from components.plan.host_steps import StepPlan, render_host_steps

__all__ = [
    "Check",
    "StepPlan",
    "first_server",
    "host_checks",
    "node_labels",
    "render_host_steps",
]
