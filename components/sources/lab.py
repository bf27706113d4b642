"""``lab``: a QEMU guest that ``sovereign lab up`` started on this machine.

The config loader fills each lab host's address, SSH port, user, key and pinned host key from the
lab's inventory (the typed model of ``components.sources.inventory``, named by the stack's
``inventory``). A lab host still without a pin while that inventory exists is one the inventory
does not list, so not started: it is refused here, before anything connects to it. Without an
inventory file (a preview before ``lab up``) the host keeps the stack's address and no pin, and
its first step is refused for the missing pin.
"""

from __future__ import annotations

from pathlib import Path

from components.config.models import HostSpec
from components.sources.connection import HostConnection, OrderContext


def connect(host: HostSpec, context: OrderContext) -> HostConnection:
    reference = context.stack.inventory
    started = host.ssh.host_key is not None
    if not started and reference and (Path(context.project_dir) / reference).exists():
        raise ValueError(
            f"{host.name}: a lab host the lab's inventory ({reference}) does not list: start it "
            "with `sovereign lab up` first"
        )
    return HostConnection.as_stated(host)
