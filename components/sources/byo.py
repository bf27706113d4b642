"""``byo``: a server the team owns or rents; the stack (or an inventory) gives its address and
pinned host key. Nothing is ordered and nothing is released."""

from __future__ import annotations

from components.config.models import HostSpec
from components.sources.connection import HostConnection, OrderContext


def connect(host: HostSpec, _context: OrderContext) -> HostConnection:
    return HostConnection.as_stated(host)
