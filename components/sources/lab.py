"""``lab``: a QEMU guest that ``sovereign lab up`` started on this machine.

The lab's inventory (the typed model of ``components.sources.inventory``, named by the stack's
``inventory``) records each running guest's address, SSH port, user, key and host key; the guest's
connection comes from there, read through the same model the config loader validates it with.
A stack host the inventory does not list has not been started: it is refused here, before anything
connects to it. Without an inventory file (a preview before ``lab up``), the host keeps the stack's
address and no pin, and its first step is refused for the missing pin.
"""

from __future__ import annotations

from pathlib import Path

from components.config.loader import read_inventory
from components.config.models import HostSpec, host_address
from components.sources.connection import HostConnection, OrderContext, placement_of
from components.sources.inventory import Inventory


def connect(host: HostSpec, context: OrderContext) -> HostConnection:
    reference = context.stack.inventory
    path = Path(context.project_dir) / reference if reference else None
    if path is None or not path.exists():
        return HostConnection.of(host, host_address(host), host.ssh.host_key)
    entry = read_inventory(path, Inventory).by_name(host.name)
    if entry is None:
        raise ValueError(
            f"{host.name}: a lab host the lab's inventory ({reference}) does not list: start it "
            "with `sovereign lab up` first"
        )
    return HostConnection(
        entry.address,
        entry.host_key,
        entry.port,
        entry.user,
        f"file:{entry.private_key}",
        placement={**placement_of(host), "nvme": list(entry.nvme)},
    )
