"""The Pulumi program: load the stack's config, build the components, export what users need."""

from pathlib import Path

import pulumi

from components.config import load_pulumi_config
from components.fleet import Fleet, FleetSpec
from components.inference_stack import InferenceStack
from components.k3s_cluster import K3sCluster, K3sClusterSpec
from components.plan.kubernetes import InferenceStackSpec

project_dir = str(Path.cwd())
stack = load_pulumi_config(Path(project_dir))

fleet = Fleet(stack.environment, FleetSpec(stack=stack, project_dir=project_dir))
pulumi.export("environment", stack.environment)
pulumi.export("hosts", fleet.hosts)
pulumi.export("facts", fleet.facts)

if stack.k3s.install:
    cluster = K3sCluster(
        f"{stack.environment}-k3s",
        K3sClusterSpec(stack=stack, project_dir=project_dir),
        pulumi.ResourceOptions(depends_on=fleet.last_steps),
    )
    pulumi.export("kubeconfig", cluster.kubeconfig)
    if stack.inference.models:
        inference = InferenceStack(
            f"{stack.environment}-inference",
            InferenceStackSpec.from_stack(stack),
            pulumi.ResourceOptions(depends_on=[cluster.access]),
            provider=cluster.provider,
        )
        pulumi.export("gatewayUrl", inference.gateway_url)
        pulumi.export("models", inference.models)
