"""Gateway replicas share their counts, so each answers KEDA for the whole set.

Each replica serves ``GatewayPeers.WatchCounts`` on its scaler listener and watches every peer the
same way: a long-lived stream that carries a peer's snapshot at once and after each change. A
peer whose stream ends (process gone, connection reset, keepalive timeout) is dropped with all its
counts at once; the watcher reconnects in the background. Peers come from ``--peers`` or from
resolving a headless Service (``--peers-dns``).

A replica that finds itself among its peers learns so from its own listener: each watch sends a
fresh token that only this process knows, and a listener that is asked for its own id with one of
its own tokens answers "this is you". Anyone else who claims the replica's id, as caller or as
peer, is refused.

With mutual TLS on the scaler listener, only a caller whose certificate carries the replicas' name
(``--peer-tls-server-name``) may watch: KEDA's certificate reads KEDA's answers, not the counts.
Peers' watches have their own bound (``--max-peer-streams``), apart from KEDA's streams, so
neither can crowd the other out.

A snapshot is refused whole when a count is above what one replica can honestly hold, by the
route table (:class:`PeerBounds`) or, for names the table does not know, ``--max-peer-count``.
Each replica caps its own snapshot by the same bounds before sending it, so replicas that share a
table never refuse each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import grpc

from sovereign_gateway.counts import Counts, Pair, PeerCounts
from sovereign_gateway.proto import peers_pb2 as pb
from sovereign_gateway.proto import peers_pb2_grpc as pb_grpc
from sovereign_gateway.readiness import resolve_addresses
from sovereign_gateway.routes import RouteTable
from sovereign_gateway.scaler import StreamSlots
from sovereign_gateway.scaler_tls import SERVER_NAME_OVERRIDE_OPTION, caller_names
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


SELF_TOKEN_HEADER: Final = "x-sovereign-self-token"  # noqa: S105  (a header name)
"""Call metadata of a watch: a token only the watching process knows (see the module docstring)."""

SELF_DETAILS: Final = "this is the caller's own replica"
"""The listener's answer to a watch from its own process (status FAILED_PRECONDITION)."""


class PeerCountsRefused(ValueError):
    """A peer's snapshot is not taken: the message says which count, and why."""


@dataclass(frozen=True)
class PeerBounds:
    """The most requests (pending plus in flight) one replica counts for a model or a tenant.

    A model: ``maxPendingRequests`` held, plus ``maxReplicas x targetConcurrency`` in flight.
    KEDA asks for ``ceil(count / targetConcurrency)`` replicas, at most ``maxReplicas``, so a
    count capped there scales exactly as the full one. A tenant: its ``maxConcurrentRequests``,
    which one replica never admits past. Names without a bound here are held to
    ``--max-peer-count`` only.
    """

    models: Mapping[str, int]
    tenants: Mapping[str, int]

    @classmethod
    def from_routes(cls, routes: RouteTable) -> PeerBounds:
        return cls(
            models={
                r.name: r.max_pending_requests + r.max_replicas * r.target_concurrency
                for r in routes.models
                if r.max_replicas is not None
            },
            tenants={
                t.name: t.max_concurrent_requests
                for t in routes.tenants
                if t.max_concurrent_requests is not None
            },
        )

    def cap(self, counts: PeerCounts) -> PeerCounts:
        """``counts`` within these bounds: what this replica tells its peers."""
        return PeerCounts(
            models={k: _capped(v, self.models.get(k)) for k, v in counts.models.items()},
            tenants={k: _capped(v, self.tenants.get(k)) for k, v in counts.tenants.items()},
        )


def _capped(pair: Pair, ceiling: int | None) -> Pair:
    return pair if ceiling is None else pair.capped(ceiling)


def _pairs(
    kind: str, entries: Mapping[str, pb.Counts], max_count: int, ceilings: Mapping[str, int]
) -> dict[str, Pair]:
    pairs: dict[str, Pair] = {}
    for name, value in entries.items():
        # the fields are unsigned: a negative number sent by a forger arrives as about 2^32
        for field, count in (("pending", value.pending), ("inFlight", value.inFlight)):
            if count > max_count:
                raise PeerCountsRefused(
                    f"{kind}[{name[:64]!r}].{field} = {count}: expected at most {max_count} "
                    "(--max-peer-count)"
                )
        pair = Pair(value.pending, value.inFlight)
        ceiling = ceilings.get(name)
        if ceiling is not None and pair.total > ceiling:
            raise PeerCountsRefused(
                f"{kind}[{name[:64]!r}]: pending + inFlight = {pair.total}: expected at most "
                f"{ceiling} (its bound by the route table)"
            )
        pairs[name] = pair
    return pairs


def counts_from_message(
    message: pb.CountsSnapshot, max_count: int, bounds: PeerBounds
) -> PeerCounts:
    """A peer's snapshot, every count checked against ``bounds`` and ``max_count``."""
    return PeerCounts(
        models=_pairs("models", message.models, max_count, bounds.models),
        tenants=_pairs("tenants", message.tenants, max_count, bounds.tenants),
    )


class SelfTokens:
    """Tokens of this process's watches in progress: what proves a self-connection."""

    def __init__(self) -> None:
        self._tokens: set[str] = set()

    def new(self) -> str:
        token = secrets.token_hex(16)
        self._tokens.add(token)
        return token

    def discard(self, token: str) -> None:
        self._tokens.discard(token)

    def __contains__(self, token: object) -> bool:
        return token in self._tokens


def _metadata_value(context: grpc.aio.ServicerContext[object, object], key: str) -> str:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


class PeerService(pb_grpc.GatewayPeersServicer):
    """Streams this replica's own counts (never its peers') to the replicas that watch.

    ``peer_name``: the name a watcher's certificate must carry (None on a plaintext listener,
    where no caller can be told apart).
    """

    def __init__(
        self,
        replica_id: str,
        counts: Counts,
        streams: StreamSlots,
        self_tokens: SelfTokens,
        routes: Callable[[], RouteTable],
        peer_name: str | None,
    ) -> None:
        self._replica_id = replica_id
        self._counts = counts
        self._streams = streams
        self._self_tokens = self_tokens
        self._routes = routes
        self._peer_name = peer_name

    async def WatchCounts(  # noqa: N802  (gRPC method name)
        self, request: pb.WatchCountsRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.CountsSnapshot]:
        if self._peer_name is not None and self._peer_name not in caller_names(context):
            log.warning(
                "counts watch refused: not a replica's certificate",
                extra={"peer": context.peer(), "names": sorted(caller_names(context))[:4]},
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"only a certificate for {self._peer_name} may watch this replica's counts",
            )
        if request.replicaId == self._replica_id:
            if _metadata_value(context, SELF_TOKEN_HEADER) in self._self_tokens:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, SELF_DETAILS)
            log.warning("peer refused: it claims this replica's id", extra={"peer": context.peer()})
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "the caller claims this replica's own id"
            )
        with self._streams.take() as admitted:
            if not admitted:
                await self._streams.refuse(context, "WatchCounts")
            last: PeerCounts | None = None
            while True:
                changed = self._counts.signal.current()
                snapshot = PeerBounds.from_routes(self._routes()).cap(self._counts.snapshot())
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
        *,
        routes: Callable[[], RouteTable],
        max_count: int,
        self_tokens: SelfTokens,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        self._replica_id = replica_id
        self._counts = counts
        self._retry = retry_interval
        self._routes = routes
        self._max_count = max_count
        self._self_tokens = self_tokens
        self._credentials = credentials
        self._options: list[tuple[str, int | str]] = list(KEEPALIVE_OPTIONS)
        if server_name is not None:
            self._options.append((SERVER_NAME_OVERRIDE_OPTION, server_name))
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

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(address, options=self._options)
        return grpc.aio.secure_channel(address, self._credentials, options=self._options)

    async def _watch(self, address: str) -> None:
        while True:
            token = self._self_tokens.new()
            try:
                async with self._channel(address) as channel:
                    stub = pb_grpc.GatewayPeersStub(channel)  # type: ignore[no-untyped-call]
                    call = stub.WatchCounts(
                        pb.WatchCountsRequest(replicaId=self._replica_id),
                        metadata=((SELF_TOKEN_HEADER, token),),
                    )
                    async for message in call:
                        self._take(address, message)
            except grpc.aio.AioRpcError as error:
                if (
                    error.code() == grpc.StatusCode.FAILED_PRECONDITION
                    and error.details() == SELF_DETAILS
                ):
                    log.info("peer address is this replica", extra={"peer": address})
                    self._self_addresses.add(address)
                    self._watchers.pop(address, None)
                    return
                log.debug("peer stream ended", extra={"peer": address, "code": str(error.code())})
            except PeerCountsRefused as refused:
                # a bug or a forger: none of its counts are taken until it sends sound ones
                log.warning("peer counts refused", extra={"peer": address, "reason": str(refused)})
            finally:
                self._self_tokens.discard(token)
            self._counts.drop_peer(address)
            await asyncio.sleep(self._retry)

    def _take(self, address: str, message: pb.CountsSnapshot) -> None:
        if message.replicaId == self._replica_id:
            # this process's own listener says so with FAILED_PRECONDITION instead
            raise PeerCountsRefused("the peer claims this replica's own id")
        bounds = PeerBounds.from_routes(self._routes())
        self._counts.set_peer(address, counts_from_message(message, self._max_count, bounds))

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
