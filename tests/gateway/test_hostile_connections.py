"""Connections that work on the gateway's resources: half-sent requests, more connections than
it may hold, and a descriptor limit lower than the connections it is offered."""

from __future__ import annotations

import asyncio
import json
import os
import select
import selectors
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import aiohttp

from tests.gateway.client import chat, post
from tests.gateway.conftest import Gateway, Processes, http_json, route
from tests.loopback import wait_until

HALF_REQUEST_LINE = b"POST /v1/chat/comp"


def readable_now(sockets: list[socket.socket]) -> list[socket.socket]:
    """The sockets with data or a close waiting, now (``poll``: descriptors past 1024 work)."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(0)]


@contextmanager
def open_connections(port: int, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """``count`` connections to the gateway, each having sent ``first_bytes`` (maybe nothing)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sockets.append(sock)
            if first_bytes:
                with suppress(OSError):  # a connection the gateway closed at once
                    sock.sendall(first_bytes)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def read_until_closed(sockets: list[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    """What each socket receives until the gateway closes it; the ones still open are left out."""
    received = dict.fromkeys(sockets, b"")
    closed: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, sock)
        deadline = time.monotonic() + timeout
        while len(closed) < len(sockets) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                ready: socket.socket = key.data
                try:
                    data = ready.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    received[ready] += data
                else:
                    closed[ready] = received[ready]
                    selector.unregister(ready)
    return closed


def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection and read until the gateway closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        with suppress(ConnectionResetError):  # closed with the request unread: a reset
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def readyz_status(url: str) -> int:
    """``/readyz``'s status on a new connection; 0 when the connection is refused or cut."""
    try:
        return http_json(url + "/readyz")[0]
    except OSError:
        return 0


def test_half_sent_requests_are_closed_at_the_header_timeout_while_the_gateway_serves(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route("m", backend.url)]}, "--header-timeout", "3")
    with open_connections(gateway.port, 1000, HALF_REQUEST_LINE) as stalled:
        opened = time.monotonic()
        status, ready = http_json(gateway.url + "/readyz")
        assert (status, ready["status"]) == (200, "ready")

        async def one_request() -> int:
            async with aiohttp.ClientSession() as session:
                return (await post(session, gateway.url + "/v1/chat/completions", chat("m"))).status

        assert asyncio.run(one_request()) == 200
        # the probe and the request were answered while every stalled connection was still open
        assert readable_now(stalled) == []
        closed = read_until_closed(stalled, timeout=60)
        closed_within = time.monotonic() - opened

    assert len(closed) == 1000, f"{1000 - len(closed)} stalled connections still open"
    answers = set(closed.values())
    assert len(answers) == 1
    head, _, body = answers.pop().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"Server: sovereign-gateway" in head
    assert json.loads(body)["error"]["code"] == "request_header_timeout"
    # not before the header timeout (counted from each connection's opening, the last one's
    # a moment before ``opened``)
    assert closed_within > 2.5
    # one line says what happened to all of them
    timeout_lines = [
        line
        for line in gateway.logs()
        if line["message"] == "connections closed at the header timeout"
    ]
    assert 1 <= len(timeout_lines) <= 2


def test_past_the_connection_limit_probes_are_served_and_requests_get_503(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route("m", backend.url)]}, "--max-connections", "40", "--header-timeout", "60"
    )
    with open_connections(gateway.port, 40, b"") as _held:
        probe = raw_request(gateway.port, b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert probe.startswith(b"HTTP/1.1 200 ")
        body = json.dumps(chat("m")).encode()
        shed = raw_request(
            gateway.port,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
        )
        head, _, answer = shed.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b"Retry-After: 1" in head
        assert b"Connection: close" in head
        assert json.loads(answer)["error"]["code"] == "server_overloaded"
    # the held connections gone, the gateway serves as before
    assert wait_until(lambda: readyz_status(gateway.url) == 200, 10)
    assert backend.stats()["requests"] == 0
    limit_lines = [line for line in gateway.logs() if line["message"] == "connection limit reached"]
    assert len(limit_lines) == 1
    assert limit_lines[0]["listener"] == "public"


def wait_for_closed(sockets: list[socket.socket], count: int, timeout: float) -> dict[int, bytes]:
    """Wait until ``count`` of ``sockets`` are closed by the gateway; {index: what it received}."""
    received = [b""] * len(sockets)
    closed: dict[int, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for index, sock in enumerate(sockets):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + timeout
        while len(closed) < count and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                index = key.data
                try:
                    data = sockets[index].recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    received[index] += data
                else:
                    closed[index] = received[index]
                    selector.unregister(sockets[index])
    return closed


def test_probes_are_answered_while_idle_connections_fill_the_limit_and_its_answer_slots(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route("m", backend.url)]}, "--max-connections", "40", "--header-timeout", "60"
    )
    # every connection the gateway serves held by one that sent half a request line, and every
    # answer slot past them by one that sends nothing (each slot's holder is closed within about
    # a second, so a flood renews them): the probes arrive right behind the slots' holders
    with open_connections(gateway.port, 40, HALF_REQUEST_LINE) as in_limit:
        assert wait_until(lambda: accepted_connections(gateway) == 40, 10)
        with (
            open_connections(gateway.port, 64, b""),
            open_connections(gateway.port, 0, b"") as refill,
        ):
            probe = raw_request(gateway.port, b"GET /readyz HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert probe.startswith(b"HTTP/1.1 200 ")
            # the slot the answered probe left, taken again as a flood would
            refill.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=5))
            probe = raw_request(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert probe.startswith(b"HTTP/1.1 200 ")
        # each probe took the place of the connection that had waited longest for a request:
        # the first two, told why they were closed
        closed = wait_for_closed(in_limit, 2, timeout=10)
        assert sorted(closed) == [0, 1]
        for answer in closed.values():
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 ")
            assert json.loads(body)["error"]["code"] == "server_overloaded"
    limit_lines = [line for line in gateway.logs() if line["message"] == "connection limit reached"]
    assert len(limit_lines) == 1


def accepted_connections(gateway: Gateway) -> int:
    """How many connections to its public port the gateway process has accepted (from /proc)."""
    inodes: set[str] = set()
    for descriptor in Path(f"/proc/{gateway.process.pid}/fd").iterdir():
        with suppress(OSError):  # closed while listed
            target = os.readlink(descriptor)
            if target.startswith("socket:["):
                inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    port = f":{gateway.port:04X}"
    accepted = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            # 01: established (the listener itself is 0A, listening)
            if fields[1].endswith(port) and fields[3] == "01" and fields[9] in inodes:
                accepted += 1
    return accepted


def test_connections_past_the_limit_that_send_nothing_are_closed_within_a_second(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route("m", backend.url)]}, "--max-connections", "40", "--header-timeout", "60"
    )
    with (
        open_connections(gateway.port, 40, b"") as in_limit,
        open_connections(gateway.port, 10, b"") as past_limit,
    ):
        # within the limit a connection has --header-timeout (60 s); past it about a second
        closed = wait_for_closed(past_limit, 10, timeout=30)
        assert len(closed) == 10
        assert set(closed.values()) == {b""}
        assert readable_now(in_limit) == []


def test_an_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route("m", backend.url)]},
        "--keepalive-timeout",
        "2",
        "--header-timeout",
        "60",
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"Connection: close" not in answer
        answered = time.monotonic()
        # the connection kept alive, then closed by the gateway: recv returns the end of stream
        with suppress(ConnectionResetError):
            while sock.recv(65536):
                pass
        idle_for = time.monotonic() - answered
    # aiohttp's own default keeps it for 3630 s; --header-timeout (60 s) plays no part here
    assert 1.5 < idle_for < 30


def test_a_pipelined_request_that_stops_mid_headers_is_closed_at_the_header_timeout(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route("m", backend.url)]},
        "--header-timeout",
        "2",
        "--keepalive-timeout",
        "300",
    )
    body = json.dumps(chat("m", fake={"delay": 4})).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=60) as sock:
        sock.sendall(request)
        # the first request is being answered (its backend takes 4 s) when the next begins
        assert wait_until(lambda: backend.stats()["requests"] == 1, 10)
        sock.sendall(HALF_REQUEST_LINE)
        sent = time.monotonic()
        answer = b""
        with suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
        closed_after = time.monotonic() - sent
    # the answer in progress ends whole, then the connection closes; without a header timer
    # for the pipelined request it would wait for the keep-alive timeout (300 s)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1 ") == 1
    assert closed_after < 60


def test_a_low_descriptor_limit_lowers_the_connection_limit_and_floods_no_log(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route("m", backend.url)]}, descriptor_limit=256)
    lowered = [
        line
        for line in gateway.logs()
        if line["message"] == "--max-connections lowered to what the descriptor limit allows"
    ]
    assert [(line["maxConnections"], line["descriptorLimit"]) for line in lowered] == [(48, 256)]
    with open_connections(gateway.port, 1000, HALF_REQUEST_LINE):
        time.sleep(2)
        assert gateway.process.poll() is None
    # the flood gone (its connections closed as the gateway reads their ends), it serves again
    assert wait_until(lambda: readyz_status(gateway.url) == 200, 10)
    lines = gateway.logs()
    assert len(lines) < 20, [line["message"] for line in lines]
    assert not [line for line in lines if "out of system resource" in line["message"]]
