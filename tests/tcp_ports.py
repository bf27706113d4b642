"""Loopback TCP ports that behave as an SSH port does while its host is not ready: one that accepts
connections and never sends a byte (a forwarded port whose sshd has not started), one that accepts
and closes at once. Each counts the connections it accepted, so a test can prove how many attempts
a client made."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from tests.loopback import LOOPBACK


class AcceptingPort:
    """A listener on ``127.0.0.1:port`` that is not an SSH server; use it as a context manager."""

    def __init__(self, *, close_at_once: bool) -> None:
        self._close_at_once = close_at_once
        self._listener = socket.socket()
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen()
        self._listener.settimeout(0.1)  # so the accept loop sees the stop request
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="accepting-port", daemon=True)

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                self._accepted += 1
            if self._close_at_once:
                connection.close()
            else:
                self._held.append(connection)

    def __enter__(self) -> AcceptingPort:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for connection in self._held:
            connection.close()
