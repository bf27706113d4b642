"""Pending and in-flight request counts: this replica's own, its peers', and the sums KEDA sees."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Pair:
    """Requests held for a replica (pending) and requests at a replica (in flight)."""

    pending: int = 0
    in_flight: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.in_flight

    def capped(self, ceiling: int) -> Pair:
        """This pair with its total at most ``ceiling`` (pending kept first)."""
        pending = min(self.pending, ceiling)
        return Pair(pending, min(self.in_flight, ceiling - pending))


class ChangeSignal:
    """Wakes every waiter after a change. Waiters take ``current()`` first, then await it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


@dataclass(frozen=True)
class PeerCounts:
    """One peer's last snapshot, by model and by tenant."""

    models: dict[str, Pair]
    tenants: dict[str, Pair]


GaugeHook = Callable[[str, str, int, int], None]
"""Called with (model, tenant, pending delta, in-flight delta) after every local change."""


class Counts:
    """Local counts per (model, tenant), peers' snapshots, and the change signals over both.

    ``signal`` wakes on any change (what peers stream); ``model_signal(model)`` only on changes to
    that model's counts, so that KEDA's many open ``StreamIsActive`` streams, one per model, are
    not all woken by every request of every model.
    """

    def __init__(self, on_change: GaugeHook | None = None) -> None:
        self.signal = ChangeSignal()
        self._model_signals: dict[str, ChangeSignal] = {}
        self._local: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._models: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._tenants: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        self._peers: dict[str, PeerCounts] = {}
        self._on_change = on_change

    def _add(self, model: str, tenant: str, pending: int, in_flight: int) -> None:
        for row in (self._local[(model, tenant)], self._models[model], self._tenants[tenant]):
            row[0] += pending
            row[1] += in_flight
        if self._on_change is not None:
            self._on_change(model, tenant, pending, in_flight)
        self._notify_model(model)
        self.signal.notify()

    def model_signal(self, model: str) -> ChangeSignal:
        """The signal of changes to ``model``'s counts, here or at a peer."""
        signal = self._model_signals.get(model)
        if signal is None:
            signal = self._model_signals[model] = ChangeSignal()
        return signal

    def _notify_model(self, model: str) -> None:
        signal = self._model_signals.get(model)
        if signal is not None:
            signal.notify()

    def _notify_peer_change(self, old: PeerCounts | None, new: PeerCounts | None) -> None:
        before = old.models if old is not None else {}
        after = new.models if new is not None else {}
        for model in before.keys() | after.keys():
            if before.get(model) != after.get(model):
                self._notify_model(model)

    def hold(self, model: str, tenant: str) -> None:
        """A request starts waiting (pending)."""
        self._add(model, tenant, 1, 0)

    def release_hold(self, model: str, tenant: str) -> None:
        """A pending request leaves without being forwarded."""
        self._add(model, tenant, -1, 0)

    def forward(self, model: str, tenant: str) -> None:
        """A pending request is forwarded (pending -> in flight)."""
        self._add(model, tenant, -1, 1)

    def back_to_pending(self, model: str, tenant: str) -> None:
        """A forward found no replica after all (in flight -> pending)."""
        self._add(model, tenant, 1, -1)

    def finish(self, model: str, tenant: str) -> None:
        """An in-flight request is done."""
        self._add(model, tenant, 0, -1)

    def local_model(self, model: str) -> Pair:
        row = self._models.get(model)
        return Pair(row[0], row[1]) if row else Pair()

    def local_tenant(self, tenant: str) -> Pair:
        row = self._tenants.get(tenant)
        return Pair(row[0], row[1]) if row else Pair()

    def local_in_flight_by_tenant(self, model: str) -> dict[str, int]:
        return {
            tenant: row[1]
            for (name, tenant), row in self._local.items()
            if name == model and row[1]
        }

    def snapshot(self) -> PeerCounts:
        """This replica's counts, as peers receive them (zero rows left out)."""
        return PeerCounts(
            models={name: Pair(*row) for name, row in self._models.items() if row[0] or row[1]},
            tenants={name: Pair(*row) for name, row in self._tenants.items() if row[0] or row[1]},
        )

    def set_peer(self, peer: str, counts: PeerCounts) -> None:
        old = self._peers.get(peer)
        self._peers[peer] = counts
        self._notify_peer_change(old, counts)
        self.signal.notify()

    def drop_peer(self, peer: str) -> None:
        """A peer went away: its counts go with it."""
        old = self._peers.pop(peer, None)
        if old is not None:
            self._notify_peer_change(old, None)
            self.signal.notify()

    def peers(self) -> dict[str, PeerCounts]:
        return dict(self._peers)

    def total_model(self, model: str) -> Pair:
        """Pending and in flight for ``model`` over this replica and every live peer."""
        local = self.local_model(model)
        pending, in_flight = local.pending, local.in_flight
        for peer in self._peers.values():
            pair = peer.models.get(model)
            if pair is not None:
                pending += pair.pending
                in_flight += pair.in_flight
        return Pair(pending, in_flight)

    def total_tenant(self, tenant: str) -> int:
        """Requests of ``tenant`` pending or in flight over this replica and every live peer."""
        total = self.local_tenant(tenant).total
        for peer in self._peers.values():
            pair = peer.tenants.get(tenant)
            if pair is not None:
                total += pair.total
        return total
