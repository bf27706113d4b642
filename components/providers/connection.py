"""What the dynamic providers share: the pinned SSH target and settings that resource properties
name, the check for required inputs, and log lines on stderr.

Imports of the executor happen inside the functions: they run in the provider process only.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from pulumi.dynamic import CheckFailure


def ssh_settings(props: dict[str, Any]) -> Any:
    """The ``SshDefaults`` carried in ``props["ssh"]`` (the model's defaults when absent)."""
    from components.config.models import SshDefaults  # noqa: PLC0415 - provider process only

    return SshDefaults.model_validate(props.get("ssh") or {})


def host_target(props: dict[str, Any]) -> Any:
    """The ``HostTarget`` (address, user, key, pinned host key) that ``props`` describe."""
    from components.execution.ssh import HostTarget  # noqa: PLC0415 - provider process only

    return HostTarget(
        name=str(props["host"]),
        address=str(props["address"]),
        port=int(props["port"]),
        user=str(props["user"]),
        private_key=str(props["privateKey"]),
        host_key=props.get("hostKey") or None,
        base_dir=str(props.get("baseDir") or "."),
    )


def missing_inputs(news: dict[str, Any], required: Iterable[str]) -> list[CheckFailure]:
    """One failure per required input that is absent or empty."""
    return [CheckFailure(key, f"{key} is required") for key in required if not news.get(key)]


def connection_failures(news: dict[str, Any], required: Iterable[str]) -> list[CheckFailure]:
    """The inputs of a resource that reaches a host over SSH, checked before any connection:
    each required one present, the port a TCP port."""
    failures = missing_inputs(news, required)
    port = news.get("port")
    if port is not None and not (isinstance(port, int | float) and 0 < int(port) < 65536):
        failures.append(CheckFailure("port", "expected a TCP port 1-65535"))
    return failures


def log_line(prefix: str, line: str) -> None:
    """One line on stderr, which the Pulumi CLI shows for dynamic providers (there is no engine
    connection in the provider process, so ``pulumi.log`` is not available there)."""
    sys.stderr.write(f"{prefix}: {line}\n")
    sys.stderr.flush()
