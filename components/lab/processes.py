"""Starting, finding and stopping guest processes, without ever touching a process the lab did not start.

A lab guest is recognised by its command line naming a file inside the lab's own directory, so a
recycled pid or another user's QEMU is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

PROC = Path("/proc")
_PR_SET_PDEATHSIG = 1
# Guests this process started, kept so that Python neither warns about nor forgets running children.
_started: dict[int, subprocess.Popen[bytes]] = {}


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it when the process that started it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def start_guest_process(argv: list[str], log_file: Path, *, die_with_parent: bool) -> int:
    """Start QEMU in its own session (so a terminal's Ctrl-C does not reach it); return its pid.

    ``die_with_parent`` ties the guest's life to the calling process, for test fixtures: if pytest
    is killed outright, the kernel removes its guests. The call must come from the main thread,
    since the kernel tracks the thread that forked.
    """
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
        )
    _started[process.pid] = process
    return process.pid


def command_line(pid: int) -> list[str]:
    """The process's argv, or an empty list when it is gone or not readable."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_running(pid: int) -> bool:
    """True for a live process; a zombie counts as gone (and is reaped when it is our child)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    if state in {"Z", "X"}:
        _reap_if_child(pid)
        return False
    return True


def _reap_if_child(pid: int) -> None:
    child = _started.pop(pid, None)
    if child is not None:
        child.poll()
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def belongs_to(pid: int, directory: Path) -> bool:
    """True when the live process's command line names a path inside ``directory``."""
    prefix = str(directory.absolute()).rstrip("/") + "/"
    return is_running(pid) and any(prefix in part for part in command_line(pid))


def processes_using(directory: Path) -> list[int]:
    """Pids of live processes whose command line names a path inside ``directory``."""
    pids = [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and belongs_to(pid, directory)]


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_interval_s: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_interval_s)
    return True


def stop_process(pid: int, owner_dir: Path, timeout_s: float, poll_interval_s: float) -> None:
    """SIGTERM a lab process, SIGKILL it if it lingers; a no-op if it is gone or not the lab's."""
    if not belongs_to(pid, owner_dir):
        return
    os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: not is_running(pid), timeout_s, poll_interval_s):
        return
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_running(pid), timeout_s, poll_interval_s)
