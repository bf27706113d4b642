"""A minimal synchronous QMP client: the lab drives QEMU's save, restore and hot-plug through it."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class QmpError(RuntimeError):
    """QEMU refused a command, or its monitor did not answer in time."""


class QmpClient:
    """One connection to a guest's QMP socket, capabilities negotiated, events ignored."""

    def __init__(self, sock: socket.socket, reply_timeout_s: float) -> None:
        self._sock = sock
        self._sock.settimeout(reply_timeout_s)
        self._reader = sock.makefile("rb")
        self._read_message()  # the greeting
        self.execute("qmp_capabilities")

    @classmethod
    def connect(
        cls, path: Path, connect_timeout_s: float, reply_timeout_s: float, poll_interval_s: float
    ) -> Self:
        """Connect once QEMU has created the socket, waiting up to ``connect_timeout_s``."""
        deadline = time.monotonic() + connect_timeout_s
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise QmpError(f"no QMP socket at {path} after {connect_timeout_s}s") from exc
                time.sleep(poll_interval_s)
                continue
            return cls(sock, reply_timeout_s)

    def _read_message(self) -> dict[str, Any]:
        try:
            line = self._reader.readline()
        except TimeoutError as exc:
            raise QmpError("QEMU monitor did not answer in time") from exc
        if not line:
            raise QmpError("QEMU closed its monitor (did the guest process exit?)")
        message: dict[str, Any] = json.loads(line)
        return message

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command and return its ``return`` value; raise :class:`QmpError` on error."""
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read_message()
            if "return" in message:
                return message["return"]
            if "error" in message:
                error = message["error"]
                raise QmpError(f"{command}: {error.get('class')}: {error.get('desc')}")
            # anything else is an asynchronous event

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
