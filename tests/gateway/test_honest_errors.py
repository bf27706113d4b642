"""Every error in OpenAI's shape, and records a client can neither forge nor flood: the answers
aiohttp would give by itself, a backend's failure, a body nested too deep, a huge model name and
a client's own request id, against a real gateway process."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from sovereign_gateway.logs import REPEAT_INTERVAL_SECONDS

from tests.gateway.client import Reply, chat, post
from tests.gateway.conftest import Backend, Gateway, Processes, route
from tests.gateway.fake_vllm import ENGINE_TRACEBACK
from tests.loopback import wait_until

MODEL = "m"


@dataclass
class Setup:
    gateway: Gateway
    backend: Backend


@pytest.fixture(scope="module")
def setup(module_processes: Processes) -> Setup:
    backend = module_processes.backend()
    gateway = module_processes.gateway({"models": [route(MODEL, backend.url)]}, name="honest")
    return Setup(gateway, backend)


def fresh_gateway(processes: Processes) -> Gateway:
    backend = processes.backend()
    return processes.gateway({"models": [route(MODEL, backend.url)]}, name="honest-fresh")


def send(gateway: Gateway, body: Any, headers: dict[str, str] | None = None) -> Reply:
    async def main() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            return await post(session, gateway.url + "/v1/chat/completions", body, headers)

    return asyncio.run(main())


def lines_since(gateway: Gateway, count: int) -> list[dict[str, Any]]:
    """Log lines after the first ``count``, less the model probes' own (a replica seen ready)."""
    return [
        line for line in gateway.logs()[count:] if line["logger"] != "sovereign_gateway.readiness"
    ]


def lines_once_written(gateway: Gateway, count: int) -> list[dict[str, Any]]:
    """``lines_since`` once a line has come: the answer can reach the client before its log line
    is written."""
    assert wait_until(lambda: lines_since(gateway, count), 5.0), "no log line was written"
    return lines_since(gateway, count)


def record_of(gateway: Gateway, request_id: str) -> dict[str, Any]:
    assert wait_until(lambda: any(r["requestId"] == request_id for r in gateway.records()), 5.0)
    return next(r for r in gateway.records() if r["requestId"] == request_id)


def raw_exchange(gateway: Gateway, request: bytes) -> tuple[bytes, Any]:
    """Send raw bytes on a new connection; (status line and headers, parsed JSON body)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (
            b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            "a request line or header is too long",
        ),
        (b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nBad Header: 1\r\n\r\n", "it is malformed"),
        (b"GET /v1/models HTTP/9.9\r\nHost: gw\r\n\r\n", "the request line is malformed"),
    ],
    ids=["header-too-long", "space-in-header-name", "unknown-version"],
)
def test_a_request_aiohttp_refuses_is_answered_in_openai_shape_and_logged_once_without_traceback(
    processes: Processes, request_bytes: bytes, reason: str
) -> None:
    # a gateway of its own: the reject line is written once per interval per process
    gateway = fresh_gateway(processes)
    lines_before = len(gateway.logs())
    head, body = raw_exchange(gateway, request_bytes)
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"400"
    assert b"Server: sovereign-gateway\r\n" in head
    assert b"aiohttp" not in head
    assert b"Python" not in head
    assert b"Content-Type: application/json" in head
    assert body == {
        "error": {
            "message": f"The request is not valid HTTP/1.1: {reason}.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_http_request",
        }
    }
    [line] = lines_once_written(gateway, lines_before)
    assert line["message"] == "request rejected before routing"
    assert (line["status"], line["reason"], line["heldBack"]) == (400, reason, 0)
    assert "exception" not in line
    assert "127.0.0.1" not in json.dumps(line)


def test_a_reject_is_logged_once_per_interval_with_the_count_held_back(
    processes: Processes,
) -> None:
    gateway = fresh_gateway(processes)
    lines_before = len(gateway.logs())
    bad_request = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nBad Header: 1\r\n\r\n"
    first = time.monotonic()
    for _ in range(50):
        raw_exchange(gateway, bad_request)
    [line] = lines_once_written(gateway, lines_before)
    assert (line["message"], line["heldBack"]) == ("request rejected before routing", 0)
    # the interval over, the next reject's line counts the 49 held back
    time.sleep(max(0.0, first + REPEAT_INTERVAL_SECONDS + 0.5 - time.monotonic()))
    raw_exchange(gateway, bad_request)
    assert wait_until(lambda: len(lines_since(gateway, lines_before)) >= 2, 5.0)
    lines = lines_since(gateway, lines_before)
    assert [line["heldBack"] for line in lines] == [0, 49]


def test_json_nested_deeper_than_the_parser_goes_is_a_400_and_recorded_as_one(
    setup: Setup,
) -> None:
    reply = send(setup.gateway, b"[" * 100_000 + b"]" * 100_000)
    assert reply.status == 400
    assert reply.body["error"]["code"] == "invalid_json"
    assert reply.headers["Server"] == "sovereign-gateway"
    record = record_of(setup.gateway, reply.headers["X-Request-Id"])
    assert (record["status"], record["error"]) == (400, "invalid_json")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_backend_5xx_reaches_the_client_as_an_openai_error_without_its_body(
    setup: Setup, stream: bool
) -> None:
    gateway = setup.gateway
    lines_before = len(gateway.logs())
    reply = send(gateway, chat(MODEL, stream=stream, fake={"fail_status": 500}))
    assert reply.status == 500
    assert reply.body == {
        "error": {
            "message": f"The model `{MODEL}` failed to answer (its replica returned HTTP 500).",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }
    assert "Traceback" not in json.dumps(reply.body)
    record = record_of(gateway, reply.headers["X-Request-Id"])
    assert (record["status"], record["error"]) == (500, "upstream_error")
    new_lines = lines_once_written(gateway, lines_before)
    assert [line["message"] for line in new_lines] == ["backend answered with an error"]
    assert ENGINE_TRACEBACK.splitlines()[-1] not in gateway.log_file.read_text()


def test_an_8_mib_model_name_yields_a_bounded_answer_and_record(setup: Setup) -> None:
    gateway = setup.gateway
    name = "x" * (8 * 1024 * 1024 - 100)
    reply = send(gateway, {"model": name})
    assert reply.status == 404
    assert reply.body["error"]["code"] == "model_not_found"
    assert len(json.dumps(reply.body)) < 1024
    assert f"({len(name)} characters)" in reply.body["error"]["message"]
    request_id = reply.headers["X-Request-Id"]
    record_of(gateway, request_id)
    line = next(
        line for line in gateway.records_file.read_text().splitlines() if request_id in line
    )
    assert len(line) < 1024


def test_a_clients_request_id_is_kept_beside_the_gateways_own(setup: Setup) -> None:
    gateway = setup.gateway
    first = send(gateway, chat(MODEL), {"X-Request-Id": "client-7"})
    second = send(gateway, chat(MODEL), {"X-Request-Id": "client-7"})
    assert first.status == second.status == 200
    ids = {first.headers["X-Request-Id"], second.headers["X-Request-Id"]}
    assert len(ids) == 2
    assert "client-7" not in ids
    for request_id in ids:
        record = record_of(gateway, request_id)
        assert record["clientRequestId"] == "client-7"
    # an id that is no short token is not recorded at all
    forged = send(gateway, chat(MODEL), {"X-Request-Id": "a" * 129})
    assert record_of(gateway, forged.headers["X-Request-Id"])["clientRequestId"] is None
