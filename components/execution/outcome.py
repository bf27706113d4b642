"""What a step run means to the executor: its outcome, or the error that names why it failed.

The protocol itself (exit codes, output tags, the parser) is ``components.plan.step_protocol``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from components.plan.step_protocol import (
    EXIT_OK,
    EXIT_REBOOT_REQUIRED,
    EXIT_REFUSED,
    RESULT_TAG,
    ParsedOutput,
    Result,
    parse_step_output,
    redact_protocol_line,
)

__all__ = [
    "HostKeyMismatch",
    "HostStoppedAnswering",
    "HostUnreachable",
    "ParsedOutput",
    "StepError",
    "StepFailed",
    "StepOutcome",
    "StepRefused",
    "interpret_exit",
    # the protocol's parsers, where the executor has always found them
    "parse_step_output",
    "redact_protocol_line",
]


class StepError(Exception):
    """A step did not complete; the message says which host, which step, and why."""


class StepRefused(StepError):
    """A precondition failed on the host (exit ``EXIT_REFUSED``); nothing unsafe was done."""


class StepFailed(StepError):
    """The step script failed unexpectedly (any other non-zero exit)."""


class HostUnreachable(StepError):
    """SSH could not be established within the configured retries."""


class HostStoppedAnswering(HostUnreachable):
    """The host left SSH keepalives unanswered for the configured bound while something ran on it
    (a hung kernel, a frozen VM). What ran may have been cut short; steps are idempotent, so a
    re-run once the host answers again converges."""


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
            f"{where}: exited {EXIT_OK} without a {RESULT_TAG} line (was the script cut short?)"
        )
    return StepOutcome(parsed.result, parsed.facts, parsed.changes, parsed.drift)
