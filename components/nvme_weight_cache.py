"""``NvmeWeightCache``: a host's NVMe drives as one RAID0 (or single-drive) weights filesystem."""

from __future__ import annotations

from typing import Any

import pulumi
from pydantic import Field

from components.config.models import CacheSpec, HostSpec, Model, SshDefaults
from components.plan.host_steps import StepPlan, render_cache_step
from components.sources.connection import HostConnection
from components.wiring import host_step


class NvmeWeightCacheSpec(Model):
    """Everything the cache needs: the host (with its ``nvme`` drives), the cache layout, SSH."""

    host: HostSpec
    cache: CacheSpec = CacheSpec()
    ssh: SshDefaults = SshDefaults()
    project_dir: str = Field(default=".")


class NvmeWeightCache(pulumi.ComponentResource):
    """The weight cache of one host.

    Resources: one ``HostStep`` (``<name>-40-nvme-cache``) that assembles or creates the array,
    makes the filesystem and mounts it by UUID. Drives holding data are refused unless marked
    ``wipe: true``; ``pulumi destroy`` unmounts and stops the array but keeps the data.

    Outputs: ``mount_point``, ``device``, ``fs_uuid``, ``size_bytes``.

    Example::

        from components.nvme_weight_cache import NvmeWeightCache, NvmeWeightCacheSpec
        cache = NvmeWeightCache("gpu-1-cache", NvmeWeightCacheSpec(host=host_spec))
        pulumi.export("cache", cache.mount_point)
    """

    def __init__(
        self,
        name: str,
        spec: NvmeWeightCacheSpec,
        opts: pulumi.ResourceOptions | None = None,
        step: StepPlan | None = None,
        connection: HostConnection | None = None,
    ) -> None:
        """``step`` is the cache step already rendered with the rest of the host's steps (as
        ``GpuHost`` does); without it the step is rendered here from ``spec``. ``connection``:
        an ordered host's address, host key and machine (see ``components.wiring.step_props``)."""
        super().__init__("sovereign:nvme_weight_cache:NvmeWeightCache", name, None, opts)
        if step is None:
            step = render_cache_step(spec.host, spec.cache)
        elif step.host != spec.host.name:
            raise ValueError(
                f"{name}: the cache step given is {step.host}'s, not {spec.host.name}'s"
            )
        self.step = host_step(
            f"{name}-{step.name}",
            spec.host,
            step,
            spec.ssh,
            spec.project_dir,
            # children do not inherit a component's depends_on: pass it on so the step waits
            pulumi.ResourceOptions(parent=self, depends_on=opts.depends_on if opts else None),
            connection=connection,
        )
        facts: pulumi.Output[Any] = self.step.facts
        self.mount_point: pulumi.Output[str] = facts.apply(
            lambda f: (f or {}).get("cache.mount_point", spec.cache.mount_point)
        )
        self.device: pulumi.Output[str] = facts.apply(lambda f: (f or {}).get("cache.device", ""))
        self.fs_uuid: pulumi.Output[str] = facts.apply(lambda f: (f or {}).get("cache.fs_uuid", ""))
        self.size_bytes: pulumi.Output[str] = facts.apply(
            lambda f: (f or {}).get("cache.size_bytes", "")
        )
        self.register_outputs(
            {
                "mount_point": self.mount_point,
                "device": self.device,
                "fs_uuid": self.fs_uuid,
                "size_bytes": self.size_bytes,
            }
        )
