"""The Pulumi program: load the stack's config, build the components, export what verification needs."""

from pathlib import Path

import pulumi

from components.config import load_pulumi_config
from components.gpu_host import GpuHost, GpuHostSpec

project_dir = Path.cwd()
stack = load_pulumi_config(project_dir)

hosts = {
    host.name: GpuHost(host.name, GpuHostSpec(host=host, stack=stack, project_dir=str(project_dir)))
    for host in stack.hosts
}

pulumi.export("environment", stack.environment)
pulumi.export(
    "hosts",
    [
        {
            "name": host.name,
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
