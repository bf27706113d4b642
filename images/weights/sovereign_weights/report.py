"""What the tool says while it works: a progress line per file on a terminal, JSON lines otherwise.

The final one-line verdict is printed by the command itself; this module carries the events in
between. Nothing here ever sees a credential.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

from sovereign_weights.layout import check_segment

_TTY_REFRESH_SECONDS = 0.2
_LOG_PROGRESS_SECONDS = 10.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Reporter:
    """Thread-safe event sink. ``tty=None`` decides from the stream."""

    def __init__(self, command: str, stream: TextIO | None = None, tty: bool | None = None):
        self.command = check_segment(command, "command")
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._last_log = 0.0
        self._line_open = False

    def event(self, event: str, message: str, **fields: object) -> None:
        """One thing that happened: a line on a terminal, a JSON object per line otherwise."""
        with self._lock:
            if self.tty:
                self._end_line()
                self.stream.write(f"{message}\n")
            else:
                record = {
                    "ts": round(time.time(), 3),
                    "cmd": self.command,
                    "event": event,
                    "msg": message,
                    **fields,
                }
                self.stream.write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
            self.stream.flush()

    def progress(self, path: str, done: int, total: int, started: float) -> None:
        """Bytes of ``path`` on disk so far; redrawn in place on a terminal, logged every 10 s."""
        now = time.monotonic()
        with self._lock:
            if self.tty:
                if now - self._last_draw < _TTY_REFRESH_SECONDS and done < total:
                    return
                self._last_draw = now
                rate = done / max(now - started, 1e-6)
                percent = 100.0 * done / total if total else 100.0
                line = (
                    f"{path}  {percent:5.1f}%  {human_bytes(done)} / {human_bytes(total)}  "
                    f"{human_bytes(rate)}/s"
                )
                self.stream.write(f"\r\x1b[2K{line}")
                self._line_open = True
                self.stream.flush()
                return
            if now - self._last_log < _LOG_PROGRESS_SECONDS:
                return
            self._last_log = now
        self.event("progress", f"{path}: {done}/{total} bytes", file=path, done=done, total=total)

    def _end_line(self) -> None:
        if self._line_open:
            self.stream.write("\n")
            self._line_open = False
