"""Plumbing for tests and benchmarks that start real server processes on loopback: a free port to
give a process, polling for a condition, and the wait until the process listens on its port."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts_connections(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """Whether a TCP connection to ``host:port`` is accepted now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[..., object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds pass (one last look)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_for_listener(
    process: subprocess.Popen[bytes],
    port: int,
    timeout: float,
    host: str = LOOPBACK,
    interval: float = 0.05,
) -> bool:
    """True once ``process`` accepts on ``host:port``; False when it exits first or ``timeout``
    seconds pass (the caller says which, with the process's own output)."""
    wait_until(
        lambda: process.poll() is not None or accepts_connections(port, host, timeout=0.5),
        timeout,
        interval,
    )
    return process.poll() is None and accepts_connections(port, host, timeout=0.5)
