"""Replica counting: every address of a headless Service is probed, so replica time is exact.

Fake replicas listen on 127.0.0.x (same port), as pods behind one headless Service would. Name
resolution is the one thing that cannot exist here: the resolver handed to the probe (the one seam)
answers the Service's name with those addresses, as cluster DNS would. A replica that is slow or
fails a probe or two while busy stays counted; it counts as gone after
``--probe-failure-threshold`` failures in a row.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sovereign_gateway.counts import Counts
from sovereign_gateway.metering import Metering
from sovereign_gateway.readiness import ModelReadiness, resolve_addresses
from sovereign_gateway.routes import ModelRoute, RouteTable
from sovereign_gateway.service import Gateway
from sovereign_gateway.settings import HostPort, Settings

from tests.gateway.client import chat, post
from tests.gateway.conftest import Gateway as GatewayProcess
from tests.gateway.conftest import Processes, route
from tests.loopback import free_port, wait_until

SERVICE = "llama-pods.sovereign-models.svc.cluster.local"


def test_each_ready_address_counts_as_a_replica(processes: Processes) -> None:
    port = free_port()
    first = processes.backend(port, host="127.0.0.1")
    second = processes.backend(port, host="127.0.0.2")
    asked: list[tuple[str, int]] = []

    async def cluster_dns(host: str, resolved_port: int) -> list[str]:
        asked.append((host, resolved_port))
        return ["127.0.0.1", "127.0.0.2"]

    async def scenario() -> tuple[list[int], dict[str, Any]]:
        metering = Metering(price_per_gpu_hour=3.6, currency="EUR")
        settings = Settings(routes=Path("routes.json"), warm_probe_interval=0.05)
        route = ModelRoute(name="m", upstream=f"http://{SERVICE}:{port}", gpus_per_replica=2)
        seen: list[int] = []
        async with aiohttp.ClientSession() as session:
            state = ModelReadiness(route, settings, session, Counts(), metering, cluster_dns)
            state.start()
            try:
                for wanted in (2, 1):
                    deadline = time.monotonic() + 5
                    while state.replicas != wanted and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
                    seen.append(state.replicas)
                    if wanted == 2:
                        await asyncio.sleep(0.3)  # some replica time at two replicas
                        await asyncio.to_thread(second.kill)
            finally:
                await state.stop()
        (row,) = metering.usage(["m"])["models"]
        return seen, row

    seen, row = asyncio.run(scenario())
    assert seen == [2, 1]
    assert asked[0] == (SERVICE, port)
    assert row["peakReplicas"] == 2
    assert row["gpuSeconds"] == pytest.approx(2 * row["replicaSeconds"], abs=0.002)
    assert row["replicaSeconds"] > 0.5  # at least 0.3 s at two replicas
    assert first.process.poll() is None


def test_an_ip_literal_resolves_to_itself() -> None:
    assert asyncio.run(resolve_addresses("127.0.0.1", 80)) == ["127.0.0.1"]


HEADLESS = "llama-replicas.sovereign-models.svc.cluster.local"


def test_the_replicas_address_is_metered_per_replica_while_requests_go_to_the_upstream(
    processes: Processes, tmp_path: Path
) -> None:
    port = free_port()
    service = processes.backend(port, host="127.0.0.1")  # stands for the ClusterIP Service
    pods = [processes.backend(port, host=f"127.0.0.{n}") for n in (2, 3)]

    async def cluster_dns(host: str, resolved_port: int) -> list[str]:
        if host != HEADLESS:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["127.0.0.2", "127.0.0.3"]

    routes = RouteTable(
        models=[
            ModelRoute(
                name="m",
                upstream=f"http://127.0.0.1:{port}",
                replicas=f"{HEADLESS}:{port}",
                gpus_per_replica=2,
            )
        ]
    )
    routes_file = tmp_path / "routes.json"
    routes_file.write_text(routes.to_json())
    listen, scaler, admin = (HostPort("127.0.0.1", free_port()) for _ in range(3))
    settings = Settings(
        routes=routes_file,
        listen=listen,
        scaler_listen=scaler,
        admin_listen=admin,
        warm_probe_interval=0.05,
    )

    async def wait_replicas(gateway: Gateway, wanted: int) -> int:
        deadline = time.monotonic() + 5
        while gateway.models["m"].replicas != wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return gateway.models["m"].replicas

    async def scenario() -> tuple[list[int], int, dict[str, Any]]:
        gateway = Gateway(settings, routes, None, resolve=cluster_dns)
        await gateway.start()
        seen: list[int] = []
        try:
            seen.append(await wait_replicas(gateway, 2))
            async with aiohttp.ClientSession() as session:
                reply = await post(session, f"http://{listen}/v1/chat/completions", chat("m"))
                await asyncio.sleep(0.3)  # some replica time at two replicas
                await asyncio.to_thread(pods[1].kill)
                seen.append(await wait_replicas(gateway, 1))
                async with session.get(f"http://{admin}/usage") as response:
                    usage = await response.json()
        finally:
            await gateway.close()
        (row,) = usage["models"]
        return seen, reply.status, row

    seen, status, row = asyncio.run(scenario())
    assert status == 200
    assert seen == [2, 1]
    # the request went through the upstream; the replicas were only probed
    assert service.stats()["requests"] == 1
    assert pods[0].stats()["requests"] == 0
    assert row["peakReplicas"] == 2
    assert row["gpuSeconds"] == pytest.approx(2 * row["replicaSeconds"], abs=0.01)
    assert row["replicaSeconds"] > 0.6  # at least 0.3 s at two replicas


def _ready_replicas(gateway: GatewayProcess) -> float:
    return gateway.metric("sovereign_gateway_ready_replicas", model="m")


def test_a_slow_or_failing_health_does_not_flip_a_ready_model_cold(processes: Processes) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route("m", backend.url)]},
        "--warm-probe-interval",
        "0.1",
        "--probe-timeout",
        "0.5",
        "--warm-probe-timeout",
        "3",
        "--probe-failure-threshold",
        "3",
    )
    assert wait_until(lambda: _ready_replicas(gateway) == 1, 5)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_ready_replicas(gateway))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        # busy: /health answers after 1 s, longer than a cold probe may take
        backend.set_health(delay=1.0)
        time.sleep(2.5)

        async def one_request() -> int:
            # a model wrongly counted cold would hold the request until the replica answers fast
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                reply = await post(session, gateway.url + "/v1/chat/completions", chat("m"))
                return reply.status

        status = asyncio.run(one_request())
        # fewer failed probes in a row than the threshold
        backend.set_health(failures=2)
        time.sleep(1.0)
    finally:
        stop.set()
        sampler.join()
    assert status == 200
    assert samples
    assert min(samples) == 1, "the model was counted cold while its replica was busy"
    assert [record["coldStart"] for record in gateway.records()] == [False]
    # a replica that keeps failing does go
    backend.set_health(failures=1000)
    assert wait_until(lambda: _ready_replicas(gateway) == 0, 5)


def test_a_replica_ready_before_dns_lists_it_ends_the_cold_start_through_the_upstream(
    processes: Processes,
) -> None:
    port = free_port()
    processes.backend(port, host="127.0.0.1")  # the ClusterIP Service, whose endpoint is ready
    processes.backend(port, host="127.0.0.2")  # the pod behind it
    listed: list[str] = []  # what cluster DNS answers for the headless Service so far

    async def cluster_dns(host: str, resolved_port: int) -> list[str]:
        if host != HEADLESS or not listed:
            # the pod is ready, but the headless name still has no record (a cached negative
            # answer): resolvers say the name is not known
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(listed)

    async def scenario() -> tuple[int, int]:
        settings = Settings(routes=Path("routes.json"), warm_probe_interval=0.05)
        route = ModelRoute(
            name="m", upstream=f"http://127.0.0.1:{port}", replicas=f"{HEADLESS}:{port}"
        )
        async with aiohttp.ClientSession() as session:
            state = ModelReadiness(
                route, settings, session, Counts(), Metering(0.0, "EUR"), cluster_dns
            )
            state.start()
            try:
                # the cold start ends on the upstream's answer, not on DNS
                await state.wait_ready(time.monotonic() + 3)
                before_dns = state.replicas
                listed.extend(["127.0.0.2", "127.0.0.1"])
                deadline = time.monotonic() + 5
                while state.replicas != 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                return before_dns, state.replicas
            finally:
                await state.stop()

    before_dns, after_dns = asyncio.run(scenario())
    assert before_dns == 1
    # once DNS lists the replicas, each is counted
    assert after_dns == 2
