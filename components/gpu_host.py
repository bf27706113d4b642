"""``GpuHost``: one bare-metal server taken from bare OS to a GPU node, step by step over SSH."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi
from pydantic import Field

from components.config.models import HostSpec, Model, StackConfig
from components.nvme_weight_cache import NvmeWeightCache, NvmeWeightCacheSpec
from components.plan.cluster import node_labels
from components.plan.host_steps import render_host_steps
from components.wiring import host_step

CACHE_STEP = "40-nvme-cache"

StepKey = tuple[str, str]  # (host name, step name)


class GpuHostSpec(Model):
    """One host of a stack plus the stack it belongs to (pins, cache layout, SSH behaviour)."""

    host: HostSpec
    stack: StackConfig
    project_dir: str = Field(default=".")


class GpuHost(pulumi.ComponentResource):
    """A GPU node: preflight, base OS, NVIDIA driver and CUDA, the NVMe weight cache, K3s, firewall.

    Resources (children, run strictly in order, each a ``HostStep`` named ``<name>-NN-step``):
    every step of ``render_host_steps`` for this host; the cache step sits inside an
    ``NvmeWeightCache`` child named ``<name>-cache``.

    Outputs: ``node_name``, ``node_labels``, ``facts`` (what the steps found when they last ran,
    by key: the rollout's record of the host, such as its OS, kernel, driver and cache device;
    each key belongs to one step, so merging the steps' facts loses none), ``cache_mount_point``.

    Steps that wait for a step on another host (a joining K3s node waits for the first server)
    find it in ``peer_steps``; ``Fleet`` builds the hosts in rollout order and passes them.

    Example::

        from components.config import load_stack_file
        from components.gpu_host import GpuHost, GpuHostSpec
        stack = load_stack_file("stacks/Pulumi.staging.yaml")
        node = GpuHost("stg-gpu-1", GpuHostSpec(host=stack.hosts[0], stack=stack))
    """

    def __init__(
        self,
        name: str,
        spec: GpuHostSpec,
        opts: pulumi.ResourceOptions | None = None,
        secret_env: dict[str, pulumi.Input[str]] | None = None,
        peer_steps: Mapping[StepKey, pulumi.Resource] | None = None,
    ) -> None:
        stack, host = spec.stack, spec.host
        # where the host is, as inputs: the residency policy pack checks them at preview time
        placement = {
            "country": host.country,
            "datacenter": host.datacenter,
            "provider": host.provider,
            "role": host.role,
        }
        super().__init__("sovereign:gpu_host:GpuHost", name, placement, opts)
        peers = peer_steps or {}
        previous: list[pulumi.Resource] = []
        facts: list[pulumi.Output[Any]] = []
        self.cache: NvmeWeightCache | None = None
        self.steps: list[pulumi.Resource] = []
        # this host's steps by (host, step), for the hosts built after it
        self.step_index: dict[StepKey, pulumi.Resource] = {}
        for step in render_host_steps(stack, host):
            waits = []
            for other in step.waits_for:
                if other not in peers:
                    raise ValueError(
                        f"{host.name}/{step.name} waits for {other[0]}/{other[1]}, which is not "
                        "built yet: build the hosts through Fleet (rollout order)"
                    )
                waits.append(peers[other])
            depends = pulumi.ResourceOptions(parent=self, depends_on=[*previous, *waits])
            resource: pulumi.Resource
            if step.name == CACHE_STEP:
                self.cache = NvmeWeightCache(
                    f"{name}-cache",
                    NvmeWeightCacheSpec(
                        host=host, cache=stack.cache, ssh=stack.ssh, project_dir=spec.project_dir
                    ),
                    depends,
                    step=step,
                )
                facts.append(self.cache.step.facts)
                previous = [self.cache]
                resource = self.cache.step
            else:
                resource = host_step(
                    f"{name}-{step.name}",
                    host,
                    step,
                    stack.ssh,
                    spec.project_dir,
                    depends,
                    secret_env,
                )
                facts.append(resource.facts)
                previous = [resource]
            self.steps.append(resource)
            self.step_index[(host.name, step.name)] = resource
        self.last_step: pulumi.Resource | None = previous[0] if previous else None
        self.node_name: pulumi.Output[str] = pulumi.Output.from_input(host.name)
        self.node_labels: pulumi.Output[dict[str, str]] = pulumi.Output.from_input(
            node_labels(stack, host)
        )
        self.facts: pulumi.Output[dict[str, str]] = pulumi.Output.all(*facts).apply(_merge_facts)
        self.cache_mount_point: pulumi.Output[str] | None = (
            self.cache.mount_point if self.cache else None
        )
        self.register_outputs(
            {
                "node_name": self.node_name,
                "node_labels": self.node_labels,
                "facts": self.facts,
                "cache_mount_point": self.cache_mount_point,
            }
        )


def _merge_facts(per_step: list[dict[str, str] | None]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for facts in per_step:
        merged.update(facts or {})
    return merged
