"""The source of each host: ``connect_host`` turns a host entry into a :class:`HostConnection`,
ordering the machine first where its source is a provider.

Each source's module is imported only when a stack has a host from it (the provider SDKs are
large). Placement is checked here once more before any order: a host built by another program
(without the config boundary) in a place outside the residency policy orders nothing.
"""

from __future__ import annotations

import importlib
from typing import Protocol, get_args

from components.config.errors import Problem
from components.config.models import HostSource, HostSpec
from components.config.residency import country_allowed
from components.sources.connection import HostConnection, OrderContext, with_pinned_host_key

# source -> the module whose ``connect`` reaches (and, for a provider, orders) its hosts: one
# module per source the config knows, named after it
SOURCE_MODULES: dict[str, str] = {
    source: f"components.sources.{source}" for source in get_args(HostSource)
}


class Connect(Protocol):
    def __call__(self, host: HostSpec, context: OrderContext, /) -> HostConnection: ...


def source_connect(source: str) -> Connect:
    """The ``connect`` function of ``source``'s module."""
    if source not in SOURCE_MODULES:
        raise ValueError(
            f"unknown host source {source!r}; expected one of {', '.join(SOURCE_MODULES)}"
        )
    connect: Connect = importlib.import_module(SOURCE_MODULES[source]).connect
    return connect


def connect_host(host: HostSpec, context: OrderContext) -> HostConnection:
    """The host's connection: its address and pinned host key, as inputs, and what was ordered.

    Raises ValueError, before anything is ordered, for a host placed outside the stack's
    residency policy."""
    allowed = context.stack.residency.allowed_countries
    refused = host.location_problems(allowed)
    if not country_allowed(host.country, allowed):
        refused.append(
            Problem(
                "country",
                f"{host.country} is outside the residency policy; expected one of "
                f"{', '.join(sorted(allowed))}",
            )
        )
    if refused:
        index = context.host_index(host)
        raise ValueError(
            "; ".join(f"hosts[{index}].{p.path}: {p.message}" for p in refused)
            + " (nothing was ordered)"
        )
    connection = source_connect(host.source)(host, context)
    return with_pinned_host_key(connection, host, context)
