"""The gateway process: public OpenAI-compatible listener, admin listener, gRPC scaler, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import re
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sovereign_gateway.admin_token import AdminToken, AdminTokenError, load_admin_token
from sovereign_gateway.auth import ANONYMOUS, ApiKeyFileError, ApiKeys, load_api_keys
from sovereign_gateway.connections import (
    ADMIN_ANSWER_SLOTS,
    ADMIN_MAX_CONNECTIONS,
    ANSWER_SLOTS,
    OVERLOADED,
    GuardedSite,
    connection_limit,
    raise_descriptor_limit,
    shed_past_connection_limit,
)
from sovereign_gateway.counts import Counts
from sovereign_gateway.errors import (
    BACKEND_ERROR,
    BODY_TIMEOUT,
    INTERNAL_ERROR,
    INVALID_BODY,
    SERVER_HEADER,
    UPSTREAM_DISCONNECTED,
    UPSTREAM_TIMEOUT,
    backend_error_message,
    echoed,
    error_response,
    internal_error_response,
    sse_error_event,
)
from sovereign_gateway.logs import iso_time, limit_accept_error_lines, log_failure, write_record
from sovereign_gateway.metering import Metering
from sovereign_gateway.peers import (
    PeerService,
    PeerWatchers,
    SelfTokens,
    add_peer_service,
    server_options,
)
from sovereign_gateway.readiness import ModelReadiness, Resolver, RouteRemoved, resolve_addresses
from sovereign_gateway.request_bodies import (
    BodyTimeout,
    BodyTooLarge,
    HeldBytes,
    HeldBytesFull,
    receive_body,
)
from sovereign_gateway.routes import RouteTable, RouteTableError, check_reload, load_route_table
from sovereign_gateway.scaler import ExternalScaler, StreamSlots, add_scaler
from sovereign_gateway.scaler_tls import ScalerTls, ScalerTlsError, load_scaler_tls
from sovereign_gateway.settings import Settings
from sovereign_gateway.usage_sniffer import BodyUsage, StreamUsage, Usage

log = logging.getLogger(__name__)

ROUTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# a forward that finds no replica listening goes back to the hold; after this many it is a 503
_MAX_FORWARD_ATTEMPTS = 5
# A connect that failed for want of a local port or descriptor says nothing about the replicas.
_LOCAL_EXHAUSTION = frozenset({errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE, errno.ENOBUFS})
_FORWARD_HEADERS = ("Content-Type", "Accept")
_LISTEN_BACKLOG = 2048
# replica time is split between tenants at request starts and ends, at most this often (seconds)
_ACCRUE_GRANULARITY = 0.05
CLIENT_GONE = "client_disconnected"
SHUTTING_DOWN = "gateway_shutdown"
# after the drain: how long the listeners, and the gRPC calls still open (KEDA's and the peers'
# streams), get to close
_CLOSE_SECONDS = 0.5


@dataclass
class _Record:
    """What one request leaves in the request records (never prompt or completion content)."""

    request_id: str
    arrived_wall: float
    arrived: float
    endpoint: str
    model: str = ""
    tenant: str = ""
    stream: bool = False
    status: int = 0
    cold_start: bool = False
    cold_wait: float | None = None
    ttft: float | None = None
    error: str | None = None
    client_address: str | None = None
    # the client's own X-Request-Id, kept beside the gateway's (only when it is a short token)
    client_request_id: str | None = None
    usage: Usage | None = None
    # a reply under way (its status already sent), whether it is an SSE stream, and whether what
    # was sent of it ends at an SSE event's end
    stream_response: web.StreamResponse | None = None
    stream_is_sse: bool = False
    stream_at_event_end: bool = True


@dataclass(frozen=True)
class _FileStamp:
    inode: int
    size: int
    mtime_ns: int


def _stamp(path: Path) -> _FileStamp | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return _FileStamp(stat.st_ino, stat.st_size, stat.st_mtime_ns)


async def _hide_server_version(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_HEADER


def _routing_fields(raw: bytes) -> tuple[Any, bool] | None:
    """The body's ``model`` and whether it asks for a stream; None when it is not a JSON object.

    Only the top-level object's own fields survive the parse: a body of many small objects
    parses into a tree about 25 times its size, and a held request must cost what its bytes cost.
    """
    closed: list[list[tuple[str, Any]]] = []

    def drop_object(pairs: list[tuple[str, Any]]) -> None:
        # objects close innermost first: the last one closed is the top level
        closed[:] = [pairs]

    try:
        document = json.loads(raw, object_pairs_hook=drop_object)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    if document is not None or not closed:
        return None  # an array, a scalar or null
    fields = dict(closed[0])
    return fields.get("model"), fields.get("stream") is True


async def _start_site(site: web.BaseSite, host: str, port: int) -> None:
    try:
        await site.start()
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None


async def _end_reply(response: web.StreamResponse, record: _Record) -> None:
    """Finish a reply whose body went out in pieces; a client gone by then is recorded so, not
    taken for a fault of the gateway's."""
    try:
        await response.write_eof()
    except ConnectionResetError:
        record.error = record.error or CLIENT_GONE


def _cut_reply(request: web.Request) -> None:
    """Close the client's connection before the reply's end: a body whose status is already
    sent cannot carry an error, and the missing end tells the client it is incomplete."""
    request.protocol.force_close()


async def _answer_then_close(request: web.Request, response: web.Response) -> None:
    """Send ``response`` and close the connection at once. aiohttp would otherwise keep reading
    the rest of the body for up to 10 s after the answer (its lingering close), which is right for
    a body refused while it still flows, and wrong for one that stopped arriving or cannot be
    decoded (there is no rest to wait for, and reading a broken one again logs a traceback)."""
    with contextlib.suppress(ConnectionError):  # a client that has gone needs no answer
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


class Gateway:
    """Everything one gateway process runs. ``start`` then ``wait_stopped``; SIGTERM drains."""

    def __init__(
        self,
        settings: Settings,
        routes: RouteTable,
        api_keys: ApiKeys | None,
        resolve: Resolver = resolve_addresses,
        *,
        scaler_tls: ScalerTls | None = None,
        admin_token: AdminToken | None = None,
    ) -> None:
        self.settings = settings
        self._scaler_tls = scaler_tls
        self._admin_token = admin_token
        self._resolve = resolve
        self.routes = routes
        self.api_keys = api_keys
        self.replica_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        self.metering = Metering(routes.metering.price_per_gpu_hour, routes.metering.currency)
        self.counts = Counts(on_change=self.metering.on_count_change)
        self.models: dict[str, ModelReadiness] = {}
        self.draining = False
        self._stopped = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self._grpc: grpc.aio.Server | None = None
        self._self_tokens = SelfTokens()
        self._scaler_streams = StreamSlots(settings.max_scaler_streams, "--max-scaler-streams")
        self._peer_streams = StreamSlots(settings.max_peer_streams, "--max-peer-streams")
        self._peers = PeerWatchers(
            self.replica_id,
            self.counts,
            settings.peer_retry_interval,
            routes=lambda: self.routes,
            max_count=settings.max_peer_count,
            self_tokens=self._self_tokens,
            credentials=scaler_tls.channel_credentials() if scaler_tls is not None else None,
            server_name=settings.peer_tls_server_name,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stamps: dict[Path, _FileStamp | None] = {}
        # each routed request runs under a deadline that SIGTERM sets to the end of the drain
        self._request_scopes: set[asyncio.Timeout] = set()
        self._drain_deadline: float | None = None
        self._routed_requests = 0
        self._held_bytes = HeldBytes(settings.max_held_bytes)
        self._no_requests = asyncio.Event()
        self._no_requests.set()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        self._session = aiohttp.ClientSession(
            # one upstream connection per request: through a model's Service, a kept-alive
            # connection stays with the replica it first reached, so under steady load a replica
            # that is draining before it stops (preStop) would keep getting new requests and never
            # drain. A new connection reaches only replicas still in the Service's endpoints;
            # inside the cluster the handshake costs well under a millisecond.
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            # the replies' bytes are passed on as they come, with their Content-Type only: ask
            # for them uncompressed, or a compressing backend's body would reach the client
            # without the Content-Encoding that decodes it
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        for route in self.routes.models:
            self._add_model(route.name)

        self._grpc = grpc.aio.server(
            options=server_options(
                settings.scaler_max_connection_age, settings.scaler_max_connection_age_grace
            )
        )
        add_scaler(
            self._grpc, ExternalScaler(self.counts, lambda: self.routes, self._scaler_streams)
        )
        add_peer_service(
            self._grpc,
            PeerService(
                self.replica_id,
                self.counts,
                self._peer_streams,
                self._self_tokens,
                lambda: self.routes,
                # on a plaintext listener no watcher can be told from KEDA
                settings.peer_tls_server_name if self._scaler_tls is not None else None,
            ),
        )
        if self._scaler_tls is None:
            bound = self._grpc.add_insecure_port(str(settings.scaler_listen))
        else:
            bound = self._grpc.add_secure_port(
                str(settings.scaler_listen), self._scaler_tls.server_credentials()
            )
        if bound == 0:
            raise OSError(f"--scaler-listen: cannot listen on {settings.scaler_listen}")
        await self._grpc.start()

        await self._serve_public()
        await self._serve(
            self._admin_app(),
            "admin",
            settings.admin_listen.host,
            settings.admin_listen.port,
            max_connections=ADMIN_MAX_CONNECTIONS,
            answer_slots=ADMIN_ANSWER_SLOTS,
        )

        self._peers.set_addresses({str(peer) for peer in settings.peers})
        if settings.peers_dns is not None:
            self._peers.start_dns(settings.peers_dns, settings.peer_dns_interval)
        self._stamps = {settings.routes: _stamp(settings.routes)}
        if settings.api_keys is not None:
            self._stamps[settings.api_keys] = _stamp(settings.api_keys)
        self._tasks.append(asyncio.create_task(self._reload_loop(), name="reload"))
        log.info(
            "gateway started",
            extra={
                "listen": str(settings.listen),
                "scalerListen": str(settings.scaler_listen),
                "adminListen": str(settings.admin_listen),
                "models": [route.name for route in self.routes.models],
                "replicaId": self.replica_id,
                "peers": [str(peer) for peer in settings.peers],
                "auth": self.api_keys is not None,
            },
        )

    async def _runner(self, app: web.Application) -> web.AppRunner:
        runner = web.AppRunner(
            app,
            handler_cancellation=True,
            # the drain itself is ``_drain``: by the time the runner shuts down, no routed
            # request is left (aiohttp would wait up to twice this for each)
            shutdown_timeout=_CLOSE_SECONDS,
            access_log=None,
        )
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def _serve(
        self,
        app: web.Application,
        listener: str,
        host: str,
        port: int,
        *,
        max_connections: int,
        answer_slots: int,
    ) -> None:
        """One HTTP listener, its connections bounded (``connections``): header time, idle time,
        and how many are open."""
        runner = await self._runner(app)
        site = GuardedSite(
            runner,
            host,
            port,
            listener=listener,
            header_timeout=self.settings.header_timeout,
            keepalive_timeout=self.settings.keepalive_timeout,
            max_connections=max_connections,
            answer_slots=answer_slots,
            # a burst of clients must not overflow the accept queue (a dropped SYN costs a second)
            backlog=_LISTEN_BACKLOG,
        )
        await _start_site(site, host, port)

    async def _serve_public(self) -> None:
        """The public listener, as many connections open as the descriptor limit allows."""
        settings = self.settings
        limit_accept_error_lines(asyncio.get_running_loop())
        descriptors = raise_descriptor_limit()
        max_connections = connection_limit(settings.max_connections, descriptors)
        if max_connections < settings.max_connections:
            log.warning(
                "--max-connections lowered to what the descriptor limit allows",
                extra={
                    "maxConnections": max_connections,
                    "requested": settings.max_connections,
                    "descriptorLimit": descriptors,
                },
            )
        await self._serve(
            self._public_app(),
            "public",
            settings.listen.host,
            settings.listen.port,
            max_connections=max_connections,
            answer_slots=ANSWER_SLOTS,
        )

    def _add_model(self, name: str) -> None:
        route = self.routes.model(name)
        assert route is not None
        assert self._session is not None
        state = ModelReadiness(
            route, self.settings, self._session, self.counts, self.metering, self._resolve
        )
        self.models[name] = state
        state.start()

    def request_stop(self) -> None:
        """SIGTERM: stop taking requests, let the ones in flight finish for up to
        ``--drain-seconds``, then stop."""
        if not self.draining:
            self.draining = True
            log.info("draining", extra={"drainSeconds": self.settings.drain_seconds})
            self._tasks.append(asyncio.create_task(self._drain(), name="drain"))

    async def _drain(self) -> None:
        """Stop listening; requests in flight run until they end or the drain does, when a
        stream gets an error event and a request not yet answered a 503."""
        deadline = asyncio.get_running_loop().time() + self.settings.drain_seconds
        self._drain_deadline = deadline
        for scope in self._request_scopes:
            scope.reschedule(deadline)
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline + _CLOSE_SECONDS):
                await self._no_requests.wait()
        await self.close()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def close(self) -> None:
        """Stop listening, wait for requests in flight (up to --drain-seconds), release the rest."""
        # the public runner first: aiohttp stops listening, then waits for handlers to finish
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self._peers.stop()
        for state in self.models.values():
            await state.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=_CLOSE_SECONDS)
        if self._session is not None:
            await self._session.close()
        log.info("gateway stopped")

    # ---- reload -------------------------------------------------------------------------------

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            self.check_files()

    def _changed(self, path: Path) -> bool:
        """Whether ``path`` changed (or appeared, or went away) since the last look."""
        stamp = _stamp(path)
        if stamp == self._stamps.get(path):
            return False
        self._stamps[path] = stamp
        return True

    def check_files(self) -> None:
        """Reload the route table and the key file when they changed; keep the old on error."""
        settings = self.settings
        if self._changed(settings.routes):
            problem = ""
            try:
                reloaded = load_route_table(settings.routes)
                check_reload(self.routes, reloaded, f"route table {settings.routes}")
                self.apply_routes(reloaded)
            except RouteTableError as error:
                problem = str(error)
            if problem:
                log.error("route table not reloaded, keeping the last good one: %s", problem)
        if settings.api_keys is not None and self._changed(settings.api_keys):
            keys: ApiKeys | None = None
            problem = ""
            try:
                keys = load_api_keys(settings.api_keys)
            except ApiKeyFileError as error:
                problem = str(error)
            if keys is None:
                log.error("api keys not reloaded, keeping the last good ones: %s", problem)
            else:
                self.api_keys = keys
                log.info("api keys reloaded", extra={"tenants": len(keys.tenants)})

    def apply_routes(self, routes: RouteTable) -> None:
        """Swap in a new route table. Requests in flight finish on the route they started with;
        requests still held follow the new table (``_wait_for_replica``)."""
        old = self.routes
        self.routes = routes
        self.metering.price_per_gpu_hour = routes.metering.price_per_gpu_hour
        self.metering.currency = routes.metering.currency
        for route in routes.models:
            state = self.models.get(route.name)
            if state is None:
                self._add_model(route.name)
            elif state.route != route:
                state.update_route(route)
        for route in old.models:
            if routes.model(route.name) is None:
                state = self.models.pop(route.name)
                state.remove()
                self._tasks.append(asyncio.create_task(state.stop()))
        log.info("route table reloaded", extra={"models": [route.name for route in routes.models]})

    # ---- listeners ----------------------------------------------------------------------------

    def _public_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes,
            middlewares=[shed_past_connection_limit],
        )
        app.on_response_prepare.append(_hide_server_version)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/models", self._list_models)
        for path in ROUTED_PATHS:
            app.router.add_post(path, self._inference)
        app.router.add_route("*", "/{tail:.*}", self._unknown_path)
        return app

    def _admin_app(self) -> web.Application:
        # the same answers as the public listener's: OpenAI's error shape, no server version
        app = web.Application(middlewares=[shed_past_connection_limit])
        app.on_response_prepare.append(_hide_server_version)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/usage", self._usage)
        app.router.add_route("*", "/{tail:.*}", self._unknown_path)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready", "models": len(self.routes.models)})

    def _admin_refusal(self, request: web.Request) -> web.Response | None:
        """A 401 when ``--admin-token-file`` is set and the request does not carry its token."""
        if self._admin_token is None or self._admin_token.admits(
            request.headers.get("Authorization")
        ):
            return None
        present = bool(request.headers.get("Authorization"))
        message = (
            "Incorrect admin token provided."
            if present
            else "You didn't provide the admin token. Send it as 'Authorization: Bearer TOKEN'."
        )
        return error_response(401, message, "invalid_request_error", "invalid_admin_token")

    async def _metrics(self, request: web.Request) -> web.Response:
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        for state in self.models.values():
            state.accrue()
        return web.Response(
            body=generate_latest(self.metering.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _usage(self, request: web.Request) -> web.Response:
        refusal = self._admin_refusal(request)
        if refusal is not None:
            return refusal
        for state in self.models.values():
            state.accrue()
        document = self.metering.usage([route.name for route in self.routes.models])
        document["since"] = iso_time(document["since"])
        return web.json_response(document)

    async def _unknown_path(self, request: web.Request) -> web.Response:
        return error_response(
            404,
            f"Invalid URL ({echoed(request.method)} {echoed(request.path)})",
            "invalid_request_error",
            "unknown_url",
        )

    def _authenticate(self, request: web.Request) -> str | None:
        if self.api_keys is None:
            return ANONYMOUS
        return self.api_keys.tenant_for(request.headers.get("Authorization"))

    async def _list_models(self, request: web.Request) -> web.Response:
        if self._authenticate(request) is None:
            return self._unauthorized(request)
        created = int(self.metering.started_wall)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {
                        "id": route.name,
                        "object": "model",
                        "created": created,
                        "owned_by": "sovereign",
                    }
                    for route in self.routes.models
                ],
            }
        )

    def _unauthorized(self, request: web.Request) -> web.Response:
        present = bool(request.headers.get("Authorization"))
        message = (
            "Incorrect API key provided."
            if present
            else "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
        )
        return error_response(401, message, "invalid_request_error", "invalid_api_key")

    # ---- the data path ------------------------------------------------------------------------

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        client_id = request.headers.get("X-Request-Id", "")
        record = _Record(
            # the gateway's own id: a client cannot make two records share one, or forge one
            request_id=uuid.uuid4().hex,
            arrived_wall=time.time(),
            arrived=time.monotonic(),
            endpoint=request.path,
            client_request_id=client_id if _REQUEST_ID.fullmatch(client_id) else None,
        )
        if self.settings.record_client_address:
            record.client_address = request.remote
        self._routed_requests += 1
        self._no_requests.clear()
        try:
            response = await self._admit_until_drain_ends(request, record)
        except asyncio.CancelledError:
            record.status = 499  # the client went away
            record.error = record.error or CLIENT_GONE
            raise
        except Exception as error:  # any fault of the gateway's: answered and recorded as a 500
            response = self._failed(request, record, error)
            record.status = 500
            return response
        else:
            record.status = 499 if record.error == CLIENT_GONE else response.status
            return response
        finally:
            self._finish_record(record)
            self._routed_requests -= 1
            if not self._routed_requests:
                self._no_requests.set()

    def _failed(
        self, request: web.Request, record: _Record, error: Exception
    ) -> web.StreamResponse:
        """A fault of the gateway's own: one log line, and OpenAI's 500 without the fault in it
        (or, when the reply has begun, its connection cut)."""
        log_failure("request failed in the gateway", error, requestId=record.request_id)
        record.error = INTERNAL_ERROR
        if record.stream_response is not None:
            _cut_reply(request)
            return record.stream_response
        return internal_error_response(record.request_id)

    def _backend_failed(self, record: _Record, status: int) -> web.Response:
        """A backend's 5xx: same status, OpenAI's error object instead of the backend's body (a
        traceback, an internal address), which is left unread."""
        log.warning(
            "backend answered with an error",
            extra={"model": record.model, "status": status, "requestId": record.request_id},
        )
        return self._error(
            record,
            status,
            backend_error_message(record.model, status),
            "server_error",
            BACKEND_ERROR,
        )

    async def _admit_until_drain_ends(
        self, request: web.Request, record: _Record
    ) -> web.StreamResponse:
        scope = asyncio.timeout_at(self._drain_deadline)
        try:
            async with scope:
                self._request_scopes.add(scope)
                try:
                    return await self._admit(request, record)
                finally:
                    self._request_scopes.discard(scope)
        except TimeoutError:
            if not scope.expired():
                raise
        return await self._cut_at_drain_end(request, record)

    async def _cut_at_drain_end(self, request: web.Request, record: _Record) -> web.StreamResponse:
        """The drain ended with this request still running: tell the client, then close."""
        log.warning(
            "request cut at the end of the drain",
            extra={"model": record.model, "requestId": record.request_id},
        )
        message = "The gateway replica is shutting down; send the request again."
        response = record.stream_response
        if response is None:
            return self._error(record, 503, message, "server_error", SHUTTING_DOWN, retry_after=1)
        record.error = SHUTTING_DOWN
        if not record.stream_is_sse:
            _cut_reply(request)
            return response
        try:
            if not record.stream_at_event_end:
                await response.write(b"\n\n")  # end the partial event before ours
            await response.write(sse_error_event(message, SHUTTING_DOWN))
            await response.write_eof()
        except ConnectionResetError:
            record.error = CLIENT_GONE
        return response

    def _error(
        self,
        record: _Record,
        status: int,
        message: str,
        error_type: str,
        code: str | None,
        **kwargs: Any,
    ) -> web.Response:
        record.error = code or error_type
        return error_response(
            status, message, error_type, code, request_id=record.request_id, **kwargs
        )

    async def _admit(self, request: web.Request, record: _Record) -> web.StreamResponse:
        tenant = self._authenticate(request)
        if tenant is None:
            record.error = "invalid_api_key"
            return self._unauthorized(request)
        record.tenant = tenant
        # the body's bytes count against --max-held-bytes as they arrive, and stay counted to the
        # request's end: the gateway keeps them all that time
        with self._held_bytes.charge() as charge:
            try:
                raw = await receive_body(
                    request.content,
                    request.content_length,
                    charge,
                    max_bytes=self.settings.max_body_bytes,
                    timeout=self.settings.body_timeout,
                )
            except (
                BodyTooLarge,
                HeldBytesFull,
                BodyTimeout,
                web.RequestPayloadError,
                ConnectionError,
            ) as error:
                response = self._body_refused(record, error)
                if isinstance(error, (BodyTimeout, web.RequestPayloadError)):
                    await _answer_then_close(request, response)
                return response
            return await self._route_body(request, record, raw)

    def _body_refused(self, record: _Record, error: Exception) -> web.Response:
        """The answer to a body the gateway did not take in whole. After a body that timed out or
        cannot be decoded the connection closes: what may follow it cannot be told apart from a
        next request."""
        if isinstance(error, HeldBytesFull):
            return self._held_bytes_full(record)
        if isinstance(error, ConnectionError):
            record.error = CLIENT_GONE
            return web.Response(status=499)  # never sent: there is no one to send it to
        if isinstance(error, BodyTooLarge):
            return self._error(
                record,
                413,
                f"Request body too large: the limit is {self.settings.max_body_bytes} bytes.",
                "invalid_request_error",
                "request_too_large",
            )
        if isinstance(error, BodyTimeout):
            response = self._error(
                record,
                408,
                f"The request's body did not arrive within {self.settings.body_timeout:g} seconds.",
                "invalid_request_error",
                BODY_TIMEOUT,
            )
        else:
            response = self._error(
                record,
                400,
                "The request's body could not be read: its Content-Encoding does not decode.",
                "invalid_request_error",
                INVALID_BODY,
            )
        response.force_close()
        return response

    def _held_bytes_full(self, record: _Record) -> web.Response:
        return self._error(
            record,
            429,
            f"The gateway is at its limit of {self.settings.max_held_bytes} bytes of requests "
            "waiting for or being served by a replica; try again later.",
            "rate_limit_error",
            "queue_full",
            retry_after=1,
        )

    async def _route_body(
        self, request: web.Request, record: _Record, raw: bytes
    ) -> web.StreamResponse:
        tenant = record.tenant
        routing = _routing_fields(raw)
        if routing is None:
            return self._error(
                record,
                400,
                "We could not parse the JSON body of your request: expected a JSON object.",
                "invalid_request_error",
                "invalid_json",
            )
        model, stream = routing
        if not isinstance(model, str) or not model:
            return self._error(
                record,
                400,
                "You must provide a model parameter.",
                "invalid_request_error",
                "missing_model",
                param="model",
            )
        record.model = model
        record.stream = stream
        # ``models`` holds exactly the models of the current route table (``apply_routes``)
        state = self.models.get(model)
        if state is None:
            return self._model_not_found(record)
        # no await from this check to ``counts.hold`` in ``_forward``: this replica's own count
        # stays exact, so no one replica admits past the limit (the bound across replicas is the
        # limit x the replicas: README, Tenants)
        tenant_limit = self.routes.tenant(tenant)
        if (
            tenant_limit is not None
            and tenant_limit.max_concurrent_requests is not None
            and self.counts.total_tenant(tenant) >= tenant_limit.max_concurrent_requests
        ):
            return self._error(
                record,
                429,
                f"Tenant {tenant!r} is at its limit of {tenant_limit.max_concurrent_requests} "
                "concurrent requests.",
                "rate_limit_error",
                "tenant_concurrency_limit",
                retry_after=1,
            )
        if self.counts.local_model(model).pending >= state.route.max_pending_requests:
            return self._error(
                record,
                429,
                f"The model `{model}` has {state.route.max_pending_requests} requests waiting "
                "for a replica; try again later.",
                "rate_limit_error",
                "queue_full",
                retry_after=state.cold_retry_after(),
            )
        return await self._forward(request, record, state, raw)

    async def _forward(  # noqa: PLR0911  (one return per way a forward ends reads best)
        self, request: web.Request, record: _Record, state: ModelReadiness, raw: bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        model, tenant = record.model, record.tenant
        headers = {
            name: request.headers[name] for name in _FORWARD_HEADERS if name in request.headers
        }
        headers["X-Request-Id"] = record.request_id
        self.counts.hold(model, tenant)
        in_flight = False
        try:
            for _attempt in range(_MAX_FORWARD_ATTEMPTS):
                ready = await self._wait_for_replica(record)
                if isinstance(ready, web.Response):
                    return ready
                # a reload while the request was held may have changed the route
                state, route = ready, ready.route
                deadline = record.arrived + route.cold_start_timeout_seconds
                url = route.upstream + request.path
                # replica time so far goes to the requests in flight so far
                state.accrue(at_least=_ACCRUE_GRANULARITY)
                self.counts.forward(model, tenant)
                in_flight = True
                try:
                    upstream = await self._session.post(
                        url,
                        data=raw,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=route.request_timeout_seconds),
                    )
                except aiohttp.ClientConnectorError as error:
                    if error.os_error.errno in _LOCAL_EXHAUSTION:
                        # this process or node is out of ports or descriptors: the replica is
                        # not cold, and the request was never sent, so the client may retry
                        return self._error(
                            record,
                            503,
                            "The gateway has no free connection to the model's replicas right "
                            "now; try again.",
                            "server_error",
                            OVERLOADED,
                            retry_after=1,
                        )
                    # the connection failed before the request was sent (a Service without
                    # ready endpoints refuses): the replica never saw it, so hold it again
                    log.debug("no replica listening", extra={"model": model, "error": repr(error)})
                    state.mark_unready()
                    self.counts.back_to_pending(model, tenant)
                    in_flight = False
                    if time.monotonic() >= deadline:
                        return self._cold_timeout(record, state)
                    continue
                except aiohttp.ClientConnectionError as error:
                    # closed or reset after the request was sent: the replica may have acted on
                    # it, and one that crashes on it would take the next replica down too, so it
                    # is answered once and never sent again
                    log.warning(
                        "backend connection lost before an answer",
                        extra={
                            "model": model,
                            "requestId": record.request_id,
                            "error": type(error).__name__,
                        },
                    )
                    return self._error(
                        record,
                        502,
                        f"The model `{model}`'s replica closed the connection without answering.",
                        "server_error",
                        UPSTREAM_DISCONNECTED,
                    )
                except TimeoutError:
                    return self._error(
                        record,
                        504,
                        f"The model `{model}` did not answer within "
                        f"{route.request_timeout_seconds:g} seconds.",
                        "server_error",
                        UPSTREAM_TIMEOUT,
                    )
                try:
                    return await self._respond(request, record, upstream)
                finally:
                    upstream.release()
            return self._error(
                record,
                503,
                f"The model `{model}` has no replica that accepts requests; try again later.",
                "server_error",
                "model_unavailable",
                retry_after=state.cold_retry_after(),
            )
        finally:
            if in_flight:
                state.accrue(at_least=_ACCRUE_GRANULARITY)
                self.counts.finish(model, tenant)
            else:
                self.counts.release_hold(model, tenant)

    async def _wait_for_replica(self, record: _Record) -> ModelReadiness | web.Response:
        """The model's readiness once a replica is ready, or the answer to send instead.

        A held request follows the route table that replaces its own: it waits on the model's
        route in the current table (its new upstream and timeouts), and gets 404 at once when
        the model has left the table.
        """
        while True:
            state = self.models.get(record.model)
            if state is None:
                return self._model_not_found(record)
            if state.ready:
                return state
            record.cold_start = True
            try:
                await state.wait_ready(record.arrived + state.route.cold_start_timeout_seconds)
            except TimeoutError:
                return self._cold_timeout(record, state)
            except RouteRemoved:
                continue
            record.cold_wait = time.monotonic() - record.arrived
            return state

    def _model_not_found(self, record: _Record) -> web.Response:
        return self._error(
            record,
            404,
            f"The model `{echoed(record.model)}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
            param="model",
        )

    def _cold_timeout(self, record: _Record, state: ModelReadiness) -> web.Response:
        return self._error(
            record,
            503,
            f"The model `{state.name}` is starting and was not ready within "
            f"{state.route.cold_start_timeout_seconds:g} seconds; try again later.",
            "server_error",
            "model_cold_start_timeout",
            retry_after=state.cold_retry_after(),
        )

    async def _respond(
        self, request: web.Request, record: _Record, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        if upstream.status >= 500:
            return self._backend_failed(record, upstream.status)
        content_type = upstream.headers.get("Content-Type", "application/json")
        if (
            record.stream
            and upstream.status == 200
            and content_type.startswith("text/event-stream")
        ):
            return await self._stream(request, record, upstream, content_type)
        return await self._pass_body(request, record, upstream, content_type)

    async def _pass_body(
        self,
        request: web.Request,
        record: _Record,
        upstream: aiohttp.ClientResponse,
        content_type: str,
    ) -> web.StreamResponse:
        """A non-streamed reply, passed through as it arrives whatever its size; the usage of a
        JSON answer is read on the way, never the body kept."""
        # the first bytes are awaited before the status is sent: a replica that fails before
        # sending any of its body still gets a clean error answer
        try:
            chunk = await upstream.content.readany()
        except TimeoutError:
            return self._error(
                record,
                504,
                f"The model `{record.model}` did not answer within the request timeout.",
                "server_error",
                UPSTREAM_TIMEOUT,
            )
        except aiohttp.ClientError:
            return self._error(
                record,
                502,
                f"The model `{record.model}`'s replica stopped while answering.",
                "server_error",
                UPSTREAM_DISCONNECTED,
            )
        response = web.StreamResponse(
            status=upstream.status,
            headers={"Content-Type": content_type, "X-Request-Id": record.request_id},
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        record.stream_response = response
        sniffer = BodyUsage() if upstream.status == 200 else None
        try:
            while chunk:
                if sniffer is not None:
                    sniffer.feed(chunk)
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    record.error = CLIENT_GONE
                    return response
                chunk = await upstream.content.readany()
        except (aiohttp.ClientError, TimeoutError) as error:
            record.error = (
                UPSTREAM_TIMEOUT if isinstance(error, TimeoutError) else UPSTREAM_DISCONNECTED
            )
            log.warning(
                "backend body ended early",
                extra={
                    "model": record.model,
                    "requestId": record.request_id,
                    "error": record.error,
                },
            )
            _cut_reply(request)
            return response
        if sniffer is not None:
            record.usage = sniffer.finish()
        await _end_reply(response, record)
        return response

    async def _stream(
        self,
        request: web.Request,
        record: _Record,
        upstream: aiohttp.ClientResponse,
        content_type: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": content_type,
                "Cache-Control": "no-cache",
                "X-Request-Id": record.request_id,
            },
        )
        await response.prepare(request)
        record.stream_response = response
        record.stream_is_sse = True
        sniffer = StreamUsage()
        record.usage = sniffer.usage
        try:
            async for chunk in upstream.content.iter_any():
                if record.ttft is None:
                    record.ttft = time.monotonic() - record.arrived
                    self.metering.first_token(record.model, record.tenant, record.ttft)
                sniffer.feed(chunk)
                record.stream_at_event_end = chunk.endswith(b"\n\n")
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    # the client went away; releasing the upstream response stops the backend
                    record.error = CLIENT_GONE
                    return response
        except (aiohttp.ClientError, TimeoutError) as error:
            timed_out = isinstance(error, TimeoutError)
            record.error = UPSTREAM_TIMEOUT if timed_out else UPSTREAM_DISCONNECTED
            log.warning(
                "backend stream ended early",
                extra={
                    "model": record.model,
                    "requestId": record.request_id,
                    "error": record.error,
                },
            )
            message = (
                "The model's reply took longer than the request timeout."
                if timed_out
                else "The model's replica stopped while streaming the reply."
            )
            try:
                await response.write(sse_error_event(message, record.error))
            except ConnectionResetError:
                return response  # the client left too; the backend's failure stays recorded
        await _end_reply(response, record)
        return response

    def _finish_record(self, record: _Record) -> None:
        usage = record.usage or Usage()
        if record.model and record.model in self.models:
            self.metering.request_done(
                record.model,
                record.tenant,
                record.status,
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        entry: dict[str, Any] = {
            "time": iso_time(record.arrived_wall),
            "requestId": record.request_id,
            "clientRequestId": record.client_request_id,
            "endpoint": record.endpoint,
            # the name as sent: bounded, since an unknown model is recorded too
            "model": echoed(record.model) if record.model else None,
            "tenant": record.tenant or None,
            "stream": record.stream,
            "status": record.status,
            "promptTokens": usage.prompt_tokens,
            "completionTokens": usage.completion_tokens,
            "latencyMs": round((time.monotonic() - record.arrived) * 1000, 3),
            "ttftMs": None if record.ttft is None else round(record.ttft * 1000, 3),
            "coldStart": record.cold_start,
            "coldWaitMs": None if record.cold_wait is None else round(record.cold_wait * 1000, 3),
            "error": record.error,
        }
        if record.client_address is not None:
            entry["clientAddress"] = record.client_address
        write_record(entry)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT, then drain. Returns the process exit code."""
    problem = ""
    try:
        routes = load_route_table(settings.routes)
        api_keys = load_api_keys(settings.api_keys) if settings.api_keys is not None else None
        scaler_tls = (
            load_scaler_tls(
                settings.scaler_tls_cert, settings.scaler_tls_key, settings.scaler_tls_ca
            )
            if settings.scaler_tls_cert and settings.scaler_tls_key and settings.scaler_tls_ca
            else None
        )
        admin_token = (
            load_admin_token(settings.admin_token_file) if settings.admin_token_file else None
        )
    except (RouteTableError, ApiKeyFileError, ScalerTlsError, AdminTokenError) as error:
        problem = str(error)
    if problem:
        log.error("cannot start: %s", problem)
        return 2
    if api_keys is None:
        log.warning(
            "authentication is off: --api-keys not given; every request is served as tenant 'anonymous'"
        )
    if scaler_tls is None:
        log.warning(
            "the scaler listener is open: --scaler-tls-* not given; anyone who reaches it reads "
            "every model's and tenant's counts and can pose as a peer"
        )
    gateway = Gateway(settings, routes, api_keys, scaler_tls=scaler_tls, admin_token=admin_token)
    try:
        await gateway.start()
    except OSError as error:
        problem = str(error)
    if problem:
        log.error("cannot start: %s", problem)
        await gateway.close()
        return 2
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, gateway.request_stop)
    with contextlib.suppress(asyncio.CancelledError):
        await gateway.wait_stopped()
    return 0
