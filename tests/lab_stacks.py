"""The lab stack pointed at running lab guests: shared by the lab tests and the fleet benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

from components.config import load_stack_file
from components.config.models import CacheDisk, GpuSpec, HostSpec, SshSpec, StackConfig
from components.lab.inventory import LabHost

ROOT = Path(__file__).resolve().parents[1]
# every step that runs without NVIDIA hardware or K3s downloads
LAB_STEPS = ("00-preflight", "10-base", "40-nvme-cache", "60-firewall", "70-probe-env")


@cache
def lab_stack() -> StackConfig:
    return load_stack_file(ROOT / "stacks" / "Pulumi.lab.yaml")


def lab_host_spec(
    entry: LabHost, *, role: str = "server", wipe: bool = True, gpus: int = 0
) -> HostSpec:
    """The lab stack's first host, re-pointed at ``entry`` (its address, key, pinned host key, drives)."""
    return (
        lab_stack()
        .hosts[0]
        .model_copy(
            update={
                "name": entry.name,
                "role": role,
                "address": entry.address,
                "ssh": SshSpec(
                    user=entry.user,
                    port=entry.port,
                    private_key=f"file:{entry.private_key}",
                    host_key=entry.host_key,
                ),
                "nvme": tuple(CacheDisk(id=d, wipe=wipe) for d in entry.nvme),
                "gpu": GpuSpec(model="H100-SXM5-80GB", count=gpus) if gpus else GpuSpec(),
            }
        )
    )


def stack_for(entries: Sequence[LabHost]) -> StackConfig:
    """The lab stack with its hosts replaced by these guests (the first one the K3s server)."""
    hosts = tuple(
        lab_host_spec(entry, role="server" if i == 0 else "agent")
        for i, entry in enumerate(entries)
    )
    return lab_stack().model_copy(update={"hosts": hosts})
