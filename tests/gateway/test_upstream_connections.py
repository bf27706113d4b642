"""How the gateway talks to a model's replicas: a new connection per request, so a replica that
is draining before it stops (it has left the Service's endpoints) gets no new requests over a kept
connection; and replies asked for uncompressed, since their bytes are passed on as they come."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.gateway.client import chat, post
from tests.gateway.conftest import Processes, route

MODEL = "m"
REQUESTS = 3


def test_each_request_reaches_the_replicas_on_a_connection_of_its_own(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]})

    async def one_after_another() -> list[int]:
        async with aiohttp.ClientSession() as session:
            return [
                (await post(session, gateway.url + "/v1/chat/completions", chat(MODEL))).status
                for _ in range(REQUESTS)
            ]

    assert asyncio.run(one_after_another()) == [200] * REQUESTS
    stats = backend.stats()
    assert stats["requests"] == REQUESTS
    # a kept-alive connection would have carried all three to the same replica
    assert len(stats["request_connections"]) == REQUESTS


def test_replies_are_asked_for_uncompressed(processes: Processes) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]})

    async def one() -> int:
        async with aiohttp.ClientSession() as session:
            reply = await post(
                session,
                gateway.url + "/v1/chat/completions",
                chat(MODEL),
            )
            return reply.status

    assert asyncio.run(one()) == 200
    # the client's own Accept-Encoding is not forwarded either: only Content-Type and Accept are
    assert backend.stats()["accept_encodings"] == [None]
