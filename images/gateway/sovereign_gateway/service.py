"""The gateway process: public OpenAI-compatible listener, admin listener, gRPC scaler, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
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

from sovereign_gateway.auth import ANONYMOUS, ApiKeyFileError, ApiKeys, load_api_keys
from sovereign_gateway.counts import Counts
from sovereign_gateway.errors import error_response, sse_error_event
from sovereign_gateway.logs import iso_time, write_record
from sovereign_gateway.metering import Metering
from sovereign_gateway.peers import (
    PeerService,
    PeerWatchers,
    add_peer_service,
    server_options,
)
from sovereign_gateway.readiness import ModelReadiness, Resolver, resolve_addresses
from sovereign_gateway.routes import RouteTable, RouteTableError, load_route_table
from sovereign_gateway.scaler import ExternalScaler, add_scaler
from sovereign_gateway.settings import Settings
from sovereign_gateway.usage_sniffer import StreamUsage, Usage, usage_from_body

log = logging.getLogger(__name__)

ROUTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# a forward that finds no replica listening goes back to the hold; after this many it is a 503
_MAX_FORWARD_ATTEMPTS = 5
_FORWARD_HEADERS = ("Content-Type", "Accept")
_LISTEN_BACKLOG = 2048
_UPSTREAM_KEEPALIVE_SECONDS = 4.0
# replica time is split between tenants at request starts and ends, at most this often (seconds)
_ACCRUE_GRANULARITY = 0.05
_SERVER_HEADER = "sovereign-gateway"
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
    usage: Usage | None = None
    # a streamed reply under way, and whether what was sent of it ends at an SSE event's end
    stream_response: web.StreamResponse | None = None
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
    response.headers["Server"] = _SERVER_HEADER


class Gateway:
    """Everything one gateway process runs. ``start`` then ``wait_stopped``; SIGTERM drains."""

    def __init__(
        self,
        settings: Settings,
        routes: RouteTable,
        api_keys: ApiKeys | None,
        resolve: Resolver = resolve_addresses,
    ) -> None:
        self.settings = settings
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
        self._peers = PeerWatchers(self.replica_id, self.counts, settings.peer_retry_interval)
        self._tasks: list[asyncio.Task[None]] = []
        self._stamps: dict[Path, _FileStamp | None] = {}
        # each routed request runs under a deadline that SIGTERM sets to the end of the drain
        self._request_scopes: set[asyncio.Timeout] = set()
        self._drain_deadline: float | None = None
        self._routed_requests = 0
        self._no_requests = asyncio.Event()
        self._no_requests.set()

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        self._session = aiohttp.ClientSession(
            # idle upstream connections are dropped before the backend drops them (vLLM's
            # uvicorn closes idle keep-alive connections after 5 s)
            connector=aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=10, keepalive_timeout=_UPSTREAM_KEEPALIVE_SECONDS
            ),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        for route in self.routes.models:
            self._add_model(route.name)

        self._grpc = grpc.aio.server(
            options=server_options(
                settings.scaler_max_connection_age, settings.scaler_max_connection_age_grace
            )
        )
        add_scaler(self._grpc, ExternalScaler(self.counts, lambda: self.routes))
        add_peer_service(self._grpc, PeerService(self.replica_id, self.counts))
        if self._grpc.add_insecure_port(str(settings.scaler_listen)) == 0:
            raise OSError(f"--scaler-listen: cannot listen on {settings.scaler_listen}")
        await self._grpc.start()

        await self._serve(self._public_app(), settings.listen.host, settings.listen.port)
        await self._serve(self._admin_app(), settings.admin_listen.host, settings.admin_listen.port)

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

    async def _serve(self, app: web.Application, host: str, port: int) -> None:
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
        # a burst of clients must not overflow the accept queue (a dropped SYN costs a second)
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=_LISTEN_BACKLOG)
        try:
            await site.start()
        except OSError as error:
            raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None

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
                self.apply_routes(load_route_table(settings.routes))
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
        """Swap in a new route table; requests already admitted keep the route they started with."""
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
                self._tasks.append(asyncio.create_task(state.stop()))
        log.info("route table reloaded", extra={"models": [route.name for route in routes.models]})

    # ---- listeners ----------------------------------------------------------------------------

    def _public_app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes)
        app.on_response_prepare.append(_hide_server_version)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/models", self._list_models)
        for path in ROUTED_PATHS:
            app.router.add_post(path, self._inference)
        app.router.add_route("*", "/{tail:.*}", self._unknown_path)
        return app

    def _admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/usage", self._usage)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "ready", "models": len(self.routes.models)})

    async def _metrics(self, request: web.Request) -> web.Response:
        for state in self.models.values():
            state.accrue()
        return web.Response(
            body=generate_latest(self.metering.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def _usage(self, request: web.Request) -> web.Response:
        for state in self.models.values():
            state.accrue()
        document = self.metering.usage([route.name for route in self.routes.models])
        document["since"] = iso_time(document["since"])
        return web.json_response(document)

    async def _unknown_path(self, request: web.Request) -> web.Response:
        return error_response(
            404,
            f"Invalid URL ({request.method} {request.path})",
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
        incoming_id = request.headers.get("X-Request-Id", "")
        record = _Record(
            request_id=incoming_id if _REQUEST_ID.fullmatch(incoming_id) else uuid.uuid4().hex,
            arrived_wall=time.time(),
            arrived=time.monotonic(),
            endpoint=request.path,
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
        else:
            record.status = 499 if record.error == CLIENT_GONE else response.status
            return response
        finally:
            self._finish_record(record)
            self._routed_requests -= 1
            if not self._routed_requests:
                self._no_requests.set()

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

    async def _admit(  # noqa: PLR0911  (one return per refusal reads best)
        self, request: web.Request, record: _Record
    ) -> web.StreamResponse:
        tenant = self._authenticate(request)
        if tenant is None:
            record.error = "invalid_api_key"
            return self._unauthorized(request)
        record.tenant = tenant
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._error(
                record,
                413,
                f"Request body too large: the limit is {self.settings.max_body_bytes} bytes.",
                "invalid_request_error",
                "request_too_large",
            )
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._error(
                record,
                400,
                "We could not parse the JSON body of your request: expected a JSON object.",
                "invalid_request_error",
                "invalid_json",
            )
        model = body.get("model")
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
        record.stream = body.get("stream") is True
        # ``models`` holds exactly the models of the current route table (``apply_routes``)
        state = self.models.get(model)
        if state is None:
            return self._error(
                record,
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
                param="model",
            )
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

    async def _forward(
        self, request: web.Request, record: _Record, state: ModelReadiness, raw: bytes
    ) -> web.StreamResponse:
        assert self._session is not None
        route = state.route
        model, tenant = record.model, record.tenant
        deadline = record.arrived + route.cold_start_timeout_seconds
        headers = {
            name: request.headers[name] for name in _FORWARD_HEADERS if name in request.headers
        }
        headers["X-Request-Id"] = record.request_id
        url = route.upstream + request.path
        self.counts.hold(model, tenant)
        in_flight = False
        try:
            for _attempt in range(_MAX_FORWARD_ATTEMPTS):
                if not state.ready:
                    record.cold_start = True
                    try:
                        await state.wait_ready(deadline)
                    except TimeoutError:
                        return self._cold_timeout(record, state)
                    record.cold_wait = time.monotonic() - record.arrived
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
                    # nothing listens (a Service without ready endpoints refuses): hold again
                    log.debug("no replica listening", extra={"model": model, "error": repr(error)})
                    state.mark_unready()
                    self.counts.back_to_pending(model, tenant)
                    in_flight = False
                    if time.monotonic() >= deadline:
                        return self._cold_timeout(record, state)
                    continue
                except aiohttp.ClientConnectionError as error:
                    # closed before any answer: a pooled connection the replica had already
                    # closed, or a replica going away; the next attempt opens a new connection
                    log.debug("connection lost", extra={"model": model, "error": repr(error)})
                    self.counts.back_to_pending(model, tenant)
                    in_flight = False
                    continue
                except TimeoutError:
                    return self._error(
                        record,
                        504,
                        f"The model `{model}` did not answer within "
                        f"{route.request_timeout_seconds:g} seconds.",
                        "server_error",
                        "upstream_timeout",
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
        content_type = upstream.headers.get("Content-Type", "application/json")
        if (
            record.stream
            and upstream.status == 200
            and content_type.startswith("text/event-stream")
        ):
            return await self._stream(request, record, upstream, content_type)
        try:
            body = await upstream.read()
        except TimeoutError:
            return self._error(
                record,
                504,
                f"The model `{record.model}` did not answer within the request timeout.",
                "server_error",
                "upstream_timeout",
            )
        except aiohttp.ClientError:
            return self._error(
                record,
                502,
                f"The model `{record.model}`'s replica stopped while answering.",
                "server_error",
                "upstream_disconnected",
            )
        record.usage = usage_from_body(body) if upstream.status == 200 else None
        return web.Response(
            status=upstream.status,
            body=body,
            headers={"Content-Type": content_type, "X-Request-Id": record.request_id},
        )

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
            record.error = "upstream_timeout" if timed_out else "upstream_disconnected"
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
            await response.write(sse_error_event(message, record.error))
        await response.write_eof()
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
            "endpoint": record.endpoint,
            "model": record.model or None,
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
    except (RouteTableError, ApiKeyFileError) as error:
        problem = str(error)
    if problem:
        log.error("cannot start: %s", problem)
        return 2
    if api_keys is None:
        log.warning(
            "authentication is off: --api-keys not given; every request is served as tenant 'anonymous'"
        )
    gateway = Gateway(settings, routes, api_keys)
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
