"""Two gateway processes that point at each other answer KEDA as one."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import grpc
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc

from tests.gateway.client import Reply, chat, post
from tests.gateway.conftest import (
    Processes,
    metric_value,
    route,
    scaled_object,
)
from tests.loopback import free_port, wait_until

MODEL = "google/gemma-3-27b-it"


def test_two_replicas_sum_their_counts_and_push_activity_to_each_other(
    processes: Processes,
) -> None:
    backend_port = free_port()
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{backend_port}")]}
    ports_a = (free_port(), free_port(), free_port())
    ports_b = (free_port(), free_port(), free_port())
    peer_a, peer_b = f"127.0.0.1:{ports_a[1]}", f"127.0.0.1:{ports_b[1]}"
    # each lists the whole set, itself included, as a headless Service would resolve it
    peers = f"{peer_a},{peer_b}"
    a = processes.gateway(routes, "--peers", peers, name="a", ports=ports_a)
    b = processes.gateway(routes, "--peers", peers, name="b", ports=ports_b)

    async def scenario() -> tuple[float, list[Reply]]:
        async with (
            grpc.aio.insecure_channel(b.scaler_address) as channel,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.StreamIsActive(scaled_object(MODEL))
            await stream.initial_metadata()  # B's scaler watches from here on
            # wait until B watches A (the peer stream is up), then send one request to A
            await asyncio.sleep(0.5)
            sent = time.monotonic()
            held = [asyncio.create_task(post(session, a.url + "/v1/chat/completions", chat(MODEL)))]
            pushed = await asyncio.wait_for(stream.read(), 5)
            push_delay = time.monotonic() - sent
            assert pushed.result is True
            stream.cancel()
            # requests split between the two replicas: 3 at A in all, 2 at B
            held += [
                asyncio.create_task(post(session, url + "/v1/chat/completions", chat(MODEL)))
                for url in (a.url, a.url, b.url, b.url)
            ]
            for address in (a.scaler_address, b.scaler_address):
                assert await asyncio.to_thread(
                    wait_until, lambda address=address: metric_value(address, MODEL) == 5, 3.0
                )
            # A dies: only its own counts go with it
            a.process.kill()
            assert await asyncio.to_thread(
                wait_until, lambda: metric_value(b.scaler_address, MODEL) == 2, 3.0
            )
            processes.backend(backend_port)
            replies = await asyncio.gather(*held[3:])
            for task in held[:3]:
                task.cancel()
            await asyncio.gather(*held[:3], return_exceptions=True)
            return push_delay, replies

    push_delay, replies = asyncio.run(scenario())
    print(f"StreamIsActive on B pushed {push_delay * 1000:.1f} ms after a request was sent to A")
    # client -> A -> peer stream -> B -> KEDA's stream: well under a second even on a loaded machine
    assert push_delay < 1.0
    assert [reply.status for reply in replies] == [200, 200]
    assert metric_value(b.scaler_address, MODEL) == 0
    # B found itself in the peer list and does not count itself twice
    assert any(line["message"] == "peer address is this replica" for line in b.logs())


def test_peers_found_through_dns(processes: Processes) -> None:
    """``--peers-dns NAME:PORT``: every address the name resolves to is a peer, itself excepted."""
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    ports_a = (free_port(), free_port(), free_port())
    dns = f"localhost:{ports_a[1]}"  # resolves to A's scaler listener only
    a = processes.gateway(routes, "--peers-dns", dns, "--peer-dns-interval", "0.2", ports=ports_a)
    b = processes.gateway(routes, "--peers-dns", dns, "--peer-dns-interval", "0.2", name="b")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            held = asyncio.create_task(post(session, a.url + "/v1/chat/completions", chat(MODEL)))
            assert await asyncio.to_thread(
                wait_until, lambda: metric_value(b.scaler_address, MODEL) == 1, 5.0
            )
            assert metric_value(a.scaler_address, MODEL) == 1  # A did not count itself twice
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)

    asyncio.run(scenario())
    assert wait_until(
        lambda: any(line["message"] == "peer address is this replica" for line in a.logs()), 3.0
    )
