"""Shared wiring helpers: how plan data becomes ``HostStep`` resource properties."""

from __future__ import annotations

from typing import Any

import pulumi

from components.config.models import HostSpec, SshDefaults
from components.plan.host_steps import StepPlan
from components.providers.host_step import HostStep


def step_props(
    host: HostSpec,
    step: StepPlan,
    ssh: SshDefaults,
    project_dir: str,
    secret_env: dict[str, pulumi.Input[str]] | None = None,
) -> dict[str, pulumi.Input[Any]]:
    """The inputs of one ``HostStep``: what to run, where, and the secrets it needs (as secrets)."""
    missing = [name for name in step.secret_env if not secret_env or name not in secret_env]
    if missing:
        raise ValueError(
            f"{host.name}/{step.name}: no value wired for secret(s) {', '.join(missing)}"
        )
    wanted = {k: v for k, v in (secret_env or {}).items() if k in step.secret_env}
    return {
        "host": host.name,
        "step": step.name,
        "script": step.script,
        "contentHash": step.content_hash,
        "pins": dict(step.pins),
        "address": host.address,
        "port": host.ssh.port,
        "user": host.ssh.user,
        "privateKey": host.ssh.private_key,
        "hostKey": host.ssh.host_key,
        "baseDir": project_dir,
        "ssh": ssh.model_dump(mode="json"),
        "hasTeardown": step.has_teardown,
        "rebootAllowed": step.reboot_allowed,
        "payloads": step.payloads_base64(),
        "secretNames": list(step.secret_env),
        "secretEnv": pulumi.Output.secret(wanted),
    }


def host_step(
    resource_name: str,
    host: HostSpec,
    step: StepPlan,
    ssh: SshDefaults,
    project_dir: str,
    opts: pulumi.ResourceOptions,
    secret_env: dict[str, pulumi.Input[str]] | None = None,
) -> HostStep:
    return HostStep(resource_name, step_props(host, step, ssh, project_dir, secret_env), opts)
