"""A tenant's ``maxConcurrentRequests`` against real gateway processes: exact at one replica, and
across replicas the bound the README states (the limit x the replicas, in the worst case)."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter

import aiohttp

from tests.gateway.client import Reply, chat, post
from tests.gateway.conftest import Gateway, Processes, metric_value, route
from tests.loopback import free_port, wait_until

MODEL = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
TENANT = "team-b"
KEY = "sk-team-b-5f0c1d2e3a4b"
LIMIT = 2
# requests sent to each replica at once in one burst, far more than the limit
BURST = 8
ROUNDS = 6


def _tenant_gateway(
    processes: Processes, *args: str, name: str, ports: tuple[int, int, int] | None = None
) -> Gateway:
    keys = processes.tmp / "api-keys"
    keys.write_text(f"{TENANT}:{hashlib.sha256(KEY.encode()).hexdigest()}\n")
    # nothing listens upstream: every admitted request stays held, so "admitted" is a count
    routes = {
        "models": [route(MODEL, f"http://127.0.0.1:{free_port()}")],
        "tenants": [{"name": TENANT, "maxConcurrentRequests": LIMIT}],
    }
    return processes.gateway(routes, "--api-keys", str(keys), *args, name=name, ports=ports)


def _held_here(gateway: Gateway) -> int:
    """The tenant's requests this replica alone holds (its own admin metrics)."""
    return round(
        gateway.metric("sovereign_gateway_pending_requests", model=MODEL, tenant=TENANT)
        + gateway.metric("sovereign_gateway_in_flight_requests", model=MODEL, tenant=TENANT)
    )


async def _burst(
    session: aiohttp.ClientSession,
    gateways: list[Gateway],
    seen_by: list[Gateway],
    already_held: int = 0,
) -> tuple[int, list[Reply], list[asyncio.Task[Reply]]]:
    """Send BURST requests to each of ``gateways`` at once; (admitted, refusals, held tasks) once
    every refusal is back and every replica in ``seen_by`` counts what is held over all of them
    (``already_held`` from earlier bursts, plus those admitted now)."""
    headers = {"Authorization": f"Bearer {KEY}"}
    tasks = [
        asyncio.create_task(
            post(session, gateway.url + "/v1/chat/completions", chat(MODEL), headers)
        )
        for _ in range(BURST)
        for gateway in gateways
    ]

    def settled() -> bool:
        expected = already_held + sum(not task.done() for task in tasks)
        held = sum(_held_here(gateway) for gateway in seen_by)
        return held == expected and all(
            metric_value(gateway.scaler_address, MODEL) == expected for gateway in seen_by
        )

    assert await asyncio.to_thread(wait_until, settled, 10.0)
    refusals = [task.result() for task in tasks if task.done()]
    held = [task for task in tasks if not task.done()]
    return len(held), refusals, held


async def _release(held: list[asyncio.Task[Reply]], gateways: list[Gateway]) -> None:
    """Client disconnects end the held requests; wait until no replica counts them any more."""
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert await asyncio.to_thread(
        wait_until, lambda: all(_held_here(gateway) == 0 for gateway in gateways), 5.0
    )


def _assert_refusals(refusals: list[Reply]) -> None:
    for reply in refusals:
        assert reply.status == 429
        assert reply.body["error"]["code"] == "tenant_concurrency_limit"


def test_one_replica_admits_exactly_the_limit_from_a_burst(processes: Processes) -> None:
    gateway = _tenant_gateway(processes, name="single")

    async def scenario() -> list[int]:
        admitted_per_round = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for _ in range(ROUNDS):
                admitted, refusals, held = await _burst(session, [gateway], [gateway])
                _assert_refusals(refusals)
                admitted_per_round.append(admitted)
                await _release(held, [gateway])
        return admitted_per_round

    assert asyncio.run(scenario()) == [LIMIT] * ROUNDS


def test_two_replicas_admit_at_most_the_limit_times_the_replicas_and_the_limit_once_counts_are_shared(
    processes: Processes,
) -> None:
    ports_a = (free_port(), free_port(), free_port())
    ports_b = (free_port(), free_port(), free_port())
    peers = f"127.0.0.1:{ports_a[1]},127.0.0.1:{ports_b[1]}"
    a = _tenant_gateway(processes, "--peers", peers, name="a", ports=ports_a)
    b = _tenant_gateway(processes, "--peers", peers, name="b", ports=ports_b)
    replicas = [a, b]

    async def scenario() -> list[int]:
        admitted_per_round = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            # the peer streams are up: a request held at A is counted at B
            first, _, held = await _burst(session, [a], replicas)
            await _release(held, replicas)
            assert first == LIMIT
            for _ in range(ROUNDS):
                admitted, refusals, held = await _burst(session, replicas, replicas)
                _assert_refusals(refusals)
                # each replica alone never passes the limit, whatever its peers have admitted
                assert all(_held_here(gateway) <= LIMIT for gateway in replicas)
                # once the counts have reached the peers, the limit holds across replicas
                _, late_refusals, late_held = await _burst(session, replicas, replicas, admitted)
                assert late_held == []
                assert len(late_refusals) == BURST * len(replicas)
                _assert_refusals(late_refusals)
                admitted_per_round.append(admitted)
                await _release(held, replicas)
        return admitted_per_round

    admitted_per_round = asyncio.run(scenario())
    worst = max(admitted_per_round)
    print(
        f"limit {LIMIT}, {len(replicas)} replicas, {BURST} requests to each at once: admitted "
        f"{dict(sorted(Counter(admitted_per_round).items()))} (admitted: rounds); worst {worst}"
    )
    assert all(LIMIT <= admitted <= LIMIT * len(replicas) for admitted in admitted_per_round)
