"""The Pulumi program: load the stack's config, build the components, export what verification needs."""

from pathlib import Path

import pulumi

from components.config import load_pulumi_config
from components.gpu_host import GpuHost, GpuHostSpec, rollout_order

project_dir = Path.cwd()
stack = load_pulumi_config(project_dir)

secret_env: dict[str, pulumi.Input[str]] = {}
if stack.k3s_token is not None:
    secret_env["K3S_TOKEN"] = pulumi.Output.secret(stack.k3s_token.get_secret_value())

fleet_steps: dict[tuple[str, str], pulumi.Resource] = {}
hosts = {
    host.name: GpuHost(
        host.name,
        GpuHostSpec(host=host, stack=stack, project_dir=str(project_dir)),
        secret_env=secret_env,
        fleet_steps=fleet_steps,
    )
    for host in rollout_order(stack)
}

pulumi.export("environment", stack.environment)
pulumi.export(
    "hosts",
    [
        {
            "name": host.name,
            "role": host.role,
            "address": host.address,
            "port": host.ssh.port,
            "user": host.ssh.user,
            "hostKey": host.ssh.host_key,
            "country": host.country,
            "datacenter": host.datacenter,
        }
        for host in stack.hosts
    ],
)
pulumi.export("facts", {name: node.facts for name, node in hosts.items()})
