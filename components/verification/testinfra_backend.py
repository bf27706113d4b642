"""A pytest-testinfra backend over the executor's pinned SSH session.

testinfra's own SSH backends trust keys the way OpenSSH configs and ``known_hosts`` say; this one
reuses :class:`~components.execution.ssh.HostSession`, so verification checks run over the same
single connection, with the host key pinned from the stack, as everything else.
"""

from __future__ import annotations

from typing import Any

import testinfra.host
from testinfra.backend.base import BaseBackend, CommandResult

from components.execution.ssh import HostSession

COMMAND_TIMEOUT_SECONDS = 120


class PinnedSessionBackend(BaseBackend):  # type: ignore[misc]
    NAME = "sovereign"

    def __init__(self, session: HostSession, *args: Any, **kwargs: Any) -> None:
        self._session = session
        super().__init__(session.target.name, *args, **kwargs)

    def run(self, command: str, *args: str, **kwargs: Any) -> CommandResult:
        cmd = self.get_command(command, *args)
        result = self._session.run_script(cmd + "\n", timeout=COMMAND_TIMEOUT_SECONDS)
        out = result.stdout + ("\n" if result.stdout else "")
        return self.result(result.exit_status, self.encode(cmd), out, result.stderr_tail)


def testinfra_host(session: HostSession) -> testinfra.host.Host:
    """A testinfra ``host`` object (``host.file``, ``host.service``, ...) over ``session``."""
    backend = PinnedSessionBackend(session)
    host = testinfra.host.Host(backend)
    backend.set_host(host)
    return host
