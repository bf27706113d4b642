"""What the gateway's parts share while it runs: the route table and keys in use, each model's
readiness, the request counts and the meter. The route reload replaces the table and keys here;
the HTTP surface, admission and forwarding read them on every request."""

from __future__ import annotations

from dataclasses import dataclass, field

from sovereign_gateway.auth import ApiKeys
from sovereign_gateway.counts import Counts
from sovereign_gateway.metering import Metering
from sovereign_gateway.readiness import ModelReadiness
from sovereign_gateway.routes import RouteTable
from sovereign_gateway.settings import Settings


@dataclass
class ServingState:
    """The state one gateway process serves from."""

    settings: Settings
    routes: RouteTable
    api_keys: ApiKeys | None
    metering: Metering
    counts: Counts
    # exactly the models of ``routes`` (the route reload keeps them in step)
    models: dict[str, ModelReadiness] = field(default_factory=dict)
    draining: bool = False

    @classmethod
    def starting(
        cls, settings: Settings, routes: RouteTable, api_keys: ApiKeys | None
    ) -> ServingState:
        """The state before any request: the table's metering, no counts, no models yet."""
        metering = Metering(routes.metering.price_per_gpu_hour, routes.metering.currency)
        return cls(settings, routes, api_keys, metering, Counts(on_change=metering.on_count_change))
