"""Route-table reloads against a real gateway process: held requests follow the table that
replaces theirs, and a table that would take every model away is refused."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.gateway.client import Reply, chat, post
from tests.gateway.conftest import Backend, Gateway, Processes, http_json, route
from tests.loopback import free_port, wait_until

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
OTHER = "BAAI/bge-m3"
RELOAD = ("--reload-interval", "0.1")
# far longer than any test here waits: a held request answered before it was not left to time out
COLD_START_TIMEOUT = 600
CLIENT_TIMEOUT = 30
HELD = 3


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    """Replace the file the way a ConfigMap volume does: a new file renamed over the old."""
    scratch = path.with_suffix(".new")
    scratch.write_text(json.dumps(document))
    os.replace(scratch, path)


def _pending(gateway: Gateway, model: str) -> float:
    return gateway.metric("sovereign_gateway_pending_requests", model=model, tenant="anonymous")


def _served_models(gateway: Gateway) -> list[str]:
    status, body = http_json(gateway.url + "/v1/models")
    assert status == 200
    return [item["id"] for item in body["data"]]


def _reloads(gateway: Gateway) -> int:
    return sum(line["message"] == "route table reloaded" for line in gateway.logs())


def _hold(
    session: aiohttp.ClientSession, gateway: Gateway, model: str, count: int
) -> list[asyncio.Task[Reply]]:
    url = gateway.url + "/v1/chat/completions"
    return [asyncio.create_task(post(session, url, chat(model))) for _ in range(count)]


async def _until(condition: Any, timeout: float = 5.0) -> None:
    assert await asyncio.to_thread(wait_until, condition, timeout)


def test_requests_held_for_a_removed_model_get_404_at_once_and_it_serves_again_once_added_back(
    processes: Processes,
) -> None:
    backend_port = free_port()
    cold = route(
        MODEL, f"http://127.0.0.1:{backend_port}", coldStartTimeoutSeconds=COLD_START_TIMEOUT
    )
    other = route(OTHER, f"http://127.0.0.1:{free_port()}")
    gateway = processes.gateway({"models": [cold, other]}, *RELOAD)

    async def scenario() -> tuple[list[Reply], float, list[Reply]]:
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            held = _hold(session, gateway, MODEL, HELD)
            await _until(lambda: _pending(gateway, MODEL) == HELD)
            _write_atomically(gateway.routes_file, {"models": [other]})
            removed_at = time.monotonic()
            refused = await asyncio.gather(*held)
            answered_after = time.monotonic() - removed_at
            # the model comes back (a new route): requests held now are served when it is ready
            _write_atomically(gateway.routes_file, {"models": [cold, other]})
            await _until(lambda: MODEL in _served_models(gateway))
            held_again = _hold(session, gateway, MODEL, HELD)
            await _until(lambda: _pending(gateway, MODEL) == HELD)
            processes.backend(backend_port)
            return refused, answered_after, await asyncio.gather(*held_again)

    refused, answered_after, served = asyncio.run(scenario())
    print(f"held requests answered {answered_after * 1000:.0f} ms after the model left the table")
    # at once, not at the cold-start deadline they were held against (generous for a busy machine)
    assert answered_after < 10
    for reply in refused:
        assert reply.status == 404
        assert reply.body == {
            "error": {
                "message": f"The model `{MODEL}` does not exist or you do not have access to it.",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
    assert [reply.status for reply in served] == [200] * HELD
    assert _pending(gateway, MODEL) == 0
    records = [record for record in gateway.records() if record["model"] == MODEL]
    assert sorted(record["status"] for record in records) == [200] * HELD + [404] * HELD
    assert {record["error"] for record in records if record["status"] == 404} == {"model_not_found"}


def test_requests_held_across_a_route_change_go_to_the_new_upstream_once_it_is_ready(
    processes: Processes,
) -> None:
    old_port, new_port = free_port(), free_port()
    timeouts = {"coldStartTimeoutSeconds": COLD_START_TIMEOUT}
    gateway = processes.gateway(
        {"models": [route(MODEL, f"http://127.0.0.1:{old_port}", **timeouts)]}, *RELOAD
    )

    async def scenario() -> tuple[Backend, list[Reply]]:
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            held = _hold(session, gateway, MODEL, HELD)
            await _until(lambda: _pending(gateway, MODEL) == HELD)
            _write_atomically(
                gateway.routes_file,
                {"models": [route(MODEL, f"http://127.0.0.1:{new_port}", **timeouts)]},
            )
            await _until(lambda: _reloads(gateway) == 1)
            # the new route's replica comes up only after the table changed
            backend = await asyncio.to_thread(processes.backend, new_port)
            return backend, await asyncio.gather(*held)

    backend, replies = asyncio.run(scenario())
    assert [reply.status for reply in replies] == [200] * HELD
    assert backend.stats()["requests"] == HELD
    assert [record["status"] for record in gateway.records()] == [200] * HELD
    assert all(record["coldStart"] for record in gateway.records())


def test_an_empty_route_table_is_refused_on_reload_and_the_last_good_one_kept(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]}, *RELOAD)
    _write_atomically(gateway.routes_file, {"models": []})
    assert wait_until(lambda: "route table not reloaded" in gateway.log_file.read_text(), 5.0)
    refusal = next(
        line for line in gateway.logs() if line["message"].startswith("route table not reloaded")
    )
    assert refusal["level"] == "error"
    assert (
        "models: expected at least one model; the table in use serves 1 and this one would "
        "answer every request 404"
    ) in refusal["message"]
    assert _served_models(gateway) == [MODEL]

    async def call() -> Reply:
        async with aiohttp.ClientSession() as session:
            return await post(session, gateway.url + "/v1/chat/completions", chat(MODEL))

    assert asyncio.run(call()).status == 200


def test_a_gateway_started_without_models_takes_a_table_that_adds_one(
    processes: Processes,
) -> None:
    """A platform with no model yet (the lab stack) starts; the refusal is only of a reload that
    would take every served model away."""
    backend = processes.backend()
    gateway = processes.gateway({"models": []}, *RELOAD)
    assert _served_models(gateway) == []
    _write_atomically(gateway.routes_file, {"models": [route(MODEL, backend.url)]})
    assert wait_until(lambda: _served_models(gateway) == [MODEL], 5.0)
    assert "route table not reloaded" not in gateway.log_file.read_text()
