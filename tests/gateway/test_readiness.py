"""Replica counting: every address of a headless Service is probed, so replica time is exact.

Two fake replicas listen on 127.0.0.1 and 127.0.0.2 (same port), as two pods behind one headless
Service would. Name resolution is the one thing that cannot exist here: the resolver handed to
the probe answers the Service's name with those two addresses, as cluster DNS would.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sovereign_gateway.counts import Counts
from sovereign_gateway.metering import Metering
from sovereign_gateway.readiness import ModelReadiness, resolve_addresses
from sovereign_gateway.routes import ModelRoute
from sovereign_gateway.settings import Settings

from tests.gateway.conftest import Processes
from tests.loopback import free_port

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
