"""The inference stack's Kubernetes objects and Helm releases, as plain data (pure)."""

from components.plan.kubernetes.charts import ChartRelease
from components.plan.kubernetes.plan import InferencePlan, ModelObjects, inference_plan
from components.plan.kubernetes.spec import ClusterNode, InferenceStackSpec

__all__ = [
    "ChartRelease",
    "ClusterNode",
    "InferencePlan",
    "InferenceStackSpec",
    "ModelObjects",
    "inference_plan",
]
