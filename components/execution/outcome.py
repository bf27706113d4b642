"""What a step run means: parse the protocol lines a step prints (pure, testable with a string)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from components.plan.host_steps import EXIT_OK, EXIT_REBOOT_REQUIRED, EXIT_REFUSED

Result = Literal["changed", "unchanged", "drift"]

# The protocol tags a step prints on stdout (see host-setup/_lib.sh.j2).
FACT_TAG = "SOVEREIGN-FACT"
CHANGE_TAG = "SOVEREIGN-CHANGE"
DRIFT_TAG = "SOVEREIGN-DRIFT"
REFUSED_TAG = "SOVEREIGN-REFUSED"
REBOOT_TAG = "SOVEREIGN-REBOOT"
RESULT_TAG = "SOVEREIGN-RESULT"
PROTOCOL_TAGS = (FACT_TAG, CHANGE_TAG, DRIFT_TAG, REFUSED_TAG, REBOOT_TAG, RESULT_TAG)


def redact_protocol_line(line: str, redact: Callable[[str], str]) -> str:
    """``redact`` applied to what a protocol line carries, never to its tag (nor to the fixed
    word of a result line), so that a short secret cannot break the protocol."""
    tag, separator, rest = line.partition(" ")
    if tag == RESULT_TAG:
        return line
    if tag in PROTOCOL_TAGS:
        return tag + separator + redact(rest)
    return redact(line)


class StepError(Exception):
    """A step did not complete; the message says which host, which step, and why."""


class StepRefused(StepError):
    """A precondition failed on the host (exit 3); nothing unsafe was done."""


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
        if tag == FACT_TAG:
            key, _, value = rest.partition("=")
            facts[key] = value
        elif tag == CHANGE_TAG:
            changes.append(rest)
        elif tag == DRIFT_TAG:
            drift = rest
        elif tag == REFUSED_TAG:
            refused = rest
        elif tag == REBOOT_TAG:
            reboot = rest
        elif tag == RESULT_TAG and rest in ("changed", "unchanged", "drift"):
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
