"""Structured logs: one JSON object per line on stderr; request records on their own stream."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_records: TextIO = sys.stdout

# an event that a client (or a flood of them) can repeat is logged at most once this often, with
# the number held back since: one line per event would let a client fill the log
REPEAT_INTERVAL_SECONDS = 10.0
# asyncio's own line when accept() fails for want of descriptors or memory; asyncio writes it for
# every attempt of a burst (thousands a second)
_ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"


def iso_time(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds."""
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int(seconds % 1 * 1000):03d}Z"
    )


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...fields passed as extra=...}``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: str, records: Path | None) -> None:
    """JSON logs on stderr; request records on stdout, or appended to ``records``."""
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log would carry client addresses; request records replace it
    logging.getLogger("aiohttp.access").disabled = True

    global _records  # noqa: PLW0603  (one process-wide record stream, set once at start)
    _records = sys.stdout if records is None else records.open("a", encoding="utf-8")


def write_record(record: dict[str, Any]) -> None:
    """Write one request record (EU AI Act Art. 12 record-keeping): no content, ever.

    Written straight to its stream, one JSON line each, flushed at once.
    """
    _records.write(json.dumps(record, separators=(",", ":")) + "\n")
    _records.flush()


class RepeatLimit:
    """One kind of repeatable event: ``due()`` says whether a line may be written now."""

    def __init__(
        self,
        interval: float = REPEAT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._next_line_at = float("-inf")
        self._held_back = 0

    def due(self) -> int | None:
        """None while lines are held back; else how many were held back since the last one."""
        now = self._clock()
        if now < self._next_line_at:
            self._held_back += 1
            return None
        held_back, self._held_back = self._held_back, 0
        self._next_line_at = now + self._interval
        return held_back


def limit_accept_error_lines(loop: asyncio.AbstractEventLoop) -> None:
    """Make asyncio's "out of system resource" line on a failed accept() one line per
    ``REPEAT_INTERVAL_SECONDS``; every other event-loop error is logged as asyncio would."""
    limit = RepeatLimit()
    log = logging.getLogger("sovereign_gateway.listener")

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_OUT_OF_RESOURCES:
            loop.default_exception_handler(context)
            return
        held_back = limit.due()
        if held_back is not None:
            log.error(
                "cannot accept connections: out of file descriptors or memory",
                extra={"error": str(context.get("exception")), "heldBack": held_back},
            )

    loop.set_exception_handler(handle)


_failures = RepeatLimit()


def log_failure(message: str, error: BaseException | None, **fields: Any) -> None:
    """A fault of the gateway's own while answering a request: one line with the exception (its
    stack in the line's ``exception`` field), at most one per ``REPEAT_INTERVAL_SECONDS`` since a
    client that found the fault can repeat it."""
    held_back = _failures.due()
    if held_back is not None:
        logging.getLogger("sovereign_gateway.service").error(
            message, exc_info=error, extra={**fields, "heldBack": held_back}
        )
