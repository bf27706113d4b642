"""Shared wiring helpers: how plan data becomes ``HostStep`` resource properties."""

from __future__ import annotations

from typing import Any

import pulumi

from components.config.models import HostSpec, SshDefaults
from components.plan.host_steps import StepPlan
from components.providers.host_step import HostStep
from components.sources.connection import HostConnection


def step_props(
    host: HostSpec,
    step: StepPlan,
    ssh: SshDefaults,
    project_dir: str,
    secret_env: dict[str, pulumi.Input[str]] | None = None,
    connection: HostConnection | None = None,
    env: pulumi.Input[dict[str, str]] | None = None,
) -> dict[str, pulumi.Input[Any]]:
    """The inputs of one ``HostStep``: what to run, where, and the secrets it needs (as secrets).

    ``connection`` gives the address and pinned host key as inputs (an ordered machine's come
    from its order, with the machine's id); without it they are the stack's. ``env`` is what the
    step reads at run time (the hosts' addresses), an output once the orders have returned them
    (a stack with ordered hosts); without it, the step's own ``env``."""
    missing = [name for name in step.secret_env if not secret_env or name not in secret_env]
    if missing:
        raise ValueError(
            f"{host.name}/{step.name}: no value wired for secret(s) {', '.join(missing)}"
        )
    wanted = {k: v for k, v in (secret_env or {}).items() if k in step.secret_env}
    connection = connection or HostConnection.as_stated(host)
    props: dict[str, pulumi.Input[Any]] = {
        "host": host.name,
        "step": step.name,
        "script": step.script,
        "contentHash": step.content_hash,
        "pins": dict(step.pins),
        "address": connection.address,
        "port": connection.port,
        "user": connection.user,
        "privateKey": connection.private_key,
        "hostKey": connection.host_key,
        "baseDir": project_dir,
        "ssh": ssh.model_dump(mode="json"),
        "hasTeardown": step.has_teardown,
        "rebootAllowed": step.reboot_allowed,
        "payloads": step.payloads_base64(),
        "secretNames": list(step.secret_env),
        "secretEnv": pulumi.Output.secret(wanted),
    }
    # only where there is something: a step without runtime inputs keeps the inputs it had
    if step.env or env is not None:
        props["env"] = env if env is not None else dict(step.env)
    if connection.machine_id is not None:
        props["machineId"] = connection.machine_id
    return props


def host_step(
    resource_name: str,
    host: HostSpec,
    step: StepPlan,
    ssh: SshDefaults,
    project_dir: str,
    opts: pulumi.ResourceOptions,
    secret_env: dict[str, pulumi.Input[str]] | None = None,
    connection: HostConnection | None = None,
    env: pulumi.Input[dict[str, str]] | None = None,
) -> HostStep:
    props = step_props(host, step, ssh, project_dir, secret_env, connection, env)
    if connection is not None and connection.machine:
        # every step waits for the machine, so a destroy runs each teardown before the release
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(depends_on=connection.depends_on)
        )
    return HostStep(resource_name, props, opts)
