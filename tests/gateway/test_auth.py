"""Tenants and API keys against a real gateway: 401s, tenant accounting, per-tenant limits."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.gateway.client import Reply, chat, post
from tests.gateway.conftest import Gateway, Processes, http_json, route
from tests.loopback import wait_until

MODEL = "Qwen/Qwen2.5-7B-Instruct"
KEY_A = "sk-team-a-0123456789abcdef"
KEY_B = "sk-team-b-fedcba9876543210"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gateway(module_processes: Processes) -> Gateway:
    backend = module_processes.backend()
    keys = module_processes.tmp / "api-keys"
    keys.write_text(f"# tenant:sha256\nteam-a:{_digest(KEY_A)}\n\nteam-b:{_digest(KEY_B)}\n")
    return module_processes.gateway(
        {
            "models": [route(MODEL, backend.url, gpusPerReplica=2)],
            "tenants": [{"name": "team-b", "maxConcurrentRequests": 1}],
        },
        "--api-keys",
        str(keys),
        name="auth",
    )


def _send(gateway: Gateway, body: Any, key: str | None) -> Reply:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}

    async def call() -> Reply:
        async with aiohttp.ClientSession() as session:
            return await post(session, gateway.url + "/v1/chat/completions", body, headers)

    return asyncio.run(call())


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."),
        ("sk-wrong", "Incorrect API key provided."),
        (_digest(KEY_A), "Incorrect API key provided."),  # the digest itself is no key
    ],
)
def test_missing_or_wrong_key_is_401(gateway: Gateway, key: str | None, message: str) -> None:
    reply = _send(gateway, chat(MODEL), key)
    assert reply.status == 401
    assert reply.body == {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_models_listing_needs_a_key_too(gateway: Gateway) -> None:
    assert http_json(gateway.url + "/v1/models")[0] == 401


def test_right_key_is_served_and_counted_under_its_tenant(gateway: Gateway) -> None:
    reply = _send(gateway, chat(MODEL), KEY_A)
    assert reply.status == 200
    request_id = reply.headers["X-Request-Id"]
    assert wait_until(lambda: any(r["requestId"] == request_id for r in gateway.records()), 3.0)
    tenants = {row["tenant"]: row for row in gateway.usage()["tenants"]}
    assert tenants["team-a"]["requests"] >= 1
    assert tenants["team-a"]["completionTokens"] >= 3
    assert (
        gateway.metric(
            "sovereign_gateway_requests_total", model=MODEL, tenant="team-a", status="200"
        )
        >= 1
    )
    # keys never reach the records or the logs
    for text in (gateway.records_file.read_text(), gateway.log_file.read_text()):
        assert KEY_A not in text
        assert _digest(KEY_A) not in text


def test_tenant_over_its_concurrency_limit_gets_429(gateway: Gateway) -> None:
    async def scenario() -> tuple[Reply, Reply]:
        async with aiohttp.ClientSession() as session:
            url = gateway.url + "/v1/chat/completions"
            headers = {"Authorization": f"Bearer {KEY_B}"}
            slow = asyncio.create_task(
                post(session, url, chat(MODEL, fake={"delay": 1.0}), headers)
            )
            assert await asyncio.to_thread(
                wait_until,
                lambda: (
                    gateway.metric(
                        "sovereign_gateway_in_flight_requests", model=MODEL, tenant="team-b"
                    )
                    == 1
                ),
                3.0,
            )
            refused = await post(session, url, chat(MODEL), headers)
            return await slow, refused

    served, refused = asyncio.run(scenario())
    assert served.status == 200
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.body == {
        "error": {
            "message": "Tenant 'team-b' is at its limit of 1 concurrent requests.",
            "type": "rate_limit_error",
            "param": None,
            "code": "tenant_concurrency_limit",
        }
    }
    # team-a has no limit and is not affected
    assert _send(gateway, chat(MODEL), KEY_A).status == 200


def test_unreadable_key_file_stops_the_start_with_a_clear_error(
    processes: Processes, tmp_path: Path
) -> None:
    keys = tmp_path / "bad-keys"
    keys.write_text("team-a:not-a-digest\n")
    bad = processes.gateway(
        {"models": [route(MODEL, "http://127.0.0.1:9")]}, "--api-keys", str(keys), wait=False
    )
    assert bad.process.wait(15) == 2
    text = bad.log_file.read_text()
    assert "line 1: expected the key's SHA-256 as 64 hex digits after 'team-a:'" in text
    assert "not-a-digest" not in text
