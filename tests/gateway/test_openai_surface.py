"""The public listener against a real gateway process: routing, streaming, exact error replies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.gateway.client import chat, post, post_stream
from tests.gateway.conftest import (
    Backend,
    Gateway,
    Processes,
    http_json,
    route,
)
from tests.loopback import free_port, wait_until

T = TypeVar("T")

WARM = "meta-llama/Llama-3.3-70B-Instruct"
DEADLINE = "cold/deadline"
QUEUE = "cold/queue"
SLOW = "warm/slow"


@dataclass
class Setup:
    gateway: Gateway
    backend: Backend


@pytest.fixture(scope="module")
def setup(module_processes: Processes) -> Setup:
    backend = module_processes.backend()
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: a model that stays cold
    gateway = module_processes.gateway(
        {
            "models": [
                route(WARM, backend.url, gpusPerReplica=4),
                route(DEADLINE, closed, coldStartTimeoutSeconds=0.4),
                route(QUEUE, closed, coldStartTimeoutSeconds=3, maxPendingRequests=2),
                route(SLOW, backend.url, requestTimeoutSeconds=0.3),
            ],
            "metering": {"pricePerGpuHour": 3.6, "currency": "EUR"},
        },
        "--max-body-bytes",
        "4096",
        "--default-cold-start-seconds",
        "7",
        name="surface",
    )
    return Setup(gateway, backend)


def run(factory: Callable[[aiohttp.ClientSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            return await factory(session)

    return asyncio.run(main())


def error(message: str, error_type: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def test_models_lists_every_configured_model_cold_or_warm(setup: Setup) -> None:
    status, body = http_json(setup.gateway.url + "/v1/models")
    assert status == 200
    assert [item["id"] for item in body["data"]] == [WARM, DEADLINE, QUEUE, SLOW]
    assert {item["object"] for item in body["data"]} == {"model"}


def test_chat_completions_and_embeddings_are_routed_by_model(setup: Setup) -> None:
    url = setup.gateway.url

    async def calls(session: aiohttp.ClientSession) -> list[Any]:
        return [
            await post(session, url + "/v1/chat/completions", chat(WARM)),
            await post(session, url + "/v1/completions", {"model": WARM, "prompt": "Hello"}),
            await post(session, url + "/v1/embeddings", {"model": WARM, "input": ["a", "b"]}),
        ]

    chat_reply, completion_reply, embedding_reply = run(calls)
    assert chat_reply.status == 200
    assert chat_reply.body["object"] == "chat.completion"
    assert chat_reply.body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert chat_reply.headers["X-Request-Id"]
    assert chat_reply.headers["Server"] == "sovereign-gateway"  # no version on the wire
    assert completion_reply.body["object"] == "text_completion"
    assert len(embedding_reply.body["data"]) == 2
    request_id = chat_reply.headers["X-Request-Id"]
    assert wait_until(
        lambda: any(r["requestId"] == request_id for r in setup.gateway.records()), 3.0
    )
    records = {r["requestId"]: r for r in setup.gateway.records()}
    record = records[request_id]
    assert record["status"] == 200
    assert record["promptTokens"] == chat_reply.body["usage"]["prompt_tokens"]
    assert record["completionTokens"] == 3
    assert record["coldStart"] is False
    # no content and no client address in a record
    assert set(record) == {
        "time",
        "requestId",
        "clientRequestId",
        "endpoint",
        "model",
        "tenant",
        "stream",
        "status",
        "promptTokens",
        "completionTokens",
        "latencyMs",
        "ttftMs",
        "coldStart",
        "coldWaitMs",
        "error",
    }
    assert "Say something" not in setup.gateway.records_file.read_text()
    assert "127.0.0.1" not in setup.gateway.records_file.read_text()


def test_stream_passes_through_chunk_by_chunk_with_usage(setup: Setup) -> None:
    """The client reads the stream's first chunks before the backend has written its last.

    Causal, not timed: a gateway that gathered the reply (or any run of chunks) before passing
    it on could not deliver a chunk before the backend wrote the ones after it, however fast or
    slow this shared machine runs.
    """
    url = setup.gateway.url + "/v1/chat/completions"
    body = chat(WARM, stream=True, fake={"chunks": 12, "interval": 0.03})
    reply = run(lambda session: post_stream(session, url, body))
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    chunks = [(arrival, event) for arrival, event in reply.events if "sent" in event]
    assert [event["seq"] for _, event in chunks] == list(range(12))
    # one clock: the backend stamps ``sent`` and the client each arrival with time.monotonic()
    first_arrival = chunks[0][0]
    last_sent = chunks[-1][1]["sent"]
    print(f"first chunk read {(last_sent - first_arrival) * 1000:.1f} ms before the last was sent")
    assert first_arrival < last_sent
    assert reply.data[-1] == "[DONE]"
    assert reply.data[-2]["usage"]["completion_tokens"] == 12
    request_id = reply.headers["X-Request-Id"]
    # the record is written as the handler returns, just after the client has read [DONE]
    assert wait_until(
        lambda: any(r["requestId"] == request_id for r in setup.gateway.records()), 3.0
    )
    record = next(r for r in setup.gateway.records() if r["requestId"] == request_id)
    assert record["completionTokens"] == 12
    assert record["stream"] is True
    assert record["ttftMs"] is not None


def test_client_leaving_mid_stream_releases_the_request(setup: Setup) -> None:
    url = setup.gateway.url + "/v1/chat/completions"
    body = chat(WARM, stream=True, fake={"chunks": 200, "interval": 0.02})

    async def leave_early(session: aiohttp.ClientSession) -> str:
        async with session.post(url, json=body) as response:
            request_id = response.headers["X-Request-Id"]
            await response.content.readline()  # the first event's line
        return request_id  # leaving the block closes the connection mid-stream

    request_id = run(leave_early)
    gateway = setup.gateway
    assert wait_until(
        lambda: any(record["requestId"] == request_id for record in gateway.records()), 3.0
    )
    record = next(r for r in gateway.records() if r["requestId"] == request_id)
    assert record["status"] == 499
    assert record["error"] == "client_disconnected"
    assert (
        gateway.metric("sovereign_gateway_in_flight_requests", model=WARM, tenant="anonymous") == 0
    )


def test_unknown_model_is_404_model_not_found(setup: Setup) -> None:
    url = setup.gateway.url + "/v1/chat/completions"
    reply = run(lambda session: post(session, url, chat("no/such-model")))
    assert reply.status == 404
    assert reply.body == error(
        "The model `no/such-model` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


@pytest.mark.parametrize(
    ("payload", "message", "code", "param"),
    [
        (
            b'{"model": "x", ',
            "We could not parse the JSON body of your request: expected a JSON object.",
            "invalid_json",
            None,
        ),
        (
            b"[1, 2]",
            "We could not parse the JSON body of your request: expected a JSON object.",
            "invalid_json",
            None,
        ),
        (b'{"messages": []}', "You must provide a model parameter.", "missing_model", "model"),
    ],
)
def test_malformed_json_or_missing_model_is_400(
    setup: Setup, payload: bytes, message: str, code: str, param: str | None
) -> None:
    url = setup.gateway.url + "/v1/chat/completions"
    reply = run(lambda session: post(session, url, payload))
    assert reply.status == 400
    assert reply.body == error(message, "invalid_request_error", code, param)


def test_body_over_the_limit_is_413(setup: Setup) -> None:
    url = setup.gateway.url + "/v1/chat/completions"
    big = chat(WARM, padding="x" * 5000)
    reply = run(lambda session: post(session, url, big))
    assert reply.status == 413
    assert reply.body == error(
        "Request body too large: the limit is 4096 bytes.",
        "invalid_request_error",
        "request_too_large",
    )


def test_cold_start_past_its_deadline_is_503_with_retry_after(setup: Setup) -> None:
    url = setup.gateway.url + "/v1/chat/completions"
    started = time.monotonic()
    reply = run(lambda session: post(session, url, chat(DEADLINE)))
    elapsed = time.monotonic() - started
    assert reply.status == 503
    # not before the route's coldStartTimeoutSeconds (0.4); the upper bound only rules out
    # waiting for something else (the default cold-start timeout is 900 s)
    assert 0.4 <= elapsed < 0.4 + 10
    # no cold start of this model was ever seen: Retry-After is --default-cold-start-seconds,
    # less what this cold start has already waited
    assert 5 <= int(reply.headers["Retry-After"]) <= 7
    assert reply.body == error(
        "The model `cold/deadline` is starting and was not ready within 0.4 seconds; "
        "try again later.",
        "server_error",
        "model_cold_start_timeout",
    )


def test_retry_after_of_a_model_never_seen_cold_is_its_routes_estimate(
    module_processes: Processes,
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    gateway = module_processes.gateway(
        {
            "models": [
                route(DEADLINE, closed, coldStartTimeoutSeconds=0.4, expectedColdStartSeconds=120),
            ]
        },
        "--default-cold-start-seconds",
        "7",
        name="estimate",
    )
    reply = run(lambda session: post(session, gateway.url + "/v1/chat/completions", chat(DEADLINE)))
    assert reply.status == 503
    # the plan's estimate, less the 0.4 s already waited, not the gateway's default of 7 s
    assert 119 <= int(reply.headers["Retry-After"]) <= 120


def test_full_queue_is_429_with_retry_after(setup: Setup) -> None:
    url = setup.gateway.url + "/v1/chat/completions"
    gateway = setup.gateway

    async def scenario(session: aiohttp.ClientSession) -> Any:
        held = [asyncio.create_task(post(session, url, chat(QUEUE))) for _ in range(2)]
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            pending = await asyncio.to_thread(
                gateway.metric,
                "sovereign_gateway_pending_requests",
                model=QUEUE,
                tenant="anonymous",
            )
            if pending == 2:
                break
            await asyncio.sleep(0.02)
        refused = await post(session, url, chat(QUEUE))
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        return refused

    reply = run(scenario)
    assert reply.status == 429
    assert 1 <= int(reply.headers["Retry-After"]) <= 7
    assert reply.body == error(
        "The model `cold/queue` has 2 requests waiting for a replica; try again later.",
        "rate_limit_error",
        "queue_full",
    )


def test_a_warm_model_past_its_request_timeout_is_504(setup: Setup) -> None:
    url = setup.gateway.url + "/v1/chat/completions"
    reply = run(lambda session: post(session, url, chat(SLOW, fake={"delay": 2})))
    assert reply.status == 504
    assert reply.body == error(
        "The model `warm/slow` did not answer within 0.3 seconds.",
        "server_error",
        "upstream_timeout",
    )


def test_unknown_path_is_404_in_openai_shape(setup: Setup) -> None:
    status, body = http_json(setup.gateway.url + "/v1/files")
    assert status == 404
    assert body == error("Invalid URL (GET /v1/files)", "invalid_request_error", "unknown_url")


def test_metrics_and_usage_only_on_the_admin_listener(setup: Setup) -> None:
    gateway = setup.gateway
    assert http_json(gateway.url + "/metrics")[0] == 404
    assert http_json(gateway.url + "/usage")[0] == 404
    status, usage = http_json(gateway.admin_url + "/usage")
    assert status == 200
    assert usage["currency"] == "EUR"
    warm = next(row for row in usage["models"] if row["model"] == WARM)
    assert warm["gpusPerReplica"] == 4
    assert warm["readyReplicas"] == 1
    # 4 GPUs at 3.6 EUR/GPU-hour cost 0.004 EUR per second while the replica is up
    assert warm["costPerSecondNow"] == pytest.approx(0.004)
    assert warm["gpuSeconds"] == pytest.approx(4 * warm["replicaSeconds"], rel=1e-3)
    assert warm["alwaysOnCost"] >= warm["cost"]
    assert gateway.metric("sovereign_gateway_ready_replicas", model=WARM) == 1
    for path in ("/healthz", "/readyz"):
        assert http_json(gateway.url + path)[0] == 200
        assert http_json(gateway.admin_url + path)[0] == 200


def test_auth_off_warns_once_at_start(setup: Setup) -> None:
    warnings = [
        line
        for line in setup.gateway.logs()
        if line["level"] == "warning" and "authentication is off" in line["message"]
    ]
    assert len(warnings) == 1
    assert json.dumps(warnings[0])
