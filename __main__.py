"""The Pulumi program: load the stack's config, build the components, export what users need."""

from pathlib import Path

import pulumi

from components.config import load_pulumi_config
from components.fleet import Fleet, FleetSpec
from components.inference_stack import InferenceStack
from components.k3s_cluster import K3sCluster, K3sClusterSpec
from components.model_facts import default_manifest_cache, model_facts_for
from components.plan.cluster import first_server
from components.plan.kubernetes import InferenceStackSpec
from components.plan.sizing import size_stack

project_dir = str(Path.cwd())
stack = load_pulumi_config(Path(project_dir))

# Size every model before anything is built: its manifest comes from the model's EU object store at
# preview (kept under .cache/manifests, where `sovereign size` also keeps them), else from that cache.
model_facts, unread = model_facts_for(
    stack, default_manifest_cache(Path(project_dir)), fetch=pulumi.runtime.is_dry_run()
)
sizing = size_stack(stack, model_facts)
for line in unread:
    pulumi.log.warn(f"not sized (no manifest): {line}")
for warning in sizing.warnings:
    pulumi.log.warn(str(warning))
if sizing.problems:
    raise pulumi.RunError("; ".join(str(problem) for problem in sizing.problems))

fleet = Fleet(stack.environment, FleetSpec(stack=stack, project_dir=project_dir))
pulumi.export("environment", stack.environment)
pulumi.export("hosts", fleet.hosts)
pulumi.export("facts", fleet.facts)

if stack.k3s.install:
    cluster = K3sCluster(
        f"{stack.environment}-k3s",
        K3sClusterSpec(stack=stack, project_dir=project_dir),
        pulumi.ResourceOptions(depends_on=fleet.last_steps),
        first_server_connection=fleet.connections[first_server(stack).name],
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
