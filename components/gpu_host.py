"""``GpuHost``: one bare-metal server taken from bare OS to a GPU node, step by step over SSH."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pulumi
from pydantic import Field

from components.config.models import HostSpec, Model, StackConfig
from components.nvme_weight_cache import NvmeWeightCache, NvmeWeightCacheSpec
from components.plan.cluster import node_labels
from components.plan.host_steps import StepPlan, render_host_steps, runtime_env
from components.sources.connection import HostConnection
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
        connection: HostConnection | None = None,
        addresses: Mapping[str, pulumi.Input[str]] | None = None,
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
        if connection is None:
            if host.ordered:
                raise ValueError(
                    f"{host.name}: ordered from {host.source}: build it through Fleet, or pass "
                    "connection= (the ordered machine's address and host key as outputs)"
                )
            connection = HostConnection.as_stated(host)
        self.connection = connection
        planned, runtime = planned_steps(stack, host, addresses or {})
        peers = peer_steps or {}
        previous: list[pulumi.Resource] = []
        facts: list[pulumi.Output[Any]] = []
        self.cache: NvmeWeightCache | None = None
        self.steps: list[pulumi.Resource] = []
        # this host's steps by (host, step), for the hosts built after it
        self.step_index: dict[StepKey, pulumi.Resource] = {}
        for step in planned:
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
                    connection=connection,
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
                    connection,
                    runtime.get(step.name),
                )
                facts.append(resource.facts)
                previous = [resource]
            self.steps.append(resource)
            self.step_index[(host.name, step.name)] = resource
        self.last_step: pulumi.Resource | None = previous[0] if previous else None
        self.address: pulumi.Output[str] = pulumi.Output.from_input(connection.address)
        self.host_key: pulumi.Output[str | None] = pulumi.Output.from_input(connection.host_key)
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
                "address": self.address,
                "host_key": self.host_key,
                "node_name": self.node_name,
                "node_labels": self.node_labels,
                "facts": self.facts,
                "cache_mount_point": self.cache_mount_point,
            }
        )


def planned_steps(
    stack: StackConfig, host: HostSpec, addresses: Mapping[str, pulumi.Input[str]]
) -> tuple[list[StepPlan], dict[str, pulumi.Output[dict[str, str]]]]:
    """The host's steps, and, for a stack with ordered hosts, what each step reads at run time
    once the orders have returned every address (``addresses``: host name -> the order's output).

    No script depends on an address: the steps come from the stack with placeholders for the
    addresses not known yet, exactly as they run, and what names addresses (the firewall's
    cluster nodes, the K3s join URL and certificate names) reaches each step as its ``env``,
    rendered from the real addresses."""
    pending = [h.name for h in stack.ordered_hosts if h.address is None]
    if not pending:
        return render_host_steps(stack, host), {}
    missing = [name for name in pending if name not in addresses]
    if missing:
        raise ValueError(
            f"{host.name}: the addresses of the ordered hosts {', '.join(missing)} are needed for "
            "its steps: build the hosts through Fleet, or pass addresses="
        )
    planning = stack.with_pending_addresses()
    steps = render_host_steps(planning, planning.host_named(host.name))

    def env(known: dict[str, str]) -> dict[str, dict[str, str]]:
        resolved = stack.with_addresses(known)
        return runtime_env(resolved, resolved.host_named(host.name))

    by_step = pulumi.Output.all(**{name: addresses[name] for name in pending}).apply(env)
    # only the steps that read addresses get them: the others' inputs stay as they were
    return steps, {step.name: by_step.apply(_pick(step.name)) for step in steps if step.env}


def _pick(name: str) -> Callable[[dict[str, dict[str, str]]], dict[str, str]]:
    return lambda by_step: by_step[name]


def _merge_facts(per_step: list[dict[str, str] | None]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for facts in per_step:
        merged.update(facts or {})
    return merged
