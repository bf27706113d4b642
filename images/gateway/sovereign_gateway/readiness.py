"""Per-model readiness: probes the upstream's ``/health`` and releases held requests when it answers.

While requests wait for a cold model the probe runs every ``cold_probe_interval`` (50 ms by default),
so a held request is forwarded within one interval plus one probe round trip of the first replica
becoming ready. Otherwise the probe runs every ``warm_probe_interval``, with the longer
``warm_probe_timeout``: it notices a scale-down to zero and meters replica time. A replica counts as
gone after ``probe_failure_threshold`` failed probes in a row, so a busy ``/health`` does not flip a
model cold. Probing the route's ``replicas`` address (a headless Service: one DNS record per ready
pod), rather than watching EndpointSlices, keeps the gateway free of Kubernetes API access and
works against any http(s) backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp

from sovereign_gateway.counts import Counts
from sovereign_gateway.metering import Metering
from sovereign_gateway.routes import ModelRoute, split_host_port
from sovereign_gateway.settings import Settings

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
"""Resolves a host name to its distinct addresses."""


async def resolve_addresses(host: str, port: int) -> list[str]:
    """The distinct addresses ``host`` resolves to (an IP literal resolves to itself)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class RouteRemoved(Exception):
    """The model left the route table while a request waited for one of its replicas."""


class ModelReadiness:
    """One model's readiness, cold-start bookkeeping and replica-time metering."""

    def __init__(
        self,
        route: ModelRoute,
        settings: Settings,
        session: aiohttp.ClientSession,
        counts: Counts,
        metering: Metering,
        resolve: Resolver | None = None,
    ) -> None:
        self.route = route
        self._resolve = resolve or resolve_addresses
        self.name = route.name
        self._settings = settings
        self._session = session
        self._counts = counts
        self._metering = metering
        self.ready = False
        self.replicas = 0
        self.removed = False
        self._ready_event = asyncio.Event()
        self._wake = asyncio.Event()
        self.cold_since: float | None = None
        self._observed: deque[float] = deque(maxlen=5)
        # replica address -> failed probes in a row, for the replicas counted as ready
        self._failures: dict[str, int] = {}
        self._accrued_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        metering.replicas_changed(self.name, 0, route.gpus_per_replica)

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe_loop(), name=f"probe {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.accrue()

    def remove(self) -> None:
        """The model left the route table: every request waiting here is woken at once and
        follows the table that replaced this route (``wait_ready`` raises RouteRemoved)."""
        self.removed = True
        # wakes the waiters; ``wait_ready`` then tells them that the model left
        self._ready_event.set()

    def update_route(self, route: ModelRoute) -> None:
        """A reloaded route table changed this model's settings; counts stay, and the next probe
        (at once) looks at the new route, whose ready replicas release the requests held here."""
        self.accrue()
        self.route = route
        self._metering.replicas_changed(self.name, self.replicas, route.gpus_per_replica)
        self._wake.set()

    async def wait_ready(self, deadline: float) -> None:
        """Return once a replica is ready; TimeoutError at ``deadline`` (monotonic seconds);
        RouteRemoved once the model has left the route table."""
        if self.removed:
            raise RouteRemoved(self.name)
        if self.ready:
            return
        if self.cold_since is None:
            self.cold_since = time.monotonic()
        self._wake.set()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        async with asyncio.timeout(remaining):
            await self._ready_event.wait()
        if self.removed:
            raise RouteRemoved(self.name)

    def mark_unready(self) -> None:
        """A forward found no replica listening: hold requests until the probe sees one again."""
        self._failures.clear()
        self._set_replicas(0)
        self._wake.set()

    def expected_cold_start(self) -> float:
        """Seconds a cold start of this model takes: the median of the last ones observed, else
        the route's estimate, else the gateway's default."""
        if self._observed:
            return statistics.median(self._observed)
        if self.route.expected_cold_start_seconds is not None:
            return self.route.expected_cold_start_seconds
        return self._settings.default_cold_start_seconds

    def cold_retry_after(self) -> float:
        """Seconds until the model is likely ready, for Retry-After (at least 1)."""
        if self.ready:
            return 1.0
        expected = self.expected_cold_start()
        if self.cold_since is None:
            return expected
        return max(expected - (time.monotonic() - self.cold_since), 1.0)

    def accrue(self, *, at_least: float = 0.0) -> None:
        """Meter replica time up to now at the current replica count.

        The data path passes ``at_least``: shorter stretches are left to the next call, which
        charges them to the requests in flight then (a bounded error, for far fewer updates).
        """
        now = time.monotonic()
        if now - self._accrued_at < at_least:
            return
        seconds, self._accrued_at = now - self._accrued_at, now
        if self.replicas:
            self._metering.replica_time(
                self.name,
                self.replicas,
                self.route.gpus_per_replica,
                seconds,
                self._counts.local_in_flight_by_tenant(self.name),
            )

    def _set_replicas(self, replicas: int) -> None:
        if replicas == self.replicas:
            return
        self.accrue()
        self.replicas = replicas
        self._metering.replicas_changed(self.name, replicas, self.route.gpus_per_replica)
        if replicas and not self.ready:
            self.ready = True
            self._ready_event.set()
            if self.cold_since is not None:
                seconds = time.monotonic() - self.cold_since
                self.cold_since = None
                self._observed.append(seconds)
                self._metering.cold_start(self.name, seconds)
                log.info(
                    "model ready after cold start",
                    extra={"model": self.name, "coldStartSeconds": round(seconds, 3)},
                )
            else:
                log.info("model ready", extra={"model": self.name})
        elif not replicas and self.ready:
            self.ready = False
            self._ready_event.clear()
            log.info("model has no ready replica", extra={"model": self.name})

    def _probe_endpoint(self) -> tuple[str, int, bool]:
        """(host, port, per address) of what the probe resolves: the replicas' headless Service
        when the route names one, otherwise the upstream's host."""
        if self.route.replicas is not None:
            host, port = split_host_port(self.route.replicas)
            return host, port, True
        parts = urlsplit(self.route.upstream)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return parts.hostname or "", port, False

    async def _probe_answers(self) -> dict[str, bool] | None:
        """Each replica address and whether its ``/health`` answered; None when the name did
        not resolve.

        A ClusterIP Service name resolves to one address: then the upstream URL itself is probed
        and the answer means "at least one". A headless Service resolves to one address per
        ready pod: each is probed, so the count is exact. Requests always go to the upstream.
        """
        parts = urlsplit(self.route.upstream)
        host, port, per_address = self._probe_endpoint()
        try:
            addresses = await self._resolve(host, port)
        except OSError:
            return None
        if not per_address and len(addresses) <= 1:
            return {self.route.upstream: await self._healthy(self.route.upstream + "/health")}
        base = f"{parts.scheme}://{{}}:{port}{parts.path}/health"
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        answers = await asyncio.gather(
            *(
                self._healthy(
                    base.format(f"[{address}]" if ":" in address else address),
                    host_header=netloc,
                    server_hostname=host if parts.scheme == "https" else None,
                )
                for address in addresses
            )
        )
        return dict(zip(addresses, answers, strict=True))

    async def _probe(self) -> int:
        """Ready replicas, with hysteresis: a replica that answered stays counted until it fails
        ``probe_failure_threshold`` probes in a row (a replica busy generating may miss one), or
        at once when its address leaves DNS."""
        answers = await self._probe_answers()
        threshold = self._settings.probe_failure_threshold
        for address in list(self._failures):
            if answers is not None and address not in answers:
                del self._failures[address]  # no longer a ready pod of the headless Service
        for address, healthy in (answers or dict.fromkeys(self._failures, False)).items():
            if healthy:
                self._failures[address] = 0
            elif address in self._failures:
                self._failures[address] += 1
                if self._failures[address] >= threshold:
                    del self._failures[address]
        if not self._failures and self.route.replicas is not None:
            # A replica that just became ready is in the Service's endpoints before its name is
            # in the headless Service's DNS (a negative answer stays cached for seconds): the
            # upstream itself decides that at least one replica serves, so a cold start is not
            # held up by DNS, and the count follows once DNS lists the replicas.
            upstream_healthy = await self._healthy(self.route.upstream + "/health")
            return 1 if upstream_healthy else 0
        return len(self._failures)

    async def _healthy(
        self, url: str, host_header: str | None = None, server_hostname: str | None = None
    ) -> bool:
        timeout = self._settings.warm_probe_timeout if self.ready else self._settings.probe_timeout
        try:
            async with self._session.get(
                url,
                headers={"Host": host_header} if host_header else None,
                server_hostname=server_hostname,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _probe_loop(self) -> None:
        while True:
            self._wake.clear()
            self._set_replicas(await self._probe())
            self.accrue()
            waiting = self._counts.local_model(self.name).pending > 0
            interval = (
                self._settings.cold_probe_interval
                if waiting and not self.ready
                else self._settings.warm_probe_interval
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
