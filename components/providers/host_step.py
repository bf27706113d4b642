"""The ``HostStep`` dynamic provider: one host-setup step on one host, run over SSH.

This module path and the class names are part of every stack's state (Pulumi pickles the provider
by reference): moving or renaming them breaks ``pulumi destroy`` of existing stacks. Keep them.

* create / update: run the step in ``apply`` mode; outputs carry what it found (``facts``).
* diff: a changed script hash, pin, secret, runtime input (``env``: the hosts' addresses) or
  connection target (an ordered machine replaced: ``machineId``) means the step runs again.
* read (``pulumi refresh``): run the step in ``check`` mode, a dry run that reports drift
  (a driver upgraded by hand, an unmounted cache) as ``inSync: false`` plus what it would change.
* delete: run the step's teardown where it has one. Teardowns never destroy cache data.

Secrets (``secretEnv``, a Pulumi secret) go to the host only under the names the step declares
(``secretNames``), in every mode: a value under any other name stays in the provider.

Log lines go to stderr, which the Pulumi CLI shows for dynamic providers (there is no engine
connection in the provider process, so ``pulumi.log`` is not available here).
"""

from __future__ import annotations

import base64
import threading
from typing import Any

from pulumi import Input, Output, ResourceOptions
from pulumi.dynamic import (
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from components.plan.step_protocol import Mode
from components.providers.connection import connection_failures, host_target, log_line, ssh_settings

# The inputs that decide whether a step must run again (everything else is bookkeeping).
RERUN_KEYS = (
    "script",
    "contentHash",
    "pins",
    "secretEnv",
    "env",
    "address",
    "port",
    "user",
    "hostKey",
    "machineId",
)
REQUIRED_KEYS = ("host", "step", "script", "contentHash", "address", "port", "user", "privateKey")

_pool_lock = threading.Lock()
_pools: dict[str, Any] = {}


def _session(props: dict[str, Any]) -> Any:
    """The process-wide SSH session for the host in ``props`` (one connection per host)."""
    from components.execution.ssh import SessionPool  # noqa: PLC0415 - provider process only

    settings = ssh_settings(props)
    key = settings.model_dump_json()
    with _pool_lock:
        pool = _pools.setdefault(key, SessionPool(settings))
    return pool.session(host_target(props))


def _log(props: dict[str, Any]) -> Any:
    prefix = f"{props.get('host')}/{props.get('step')}"

    def sink(_stream: str, line: str) -> None:
        log_line(prefix, line)

    return sink


def declared_secrets(props: dict[str, Any]) -> dict[str, str]:
    """The secret values this step declares it needs, and no others.

    State written before ``secretNames`` existed carries only the declared secrets in
    ``secretEnv`` (the wiring filtered them then), so there every name in it counts as declared.
    """
    values = {str(k): str(v) for k, v in (props.get("secretEnv") or {}).items()}
    names = props.get("secretNames")
    declared = set(values) if names is None else {str(n) for n in names}
    return {k: v for k, v in values.items() if k in declared}


def run_step_from_props(props: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """Run the step described by resource properties; return the output properties."""
    from components.execution.ssh import run_step  # noqa: PLC0415

    outcome = run_step(
        _session(props),
        str(props["step"]),
        str(props["script"]),
        mode=mode,
        secret_env=declared_secrets(props),
        payloads={k: base64.b64decode(v) for k, v in (props.get("payloads") or {}).items()},
        reboot_allowed=bool(props.get("rebootAllowed")),
        on_line=_log(props),
        env={str(k): str(v) for k, v in (props.get("env") or {}).items()},
    )
    outs = dict(props)
    outs["result"] = outcome.result
    outs["facts"] = dict(outcome.facts)
    outs["changes"] = list(outcome.changes)
    outs["inSync"] = outcome.result != "drift"
    outs["drift"] = outcome.drift or ""
    outs["rebooted"] = outcome.rebooted
    return outs


def _rerun_value(props: dict[str, Any], key: str) -> Any:
    value = props.get(key)
    return (value or {}) if key == "env" else value


class HostStepProvider(ResourceProvider):
    """CRUD for one step on one host; see the module docstring."""

    serialize_as_secret_always = False

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        return CheckResult(news, connection_failures(news, REQUIRED_KEYS))

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = run_step_from_props(props, "apply")
        return CreateResult(f"{props['host']}/{props['step']}", outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # a step without runtime inputs may carry an empty env or none: the same
        changed = [k for k in RERUN_KEYS if _rerun_value(olds, k) != _rerun_value(news, k)]
        if olds.get("inSync") is False:
            changed.append("inSync")
        replaces = [k for k in ("host", "step") if olds.get(k) != news.get(k)]
        return DiffResult(
            changes=bool(changed or replaces),
            replaces=replaces,
            stables=["host", "step"],
            delete_before_replace=True,
        )

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(run_step_from_props(news, "apply"))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        outs = run_step_from_props(props, "check")
        return ReadResult(id_, outs)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("hasTeardown"):
            run_step_from_props(props, "teardown")


class HostStep(Resource, module="sovereign", name="HostStep"):
    """One step of one host. Outputs: ``result``, ``facts``, ``changes``, ``inSync``, ``drift``."""

    result: Output[str]
    facts: Output[dict[str, str]]
    changes: Output[list[str]]

    def __init__(
        self,
        name: str,
        props: dict[str, Input[Any]],
        opts: ResourceOptions | None = None,
    ) -> None:
        props = {
            "result": None,
            "facts": None,
            "changes": None,
            "inSync": None,
            "drift": None,
            "rebooted": None,
            **props,
        }
        opts = ResourceOptions.merge(opts, ResourceOptions(additional_secret_outputs=["secretEnv"]))
        super().__init__(HostStepProvider(), name, props, opts)
