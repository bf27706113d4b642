"""Cold starts for real: held requests, the forward after readiness, disconnects, dying backends.

One gateway process serves every test here; each test has its own model (and so its own upstream
port), which stays cold until the test starts a replica for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import grpc
import pytest
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc
from sovereign_gateway.settings import Settings

from components.plan.kubernetes.serving import KEDA_POLLING_INTERVAL_SECONDS
from tests.gateway.client import Reply, StreamReply, chat, post, post_stream
from tests.gateway.conftest import (
    Gateway,
    Processes,
    metric_value,
    route,
    scaled_object,
)
from tests.loopback import free_port, wait_until

BURST = "mistralai/Mistral-Small-24B-Instruct-2501"
HELD = "Qwen/Qwen2.5-Coder-32B-Instruct"
DROPPED = "microsoft/phi-4"
PUSHED = "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"
DYING = "meta-llama/Llama-3.2-3B-Instruct"
# the gateway runs with the default probe settings: a held request leaves at most one probe
# interval plus one probe after its replica listens
ONE_PROBE = Settings.cold_probe_interval + Settings.probe_timeout


@dataclass
class Setup:
    gateway: Gateway
    processes: Processes
    ports: dict[str, int]

    def records(self, model: str) -> list[dict[str, Any]]:
        return [record for record in self.gateway.records() if record["model"] == model]


@pytest.fixture(scope="module")
def setup(module_processes: Processes) -> Setup:
    ports = {model: free_port() for model in (BURST, HELD, DROPPED, PUSHED, DYING)}
    gateway = module_processes.gateway(
        {"models": [route(model, f"http://127.0.0.1:{port}") for model, port in ports.items()]},
        name="cold",
    )
    return Setup(gateway, module_processes, ports)


def test_200_concurrent_requests_to_a_cold_model_all_succeed(setup: Setup) -> None:
    """Half streamed; none gets a 5xx."""
    gateway = setup.gateway
    url = gateway.url + "/v1/chat/completions"

    async def burst() -> list[Reply | StreamReply]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        ) as session:
            calls: list[Coroutine[Any, Any, Reply | StreamReply]] = []
            for index in range(200):
                if index % 2:
                    calls.append(post_stream(session, url, chat(BURST, stream=True)))
                else:
                    calls.append(post(session, url, chat(BURST)))
            tasks = [asyncio.create_task(call) for call in calls]
            # every request is held before the replica starts
            assert await asyncio.to_thread(
                wait_until, lambda: metric_value(gateway.scaler_address, BURST) == 200, 10.0
            )
            setup.processes.backend(setup.ports[BURST], start_delay=0.3, wait=False)
            return await asyncio.gather(*tasks)

    replies = asyncio.run(burst())
    assert [reply.status for reply in replies] == [200] * 200
    streamed = [reply for reply in replies if isinstance(reply, StreamReply)]
    assert len(streamed) == 100
    assert all(reply.data[-1] == "[DONE]" for reply in streamed)
    assert all(reply.data[-2]["usage"]["completion_tokens"] == 3 for reply in streamed)

    stats = setup.processes.started[-1].stats()  # type: ignore[union-attr]
    forward_delay = stats["first_request_at"] - stats["listening_since"]
    print(f"200 held: first forward {forward_delay * 1000:.1f} ms after the replica listened")
    # 200 connections opened at once on a shared 2-core machine: the one-request test below
    # holds the 250 ms bound; here the bound only rules out a missed wake-up
    assert 0 <= forward_delay < 1.0
    assert stats["requests"] == 200

    # records (and the usage counts) are written as each handler returns, just after its reply
    assert wait_until(lambda: len(setup.records(BURST)) == 200, 5.0)
    records = setup.records(BURST)
    assert all(record["coldStart"] for record in records)
    row = next(item for item in gateway.usage()["models"] if item["model"] == BURST)
    assert row["coldStarts"] == 1
    assert row["requests"] == 200
    assert metric_value(gateway.scaler_address, BURST) == 0


def test_held_request_is_forwarded_within_one_probe_of_readiness(setup: Setup) -> None:
    """A held request leaves once a probe sees the replica: at most one probe interval plus
    one probe (its timeout) after the replica listens, not at the cold-start timeout."""
    url = setup.gateway.url + "/v1/chat/completions"

    async def scenario() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            held = asyncio.create_task(post(session, url, chat(HELD)))
            await asyncio.sleep(0.2)
            setup.processes.backend(setup.ports[HELD], start_delay=0.3, wait=False)
            return await held

    reply = asyncio.run(scenario())
    assert reply.status == 200
    stats = setup.processes.started[-1].stats()  # type: ignore[union-attr]
    forward_delay = stats["first_request_at"] - stats["listening_since"]
    print(f"held request forwarded {forward_delay * 1000:.1f} ms after the replica listened")
    assert 0 <= forward_delay < ONE_PROBE
    assert wait_until(lambda: len(setup.records(HELD)) == 1, 3.0)
    (record,) = setup.records(HELD)
    assert record["coldStart"] is True
    assert record["coldWaitMs"] > 300


def test_client_disconnect_during_hold_takes_the_request_off_pending(setup: Setup) -> None:
    """The pending count drops because the client left (the record says 499), long before
    anything else could end the hold (the route's cold-start timeout is 900 s)."""
    gateway = setup.gateway
    url = gateway.url + "/v1/chat/completions"

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session:
            held = asyncio.create_task(post(session, url, chat(DROPPED)))
            assert await asyncio.to_thread(
                wait_until, lambda: metric_value(gateway.scaler_address, DROPPED) == 1, 3.0
            )
            held.cancel()  # closes the connection
            cancelled = time.monotonic()
            await asyncio.gather(held, return_exceptions=True)
        assert await asyncio.to_thread(
            wait_until, lambda: metric_value(gateway.scaler_address, DROPPED) == 0, 10.0, 0.005
        )
        return time.monotonic() - cancelled

    dropped_after = asyncio.run(scenario())
    print(f"pending dropped {dropped_after * 1000:.1f} ms after the disconnect")
    pending = gateway.metric(
        "sovereign_gateway_pending_requests", model=DROPPED, tenant="anonymous"
    )
    assert pending == 0
    assert wait_until(lambda: len(setup.records(DROPPED)) == 1, 2.0)
    (record,) = setup.records(DROPPED)
    assert record["status"] == 499
    assert record["error"] == "client_disconnected"


def _arrival(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()


def test_stream_is_active_pushes_on_the_first_request_before_keda_would_poll(
    setup: Setup,
) -> None:
    """Measured from the request's arrival (its record) to the push reaching the KEDA side: a
    push, not KEDA's next poll, which the plan sets ``pollingInterval`` seconds apart."""
    gateway = setup.gateway
    url = gateway.url + "/v1/chat/completions"

    async def one_try() -> float:
        async with (
            grpc.aio.insecure_channel(gateway.scaler_address) as channel,
            aiohttp.ClientSession() as session,
        ):
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.StreamIsActive(scaled_object(PUSHED))
            await stream.initial_metadata()  # the scaler watches from here on
            held = asyncio.create_task(
                post(session, url, chat(PUSHED), {"X-Request-Id": f"push-{time.time_ns()}"})
            )
            pushed = await asyncio.wait_for(stream.read(), 5)
            received = time.time()
            assert pushed.result is True
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)
            # "inactive" is never pushed (KEDA 2.16 would skip the cooldown): it is polled
            deadline = time.monotonic() + 5
            while (await stub.IsActive(scaled_object(PUSHED))).result:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            stream.cancel()
            return received

    received = asyncio.run(one_try())
    assert wait_until(lambda: len(setup.records(PUSHED)) == 1, 5.0)
    delay = received - _arrival(setup.records(PUSHED)[-1])
    print(f"StreamIsActive push {delay * 1000:.1f} ms after the request arrived")
    assert delay < KEDA_POLLING_INTERVAL_SECONDS


def test_backend_killed_mid_stream_ends_the_stream_with_an_error_event(setup: Setup) -> None:
    backend = setup.processes.backend(setup.ports[DYING])
    url = setup.gateway.url + "/v1/chat/completions"
    body = chat(DYING, stream=True, fake={"chunks": 10, "interval": 0.05, "die_after": 3})

    async def scenario() -> StreamReply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            return await post_stream(session, url, body)

    reply = asyncio.run(scenario())
    assert reply.status == 200
    chunks = [
        arrival for arrival, event in reply.events if isinstance(event, dict) and "seq" in event
    ]
    assert len(chunks) == 3
    last_arrival, last = reply.events[-1]
    assert last == {
        "error": {
            "message": "The model's replica stopped while streaming the reply.",
            "type": "server_error",
            "param": None,
            "code": "upstream_disconnected",
        }
    }
    # the replica died 50 ms after its third chunk; the client knows well within a second
    print(f"error event {(last_arrival - chunks[-1]) * 1000:.1f} ms after the last chunk")
    assert last_arrival - chunks[-1] < 1.0
    assert backend.process.wait(5) == 3
    assert wait_until(lambda: len(setup.records(DYING)) == 1, 2.0)
    assert setup.records(DYING)[0]["error"] == "upstream_disconnected"
