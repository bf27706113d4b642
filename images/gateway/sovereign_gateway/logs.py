"""Structured logs: one JSON object per line on stderr; request records on their own stream."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

_records: TextIO = sys.stdout


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
