"""Gateway replicas share their counts, so each answers KEDA for the whole set.

Each replica serves ``GatewayPeers.WatchCounts`` on its scaler listener and watches every peer the
same way: a long-lived stream that carries a peer's snapshot at once and after each change. A
peer whose stream ends (process gone, connection reset, keepalive timeout) is dropped with all its
counts at once; the watcher reconnects in the background. Peers come from ``--peers`` or from
resolving a headless Service (``--peers-dns``); a replica that finds itself is told apart by its id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from sovereign_gateway.counts import Counts, Pair, PeerCounts
from sovereign_gateway.proto import peers_pb2 as pb
from sovereign_gateway.proto import peers_pb2_grpc as pb_grpc
from sovereign_gateway.readiness import resolve_addresses
from sovereign_gateway.settings import HostPort

log = logging.getLogger(__name__)

# a push carries the latest snapshot; pushes closer together than this are merged into one
_MIN_PUSH_INTERVAL = 0.002

KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
_SERVER_KEEPALIVE_OPTIONS = [
    # peers' pings (KEEPALIVE_OPTIONS) are welcome, on idle connections too
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    # the server pings too: an idle StreamIsActive stream stays alive in connection tracking on
    # the way, and a KEDA or peer that vanished without closing is noticed and its call ended
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


def server_options(
    max_connection_age: float, max_connection_age_grace: float
) -> list[tuple[str, int]]:
    """The scaler listener's options: keepalive both ways, and a maximum connection age.

    Past the age the server sends GOAWAY (new calls go to a fresh connection, through the Service
    to any replica); calls still open get the grace, then end, and KEDA opens its stream again.
    """
    return [
        *_SERVER_KEEPALIVE_OPTIONS,
        ("grpc.max_connection_age_ms", round(max_connection_age * 1000)),
        ("grpc.max_connection_age_grace_ms", round(max_connection_age_grace * 1000)),
    ]


def _to_message(replica_id: str, counts: PeerCounts) -> pb.CountsSnapshot:
    return pb.CountsSnapshot(
        replicaId=replica_id,
        models={
            k: pb.Counts(pending=v.pending, inFlight=v.in_flight) for k, v in counts.models.items()
        },
        tenants={
            k: pb.Counts(pending=v.pending, inFlight=v.in_flight) for k, v in counts.tenants.items()
        },
    )


def _from_message(message: pb.CountsSnapshot) -> PeerCounts:
    return PeerCounts(
        models={k: Pair(v.pending, v.inFlight) for k, v in message.models.items()},
        tenants={k: Pair(v.pending, v.inFlight) for k, v in message.tenants.items()},
    )


class PeerService(pb_grpc.GatewayPeersServicer):
    """Streams this replica's own counts (never its peers') to whoever watches."""

    def __init__(self, replica_id: str, counts: Counts) -> None:
        self._replica_id = replica_id
        self._counts = counts

    async def WatchCounts(  # noqa: N802  (gRPC method name)
        self, request: pb.WatchCountsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.CountsSnapshot]:
        last: PeerCounts | None = None
        while True:
            changed = self._counts.signal.current()
            snapshot = self._counts.snapshot()
            if snapshot != last:
                yield _to_message(self._replica_id, snapshot)
                last = snapshot
                await asyncio.sleep(_MIN_PUSH_INTERVAL)
                if changed.is_set():
                    continue
            await changed.wait()


def add_peer_service(server: grpc.aio.Server, service: PeerService) -> None:
    pb_grpc.add_GatewayPeersServicer_to_server(service, server)  # type: ignore[no-untyped-call]


class PeerWatchers:
    """Keeps one watcher per peer address; ``--peers-dns`` adds and removes addresses over time."""

    def __init__(
        self,
        replica_id: str,
        counts: Counts,
        retry_interval: float,
    ) -> None:
        self._replica_id = replica_id
        self._counts = counts
        self._retry = retry_interval
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._self_addresses: set[str] = set()
        self._dns_task: asyncio.Task[None] | None = None

    def set_addresses(self, addresses: set[str]) -> None:
        """Watch exactly ``addresses`` (``host:port``), minus any found to be this replica."""
        wanted = addresses - self._self_addresses
        for address in list(self._watchers):
            if address not in wanted:
                self._watchers.pop(address).cancel()
                self._counts.drop_peer(address)
        for address in wanted - set(self._watchers):
            self._watchers[address] = asyncio.create_task(
                self._watch(address), name=f"peer {address}"
            )

    def start_dns(self, service: HostPort, interval: float) -> None:
        self._dns_task = asyncio.create_task(self._resolve_loop(service, interval))

    async def _resolve_loop(self, service: HostPort, interval: float) -> None:
        while True:
            try:
                addresses = await resolve_addresses(service.host, service.port)
                self.set_addresses({str(HostPort(address, service.port)) for address in addresses})
            except OSError as error:
                # keep the peers we know; a DNS hiccup is not a peer going away
                log.warning(
                    "peer lookup failed", extra={"peersDns": str(service), "error": str(error)}
                )
            await asyncio.sleep(interval)

    async def _watch(self, address: str) -> None:
        while True:
            try:
                async with grpc.aio.insecure_channel(address, options=KEEPALIVE_OPTIONS) as channel:
                    stub = pb_grpc.GatewayPeersStub(channel)  # type: ignore[no-untyped-call]
                    call = stub.WatchCounts(pb.WatchCountsRequest(replicaId=self._replica_id))
                    async for message in call:
                        if message.replicaId == self._replica_id:
                            log.info("peer address is this replica", extra={"peer": address})
                            self._self_addresses.add(address)
                            self._watchers.pop(address, None)
                            return
                        self._counts.set_peer(address, _from_message(message))
            except grpc.aio.AioRpcError as error:
                log.debug("peer stream ended", extra={"peer": address, "code": str(error.code())})
            self._counts.drop_peer(address)
            await asyncio.sleep(self._retry)

    async def stop(self) -> None:
        tasks = list(self._watchers.values())
        if self._dns_task is not None:
            tasks.append(self._dns_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._watchers.clear()
