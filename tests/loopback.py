"""Plumbing for tests and benchmarks that start real server processes on loopback: a free port to
give a process, polling for a condition, and the wait until the process listens on its port."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"


# Ports handed to test servers come from below the kernel's ephemeral range: the kernel's own
# pick (bind to port 0) lies inside it, where any outgoing connection of the test run (the
# gateway opens one per request) may take the port before the server binds it.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_FIRST_TEST_PORT = 10000


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now, outside the ephemeral range (see above)."""
    last = _ephemeral_start() - 1
    for _ in range(200):
        port = random.randint(_FIRST_TEST_PORT, last)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} between {_FIRST_TEST_PORT} and {last}")


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
