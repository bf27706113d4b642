"""The gateway process: its listeners, the gRPC scaler, and the lifecycle that ties its parts.

The parts, each in its module: the HTTP surface (``http_surface``), admission and holds
(``admission``, ``holds``), forwarding (``forwarding``), the route reload (``route_reload``), and
the state they share (``serving_state``). This module starts them, and drains and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import uuid
from typing import Final

import aiohttp
import grpc
from aiohttp import web

from sovereign_gateway.admin_token import AdminToken, AdminTokenError, load_admin_token
from sovereign_gateway.admission import Admission
from sovereign_gateway.auth import ApiKeyFileError, ApiKeys, load_api_keys
from sovereign_gateway.connections import (
    ADMIN_ANSWER_SLOTS,
    ADMIN_MAX_CONNECTIONS,
    ANSWER_SLOTS,
    GuardedSite,
    connection_limit,
    raise_descriptor_limit,
)
from sovereign_gateway.counts import Counts
from sovereign_gateway.forwarding import Forwarder, upstream_session
from sovereign_gateway.http_surface import HttpSurface
from sovereign_gateway.logs import limit_accept_error_lines
from sovereign_gateway.metering import Metering
from sovereign_gateway.peers import (
    PeerService,
    PeerWatchers,
    SelfTokens,
    add_peer_service,
    server_options,
)
from sovereign_gateway.readiness import ModelReadiness, Resolver, resolve_addresses
from sovereign_gateway.route_reload import RouteReload
from sovereign_gateway.routes import RouteTable, RouteTableError, load_route_table
from sovereign_gateway.scaler import ExternalScaler, StreamSlots, add_scaler
from sovereign_gateway.scaler_tls import ScalerTls, ScalerTlsError, load_scaler_tls
from sovereign_gateway.serving_state import ServingState
from sovereign_gateway.settings import Settings

log = logging.getLogger(__name__)

_LISTEN_BACKLOG: Final = 2048
# after the drain: how long the listeners, and the gRPC calls still open (KEDA's and the peers'
# streams), get to close
_CLOSE_SECONDS: Final = 0.5


async def _start_site(site: web.BaseSite, host: str, port: int) -> None:
    try:
        await site.start()
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None


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
        self.state = ServingState.starting(settings, routes, api_keys)
        self._scaler_tls = scaler_tls
        self._admin_token = admin_token
        self._resolve = resolve
        self.replica_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"
        self._stopped = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._admission: Admission | None = None
        self._runners: list[web.AppRunner] = []
        self._grpc: grpc.aio.Server | None = None
        self._self_tokens = SelfTokens()
        self._scaler_streams = StreamSlots(settings.max_scaler_streams, "--max-scaler-streams")
        self._peer_streams = StreamSlots(settings.max_peer_streams, "--max-peer-streams")
        self._peers = PeerWatchers(
            self.replica_id,
            self.counts,
            settings.peer_retry_interval,
            routes=lambda: self.state.routes,
            max_count=settings.max_peer_count,
            self_tokens=self._self_tokens,
            credentials=scaler_tls.channel_credentials() if scaler_tls is not None else None,
            server_name=settings.peer_tls_server_name,
        )
        self._reload = RouteReload(self.state, self._add_model, self._retire_model)
        self._tasks: list[asyncio.Task[None]] = []

    # what the parts share, as the process's callers and tests read it

    @property
    def routes(self) -> RouteTable:
        return self.state.routes

    @property
    def api_keys(self) -> ApiKeys | None:
        return self.state.api_keys

    @property
    def models(self) -> dict[str, ModelReadiness]:
        return self.state.models

    @property
    def counts(self) -> Counts:
        return self.state.counts

    @property
    def metering(self) -> Metering:
        return self.state.metering

    @property
    def draining(self) -> bool:
        return self.state.draining

    def check_files(self) -> None:
        """Reload the route table and the key file when they changed (``RouteReload``)."""
        self._reload.check_files()

    def apply_routes(self, routes: RouteTable) -> None:
        """Swap in a new route table (``RouteReload``)."""
        self._reload.apply_routes(routes)

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        self._session = upstream_session()
        self._admission = Admission(self.state, Forwarder(self.state, self._session))
        for route in self.routes.models:
            self._add_model(route.name)

        self._grpc = grpc.aio.server(
            options=server_options(
                settings.scaler_max_connection_age, settings.scaler_max_connection_age_grace
            )
        )
        add_scaler(
            self._grpc,
            ExternalScaler(self.counts, lambda: self.state.routes, self._scaler_streams),
        )
        add_peer_service(
            self._grpc,
            PeerService(
                self.replica_id,
                self.counts,
                self._peer_streams,
                self._self_tokens,
                lambda: self.state.routes,
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

        surface = HttpSurface(self.state, self._admission.handle, self._admin_token)
        await self._serve_public(surface.public_app())
        await self._serve(
            surface.admin_app(),
            "admin",
            settings.admin_listen.host,
            settings.admin_listen.port,
            max_connections=ADMIN_MAX_CONNECTIONS,
            answer_slots=ADMIN_ANSWER_SLOTS,
        )

        self._peers.set_addresses({str(peer) for peer in settings.peers})
        if settings.peers_dns is not None:
            self._peers.start_dns(settings.peers_dns, settings.peer_dns_interval)
        self._reload.note_files()
        self._tasks.append(asyncio.create_task(self._reload.follow(), name="reload"))
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

    async def _serve_public(self, app: web.Application) -> None:
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
            app,
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
        readiness = ModelReadiness(
            route, self.settings, self._session, self.counts, self.metering, self._resolve
        )
        self.models[name] = readiness
        readiness.start()

    def _retire_model(self, name: str) -> None:
        """A model left the route table: its held requests get 404, its probes stop."""
        readiness = self.models.pop(name)
        readiness.remove()
        self._tasks.append(asyncio.create_task(readiness.stop()))

    def request_stop(self) -> None:
        """SIGTERM: stop taking requests, let the ones in flight finish for up to
        ``--drain-seconds``, then stop."""
        if not self.state.draining:
            self.state.draining = True
            log.info("draining", extra={"drainSeconds": self.settings.drain_seconds})
            self._tasks.append(asyncio.create_task(self._drain(), name="drain"))

    async def _drain(self) -> None:
        """Stop listening; requests in flight run until they end or the drain does, when a
        stream gets an error event and a request not yet answered a 503."""
        deadline = asyncio.get_running_loop().time() + self.settings.drain_seconds
        if self._admission is not None:
            self._admission.end_at(deadline)
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        if self._admission is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline + _CLOSE_SECONDS):
                    await self._admission.wait_idle()
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
        for readiness in self.models.values():
            await readiness.stop()
        if self._grpc is not None:
            await self._grpc.stop(grace=_CLOSE_SECONDS)
        if self._session is not None:
            await self._session.close()
        log.info("gateway stopped")


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
