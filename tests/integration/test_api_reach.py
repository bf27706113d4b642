"""After the firewall step, the machine running the rollout reaches a server's API port only when
its address is in ``k3s.apiAllowedCidrs``.

A second sshd in the guest stands in for the API server on 6443 (the lab image has no other
server; sshd speaks first, so its banner proves the connection got through), and a port
forwarded at run time (QEMU user-mode networking) carries this machine's connections to it: they
arrive in the guest from the user network's gateway, 10.0.2.2, which is not a cluster node, just
as a laptop or CI runner outside the cluster would not be.
"""

from __future__ import annotations

import socket
import time

import pytest

from components.execution.ssh import HostSession, HostTarget, run_step
from components.lab.hosts import forward_port
from components.lab.inventory import LabHost
from components.plan.cluster import K3S_API_PORT
from components.plan.host_steps import render_host_steps
from tests.integration.conftest import TIMEOUTS
from tests.lab_stacks import ROOT, stack_for

pytestmark = pytest.mark.integration

# where connections through QEMU's user-mode network come from, as the guest sees them
USER_NET_GATEWAY = "10.0.2.2"
STAND_IN_UNIT = "sovereign-test-api-stand-in"
# a TCG guest answers within a second or two; a dropped SYN never gets an answer
ANSWER_WITHIN_S = 20.0
SILENCE_FOR_S = 8.0


def first_line_through(port: int, wait_s: float) -> str:
    """The first line the stand-in sends through the forward, or "" if none came within
    ``wait_s`` (the forward accepts locally, then connects to the guest on its own)."""
    deadline = time.monotonic() + wait_s
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as connection:
        received = b""
        while b"\r\n" not in received:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            connection.settimeout(left)
            try:
                chunk = connection.recv(256)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
    return received.split(b"\r\n", 1)[0].decode(errors="replace")


def load_firewall(session: HostSession, lab_host: LabHost, allowed: tuple[str, ...]) -> None:
    base = stack_for([lab_host])
    stack = base.model_copy(
        update={"k3s": base.k3s.model_copy(update={"api_allowed_cidrs": allowed})}
    )
    (firewall,) = render_host_steps(stack, stack.hosts[0], only=("60-firewall",))
    outcome = run_step(session, firewall.name, firewall.script, env=firewall.env)
    assert outcome.result in ("changed", "unchanged")


def test_api_port_is_reachable_from_outside_only_from_allowed_ranges(
    lab_host: LabHost,
) -> None:
    host = stack_for([lab_host]).hosts[0]
    session = HostSession(HostTarget.from_spec(host, ROOT), stack_for([lab_host]).ssh)
    try:
        started = session.run_script(
            f"systemd-run --unit={STAND_IN_UNIT} /usr/sbin/sshd -D -p {K3S_API_PORT}\n"
            # the stand-in answers inside the guest before the outside is tried
            "for _ in $(seq 100); do\n"
            f"  if (echo >/dev/tcp/127.0.0.1/{K3S_API_PORT}) 2>/dev/null; then exit 0; fi\n"
            "  sleep 0.2\n"
            "done\n"
            "exit 1\n",
            timeout=60,
        )
        assert started.exit_status == 0, started.stderr_tail
        port = forward_port(lab_host, K3S_API_PORT, TIMEOUTS)

        # the default: only cluster nodes may reach the API, so this machine gets no answer
        load_firewall(session, lab_host, ())
        assert first_line_through(port, SILENCE_FOR_S) == ""

        # this machine's range allowed: the same forward now reaches the stand-in
        load_firewall(session, lab_host, (f"{USER_NET_GATEWAY}/32",))
        assert first_line_through(port, ANSWER_WITHIN_S).startswith("SSH-2.0-")

        # another range allowed, not this machine's: no answer again
        load_firewall(session, lab_host, ("192.0.2.0/24",))
        assert first_line_through(port, SILENCE_FOR_S) == ""
    finally:
        session.close()
