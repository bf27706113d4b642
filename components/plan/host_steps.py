"""Ordered host-setup steps for one host: rendered scripts, content hashes, and what they need.

A step is data: the executor runs its script in one of three modes (``apply``, ``check``,
``teardown``) and reads the result lines the script prints (see ``host-setup/_lib.sh.j2``).
Nothing here touches a host; this is what ``sovereign render`` writes and unit tests inspect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.config.catalog import GPU_MODELS
from components.config.models import CacheSpec, HostSpec, StackConfig
from components.plan.templates import render_template

# Exit statuses shared by every step script and the executor (one definition, used both sides).
EXIT_OK = 0
EXIT_REFUSED = 3  # a precondition does not hold; the message says what to fix
EXIT_REBOOT_REQUIRED = 100  # the step changed something that needs a reboot; re-run after it

MODES = ("apply", "check", "teardown")


@dataclass(frozen=True)
class StepPlan:
    """One step of one host, ready to run."""

    host: str
    name: str  # "40-nvme-cache", from the template file name
    script: str
    pins: dict[str, str] = field(default_factory=dict)
    secret_env: tuple[str, ...] = ()  # environment variables the executor fills from secrets
    has_teardown: bool = False
    reboot_allowed: bool = False

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256(self.script.encode())
        for key in sorted(self.pins):
            digest.update(f"\0{key}={self.pins[key]}".encode())
        return digest.hexdigest()

    @property
    def order(self) -> int:
        return int(self.name[:2])


@dataclass(frozen=True)
class _StepBuilder:
    template: str
    applies: Callable[[StackConfig, HostSpec], bool]
    variables: Callable[[StackConfig, HostSpec], dict[str, Any]]
    pins: Callable[[StackConfig, HostSpec], dict[str, str]] = lambda _c, _h: {}
    secret_env: tuple[str, ...] = ()
    has_teardown: bool = False
    reboot_allowed: bool = False


def _always(_config: StackConfig, _host: HostSpec) -> bool:
    return True


def _preflight_vars(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    gpu = GPU_MODELS.get(host.gpu.model or "")
    return {
        "expected_gpu_count": host.gpu.count,
        "expected_gpu_model": host.gpu.model or "none",
        "expected_gpu_device_id": gpu.pci_device_id if gpu else "",
        "nvme_ids": [d.id for d in host.nvme],
        "min_memory_mib": 1024,
    }


def _cache_vars_for(cache: CacheSpec, host: HostSpec) -> dict[str, Any]:
    return {
        "nvme_ids": [d.id for d in host.nvme],
        "wipeable_ids": [d.id for d in host.nvme if d.wipe],
        "array_name": cache.array_name,
        "raid_level": cache.raid_level,
        "filesystem": cache.filesystem,
        "mount_point": cache.mount_point,
    }


def _cache_pins_for(cache: CacheSpec) -> dict[str, str]:
    return {"cache.filesystem": cache.filesystem, "cache.mountPoint": cache.mount_point}


def _cache_vars(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    return _cache_vars_for(config.cache, host)


def _cache_pins(config: StackConfig, _host: HostSpec) -> dict[str, str]:
    return _cache_pins_for(config.cache)


CACHE_TEMPLATE = "40-nvme-cache.sh.j2"


def render_cache_step(host: HostSpec, cache: CacheSpec) -> StepPlan:
    """The cache step alone, for ``NvmeWeightCache`` used outside a whole stack."""
    if not host.nvme:
        raise ValueError(f"{host.name}: no nvme drives listed, so there is no cache to build")
    name = CACHE_TEMPLATE.removesuffix(".sh.j2")
    script = render_template(
        CACHE_TEMPLATE, step_name=name, host_name=host.name, **_cache_vars_for(cache, host)
    )
    return StepPlan(
        host=host.name, name=name, script=script, pins=_cache_pins_for(cache), has_teardown=True
    )


STEP_BUILDERS: tuple[_StepBuilder, ...] = (
    _StepBuilder("00-preflight.sh.j2", _always, _preflight_vars),
    _StepBuilder(
        CACHE_TEMPLATE,
        lambda _c, h: bool(h.nvme),
        _cache_vars,
        pins=_cache_pins,
        has_teardown=True,
    ),
)


def render_host_steps(
    config: StackConfig, host: HostSpec, only: tuple[str, ...] | None = None
) -> list[StepPlan]:
    """Every step that applies to ``host`` (or just those named in ``only``), in run order."""
    steps = []
    for builder in STEP_BUILDERS:
        name = builder.template.removesuffix(".sh.j2")
        if only is not None and name not in only:
            continue
        if not builder.applies(config, host):
            continue
        script = render_template(
            builder.template,
            step_name=name,
            host_name=host.name,
            **builder.variables(config, host),
        )
        steps.append(
            StepPlan(
                host=host.name,
                name=name,
                script=script,
                pins=builder.pins(config, host),
                secret_env=builder.secret_env,
                has_teardown=builder.has_teardown,
                reboot_allowed=builder.reboot_allowed,
            )
        )
    return sorted(steps, key=lambda s: s.order)
