"""What a step run means: parse the protocol lines a step prints (pure, testable with a string)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.plan.host_steps import EXIT_OK, EXIT_REBOOT_REQUIRED, EXIT_REFUSED

Result = Literal["changed", "unchanged", "drift"]


class StepError(Exception):
    """A step did not complete; the message says which host, which step, and why."""


class StepRefused(StepError):
    """A precondition failed on the host (exit 3); nothing unsafe was done."""


class StepFailed(StepError):
    """The step script failed unexpectedly (any other non-zero exit)."""


class HostUnreachable(StepError):
    """SSH could not be established within the configured retries."""


class HostKeyMismatch(StepError):
    """The host presented another key than the one pinned in the stack. Never retried."""


@dataclass(frozen=True)
class StepOutcome:
    """A finished step: changed/unchanged (or drift in check mode) and what it found."""

    result: Result
    facts: dict[str, str] = field(default_factory=dict)
    changes: tuple[str, ...] = ()
    drift: str | None = None
    rebooted: bool = False


@dataclass(frozen=True)
class ParsedOutput:
    result: Result | None
    facts: dict[str, str]
    changes: tuple[str, ...]
    drift: str | None
    refused: str | None
    reboot: str | None


def parse_step_output(stdout: str) -> ParsedOutput:
    """Read the ``SOVEREIGN-*`` protocol lines; anything else on stdout is ignored."""
    facts: dict[str, str] = {}
    changes: list[str] = []
    result: Result | None = None
    drift = refused = reboot = None
    for raw in stdout.splitlines():
        tag, _, rest = raw.partition(" ")
        if tag == "SOVEREIGN-FACT":
            key, _, value = rest.partition("=")
            facts[key] = value
        elif tag == "SOVEREIGN-CHANGE":
            changes.append(rest)
        elif tag == "SOVEREIGN-DRIFT":
            drift = rest
        elif tag == "SOVEREIGN-REFUSED":
            refused = rest
        elif tag == "SOVEREIGN-REBOOT":
            reboot = rest
        elif tag == "SOVEREIGN-RESULT" and rest in ("changed", "unchanged", "drift"):
            result = rest  # type: ignore[assignment]  # narrowed by the membership test
    return ParsedOutput(result, facts, tuple(changes), drift, refused, reboot)


def interpret_exit(
    where: str, exit_status: int, stdout: str, stderr_tail: str
) -> StepOutcome | Literal["reboot"]:
    """Map a step's exit status and output to an outcome, or raise a clear error."""
    parsed = parse_step_output(stdout)
    if exit_status == EXIT_REBOOT_REQUIRED:
        return "reboot"
    if exit_status == EXIT_REFUSED:
        raise StepRefused(f"{where}: refused: {parsed.refused or stderr_tail.strip()}")
    if exit_status != EXIT_OK:
        detail = stderr_tail.strip() or "(no output)"
        raise StepFailed(f"{where}: failed with exit status {exit_status}: {detail}")
    if parsed.result is None:
        raise StepFailed(
            f"{where}: exited 0 without a SOVEREIGN-RESULT line (was the script cut short?)"
        )
    return StepOutcome(parsed.result, parsed.facts, parsed.changes, parsed.drift)
