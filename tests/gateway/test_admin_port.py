"""The admin listener, against the real process: its bearer token (``--admin-token-file``) and
its connections, bounded and answered as the public listener's are."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

from sovereign_gateway.connections import ADMIN_ANSWER_SLOTS, ADMIN_MAX_CONNECTIONS

from tests.gateway.conftest import Processes, http_json, route
from tests.loopback import free_port

MODEL = "Qwen/Qwen2.5-7B-Instruct"
TOKEN = "a" * 8 + "0123456789abcdef"


def _get(url: str, authorization: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_and_usage_ask_for_the_admin_token(processes: Processes, tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(TOKEN + "\n")
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes, "--admin-token-file", str(token_file))
    for path in ("/metrics", "/usage"):
        url = gateway.admin_url + path
        status, body = http_json(url)
        assert status == 401
        assert body["error"]["code"] == "invalid_admin_token"
        assert body["error"]["type"] == "invalid_request_error"
        assert set(body["error"]) == {"message", "type", "param", "code"}
        status, body = _get(url, "Bearer " + "b" * len(TOKEN))
        assert status == 401
        assert b"gateway_requests" not in body
        assert TOKEN.encode() not in body
        status, _ = _get(url, "Bearer " + TOKEN)
        assert status == 200
    # the probes stay open: they tell nothing about tenants or models
    assert http_json(gateway.admin_url + "/healthz")[0] == 200
    assert TOKEN not in gateway.log_file.read_text()


def test_without_a_token_file_the_admin_port_answers_anyone(processes: Processes) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes)
    assert http_json(gateway.admin_url + "/usage")[0] == 200


def test_a_short_admin_token_stops_the_gateway_before_it_listens(
    processes: Processes, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("Tq8-vz3")
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes, "--admin-token-file", str(token_file), wait=False)
    assert gateway.process.wait(15) == 2
    text = gateway.log_file.read_text()
    assert "--admin-token-file: expected one token of at least 16 characters" in text
    assert "Tq8-vz3" not in text


def _exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        with suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def test_the_admin_listener_answers_like_the_public_one_without_server_version_or_traceback(
    processes: Processes,
) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes)
    with urllib.request.urlopen(gateway.admin_url + "/metrics", timeout=5) as response:
        assert response.headers["Server"] == "sovereign-gateway"
    answer = _exchange(gateway.admin_port, b"GET /metrics HTTP/1.1\r\nBad Header: 1\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert b"Server: sovereign-gateway\r\n" in head
    assert b"aiohttp" not in head
    assert json.loads(body)["error"]["code"] == "invalid_http_request"
    status, unknown = http_json(gateway.admin_url + "/nowhere")
    assert status == 404
    assert unknown["error"]["code"] == "unknown_url"
    assert "Traceback" not in gateway.log_file.read_text()
    rejects = [
        line for line in gateway.logs() if line["message"] == "request rejected before routing"
    ]
    assert [line["listener"] for line in rejects] == ["admin"]
    assert "127.0.0.1" not in json.dumps(rejects)


def test_the_admin_listener_closes_half_sent_requests_and_idle_connections(
    processes: Processes,
) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(
        routes, "--header-timeout", "2", "--keepalive-timeout", "3", name="admin-timeouts"
    )
    # half a request line: 408 at the header timeout, as on the public listener
    answer = _exchange(gateway.admin_port, b"GET /metr")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"]["code"] == "request_header_timeout"
    # an idle keep-alive connection: closed at the keep-alive timeout, not aiohttp's hour
    with socket.create_connection(("127.0.0.1", gateway.admin_port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
        answered = time.monotonic()
        with suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
        assert 2.5 < time.monotonic() - answered < 25


def test_the_admin_listener_answers_probes_past_its_connection_limit(
    processes: Processes,
) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes, "--header-timeout", "60")
    held: list[socket.socket] = []
    try:
        for _ in range(ADMIN_MAX_CONNECTIONS + ADMIN_ANSWER_SLOTS):
            held.append(socket.create_connection(("127.0.0.1", gateway.admin_port), timeout=5))
        answer = _exchange(gateway.admin_port, b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        answer = _exchange(gateway.admin_port, b"GET /usage HTTP/1.1\r\nHost: admin\r\n\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert json.loads(body)["error"]["code"] == "server_overloaded"
    finally:
        for sock in held:
            sock.close()
    lines = [line for line in gateway.logs() if line["message"] == "connection limit reached"]
    assert [(line["listener"], line["maxConnections"]) for line in lines] == [
        ("admin", ADMIN_MAX_CONNECTIONS)
    ]
