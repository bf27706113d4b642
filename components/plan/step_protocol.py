"""The step protocol: how a host-setup script and the executor that runs it talk to each other.

A step runs in one of three modes (:data:`Mode`, from ``$SOVEREIGN_MODE``), prints tagged lines on
stdout (:data:`PROTOCOL_TAGS`: facts, changes, drift, a refusal, a reboot request, the result) and
ends with one of three exit statuses (0, :data:`EXIT_REFUSED`, :data:`EXIT_REBOOT_REQUIRED`). The
scripts get every code, tag and mode name rendered in from here (:func:`template_variables`, used
by ``host-setup/_lib.sh.j2`` and ``_run.sh.j2``); the executor reads them back with
:func:`parse_step_output`. Neither side writes a code or a tag of its own.

The protocol sits in the plan because the plan is the lowest layer both of its sides may import:
the plan renders it into the scripts, and the executor, one layer up, parses what they print.
The stack's configuration (the only layer below) is about what a user writes, not this wire
format. The module imports nothing of the project, so reading it costs the executor nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

Mode = Literal["apply", "check", "teardown"]
MODES: tuple[Mode, ...] = get_args(Mode)
Result = Literal["changed", "unchanged", "drift"]
RESULTS: tuple[Result, ...] = get_args(Result)

EXIT_OK = 0
EXIT_REFUSED = 3  # a precondition does not hold; the message says what to fix
EXIT_REBOOT_REQUIRED = 100  # the step changed something that needs a reboot; re-run after it

# The tags a step prints at the start of a stdout line; anything else on stdout is not protocol.
FACT_TAG = "SOVEREIGN-FACT"  # key=value: something the step found (versions, devices)
CHANGE_TAG = "SOVEREIGN-CHANGE"  # one change made, in words
DRIFT_TAG = "SOVEREIGN-DRIFT"  # check mode: what an apply would change (then the step stops)
REFUSED_TAG = "SOVEREIGN-REFUSED"  # why the step refused (exit EXIT_REFUSED)
REBOOT_TAG = "SOVEREIGN-REBOOT"  # why a reboot is needed (exit EXIT_REBOOT_REQUIRED)
RESULT_TAG = "SOVEREIGN-RESULT"  # the last line of a finished step: one of RESULTS
PROTOCOL_TAGS = (FACT_TAG, CHANGE_TAG, DRIFT_TAG, REFUSED_TAG, REBOOT_TAG, RESULT_TAG)


def template_variables() -> dict[str, Any]:
    """What the templates render the protocol from: every exit code, tag, mode and result name."""
    return {
        "exit_ok": EXIT_OK,
        "exit_refused": EXIT_REFUSED,
        "exit_reboot_required": EXIT_REBOOT_REQUIRED,
        "fact_tag": FACT_TAG,
        "change_tag": CHANGE_TAG,
        "drift_tag": DRIFT_TAG,
        "refused_tag": REFUSED_TAG,
        "reboot_tag": REBOOT_TAG,
        "result_tag": RESULT_TAG,
        "mode_apply": "apply",
        "mode_check": "check",
        "mode_teardown": "teardown",
        "modes_in_words": in_words(MODES),
        "result_changed": "changed",
        "result_unchanged": "unchanged",
        "result_drift": "drift",
    }


def in_words(names: tuple[str, ...]) -> str:
    """``a, b or c``: a list as a message names it."""
    if len(names) < 2:
        return "".join(names)
    return f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class ParsedOutput:
    """What a step's protocol lines said, before its exit status is taken into account."""

    result: Result | None
    facts: dict[str, str]
    changes: tuple[str, ...]
    drift: str | None
    refused: str | None
    reboot: str | None


def parse_step_output(stdout: str) -> ParsedOutput:
    """Read the protocol lines of a step's stdout; anything else on it is ignored."""
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
        elif tag == RESULT_TAG:
            result = _result(rest) or result
    return ParsedOutput(result, facts, tuple(changes), drift, refused, reboot)


def _result(word: str) -> Result | None:
    for result in RESULTS:
        if word == result:
            return result
    return None


def redact_protocol_line(line: str, redact: Callable[[str], str]) -> str:
    """``redact`` applied to what a protocol line carries, never to its tag (nor to the fixed
    word of a result line), so that a short secret cannot break the protocol."""
    tag, separator, rest = line.partition(" ")
    if tag == RESULT_TAG:
        return line
    if tag in PROTOCOL_TAGS:
        return tag + separator + redact(rest)
    return redact(line)
