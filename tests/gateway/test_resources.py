"""What a request costs the gateway: held bodies within a byte budget (charged as their bytes
arrive, and bounded in time), large answers passed through with bounded memory, and a request that
may have reached a replica never sent twice.

Memory is read from the real gateway process's ``/proc/<pid>/status`` (VmRSS now, VmHWM the peak).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import select
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
from sovereign_weights.units import MIB

from tests.gateway.client import Reply, chat, post
from tests.gateway.conftest import Gateway, Processes, metric_value, route
from tests.gateway.fake_vllm import large_answer
from tests.loopback import free_port, wait_until

MODEL = "mistralai/Mistral-Small-24B-Instruct-2501"

# bodies of many small objects: parsed, each is a tree about 25 times its size
HELD_BODY_OBJECTS = 120_000
HELD_WITHIN_BUDGET = 10
HELD_REFUSED = 4
LARGE_ANSWER_BYTES = 200 * MIB
# what the gateway may grow by while it passes a 200 MiB answer through: its buffers, not the body
PASS_THROUGH_GROWTH_LIMIT = 48 * MIB


def _memory(gateway: Gateway) -> dict[str, int]:
    """VmRSS and VmHWM of the gateway process, in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{gateway.process.pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _body_of_small_objects(model: str) -> bytes:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "a"} for _ in range(HELD_BODY_OBJECTS)],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def test_held_requests_cost_their_bytes_and_past_the_byte_budget_get_queue_full(
    processes: Processes,
) -> None:
    body = _body_of_small_objects(MODEL)
    budget = HELD_WITHIN_BUDGET * len(body) + len(body) // 2
    port = free_port()
    gateway = processes.gateway(
        {"models": [route(MODEL, f"http://127.0.0.1:{port}")]},
        "--max-held-bytes",
        str(budget),
    )
    url = gateway.url + "/v1/chat/completions"
    before = _memory(gateway)

    async def scenario() -> tuple[list[Reply], dict[str, int], list[Reply]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            tasks = [
                asyncio.create_task(post(session, url, body))
                for _ in range(HELD_WITHIN_BUDGET + HELD_REFUSED)
            ]
            held = await asyncio.to_thread(
                wait_until,
                lambda: (
                    metric_value(gateway.scaler_address, MODEL) == HELD_WITHIN_BUDGET
                    and sum(task.done() for task in tasks) == HELD_REFUSED
                ),
                30.0,
            )
            assert held, "the requests within the budget were not all held"
            while_held = _memory(gateway)
            refused = [task.result() for task in tasks if task.done()]
            # a replica comes up: every held request is forwarded with its body intact
            processes.backend(port)
            return refused, while_held, list(await asyncio.gather(*tasks))

    refused, while_held, replies = asyncio.run(scenario())
    assert [(reply.status, reply.body["error"]["code"]) for reply in refused] == [
        (429, "queue_full")
    ] * HELD_REFUSED
    assert all(reply.headers["Retry-After"] == "1" for reply in refused)
    served = [reply for reply in replies if reply.status == 200]
    assert len(served) == HELD_WITHIN_BUDGET
    messages = json.dumps(json.loads(body)["messages"])
    assert {reply.body["usage"]["prompt_tokens"] for reply in served} == {len(messages) // 4}
    # the held bodies cost about their bytes; the parsed trees of ten of them would cost ~400 MiB
    held_bytes = HELD_WITHIN_BUDGET * len(body)
    assert while_held["VmRSS"] - before["VmRSS"] < 2 * held_bytes, (while_held, before, held_bytes)
    assert while_held["VmHWM"] - before["VmRSS"] < 3 * held_bytes, (while_held, before, held_bytes)


def test_a_large_non_streamed_answer_reaches_the_client_whole_with_bounded_gateway_memory(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]})
    url = gateway.url + "/v1/chat/completions"
    before = _memory(gateway)

    async def download() -> tuple[int, dict[str, str], int, str, bytes]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
            session.post(url, json=chat(MODEL, fake={"body_bytes": LARGE_ANSWER_BYTES})) as reply,
        ):
            digest = hashlib.sha256()
            size = 0
            tail = b""
            async for piece in reply.content.iter_chunked(MIB):
                digest.update(piece)
                size += len(piece)
                tail = (tail + piece)[-4096:]
            return reply.status, dict(reply.headers), size, digest.hexdigest(), tail

    status, headers, size, digest, tail = asyncio.run(download())
    after = _memory(gateway)
    assert status == 200
    assert size == LARGE_ANSWER_BYTES
    assert headers["Content-Length"] == str(LARGE_ANSWER_BYTES)
    usage: dict[str, Any] = json.loads(tail[tail.rindex(b'"usage":') + len(b'"usage":') : -1])
    expected = hashlib.sha256()
    for piece in large_answer(LARGE_ANSWER_BYTES, usage):
        expected.update(piece)
    assert digest == expected.hexdigest()
    assert after["VmHWM"] - before["VmRSS"] < PASS_THROUGH_GROWTH_LIMIT, (after, before)
    # the usage at the end of the 200 MiB answer was still read on the way
    assert wait_until(lambda: len(gateway.records()) == 1, 5.0)
    record = gateway.records()[0]
    assert (record["promptTokens"], record["completionTokens"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


def test_a_request_the_backend_read_then_reset_is_sent_once_and_answered_with_an_error(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]})

    async def ask() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await post(
                session,
                gateway.url + "/v1/chat/completions",
                chat(MODEL, fake={"reset_after_read": True}),
            )

    reply = asyncio.run(ask())
    assert reply.status == 502
    assert reply.body["error"]["type"] == "server_error"
    assert reply.body["error"]["code"] == "upstream_disconnected"
    assert backend.stats()["requests"] == 1
    assert wait_until(lambda: len(gateway.records()) == 1, 5.0)
    assert gateway.records()[0]["status"] == 502


# request bodies that arrive slowly, or never: charged as their bytes arrive, bounded in time
BODY_LIMIT = 4 * MIB
BODY_BUDGET = 2 * BODY_LIMIT
# a chunked body that stops just short of --max-body-bytes, sent on this many connections: ten
# times the budget
STALLED_CHUNKED = 20
STALLED_CHUNKED_BYTES = BODY_LIMIT - 64 * 1024
# stalled bodies charged at once: as many as fit whole in the budget
STALLED_WITHIN_BUDGET = BODY_BUDGET // STALLED_CHUNKED_BYTES
# bodies that declare a length near the limit and send only a part of it, three times the budget
STALLED_DECLARED = 6
STALLED_DECLARED_SENT = MIB
BODY_TIMEOUT = 3.0
ANSWER_TIMEOUT = 30.0


def _headers(port: int, extra: str) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    ).encode()


def _chunked(payload: bytes, piece: int = 64 * 1024) -> bytes:
    """``payload`` in chunked framing, without the last (zero) chunk: the body never ends."""
    return b"".join(
        b"%x\r\n" % len(payload[at : at + piece]) + payload[at : at + piece] + b"\r\n"
        for at in range(0, len(payload), piece)
    )


def _body_of(size: int) -> bytes:
    """The start of a chat request's JSON, ``size`` bytes long (never complete)."""
    start = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": ""}]})
    return (start[: -len('"}]}')] + "a" * size)[:size].encode()


def _answered(sockets: list[socket.socket]) -> list[socket.socket]:
    """The sockets with an answer (or a close) waiting to be read, now."""
    poller = select.poll()  # select() refuses descriptors past 1024
    by_fd = {sock.fileno(): sock for sock in sockets}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(0)]


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """One HTTP answer from ``sock``: status, headers (lower-case names) and the JSON body."""
    sock.settimeout(ANSWER_TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"closed without an answer after {data!r}"
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    while len(body) < int(headers["content-length"]):
        piece = sock.recv(65536)
        assert piece, "closed in the middle of the answer"
        body += piece
    return int(status_line.split()[1]), headers, json.loads(body)


def _big_chat(size: int) -> dict[str, Any]:
    """A whole chat request of about ``size`` bytes."""
    return chat(MODEL, messages=[{"role": "user", "content": "a" * size}])


def test_chunked_bodies_stalled_under_the_size_limit_are_charged_as_they_arrive_and_bounded(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route(MODEL, backend.url)]},
        "--max-body-bytes",
        str(BODY_LIMIT),
        "--max-held-bytes",
        str(BODY_BUDGET),
    )
    before = _memory(gateway)
    stalled_body = _headers(gateway.port, "Transfer-Encoding: chunked\r\n") + _chunked(
        _body_of(STALLED_CHUNKED_BYTES)
    )
    sockets = [
        socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(STALLED_CHUNKED)
    ]
    try:
        for sock in sockets:
            sock.sendall(stalled_body)
        refused_count = STALLED_CHUNKED - STALLED_WITHIN_BUDGET
        assert wait_until(lambda: len(_answered(sockets)) == refused_count, ANSWER_TIMEOUT), (
            f"{len(_answered(sockets))} of the stalled bodies were refused, not {refused_count}"
        )
        refused = _answered(sockets)
        answers = [_read_answer(sock) for sock in refused]
        assert {(status, body["error"]["code"]) for status, _, body in answers} == {
            (429, "queue_full")
        }
        assert all(headers["retry-after"] == "1" for _, headers, _ in answers)
        while_stalled = _memory(gateway)

        async def later_request() -> Reply:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                return await post(
                    session, gateway.url + "/v1/chat/completions", _big_chat(BODY_LIMIT // 4)
                )

        # the budget is taken by the stalled bodies that arrived whole: a body that does not fit
        # in what is left is refused, not kept beside them
        later = asyncio.run(later_request())
        assert (later.status, later.body["error"]["code"]) == (429, "queue_full")
        assert _answered([sock for sock in sockets if sock not in refused]) == []
    finally:
        for sock in sockets:
            sock.close()
    # twenty bodies of 4 MiB arrived; the gateway kept two of them
    assert while_stalled["VmRSS"] - before["VmRSS"] < 3 * BODY_BUDGET, (while_stalled, before)
    # once their connections close, their bytes are given back: the same request is served
    assert wait_until(lambda: len(gateway.records()) == STALLED_CHUNKED + 1, ANSWER_TIMEOUT)

    async def after_close() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await post(
                session, gateway.url + "/v1/chat/completions", _big_chat(BODY_LIMIT // 4)
            )

    assert asyncio.run(after_close()).status == 200
    gone = [record for record in gateway.records() if record["status"] == 499]
    assert len(gone) == STALLED_WITHIN_BUDGET
    assert {record["error"] for record in gone} == {"client_disconnected"}


def test_bodies_declared_but_not_sent_block_no_one_and_get_408_at_the_body_timeout(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route(MODEL, backend.url)]},
        "--max-body-bytes",
        str(BODY_LIMIT),
        "--max-held-bytes",
        str(BODY_BUDGET),
        "--body-timeout",
        str(BODY_TIMEOUT),
    )
    stalled_start = _headers(gateway.port, f"Content-Length: {BODY_LIMIT}\r\n") + _body_of(
        STALLED_DECLARED_SENT
    )
    sockets = [
        socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(STALLED_DECLARED)
    ]
    try:
        sent_at = {}
        for sock in sockets:
            sock.sendall(stalled_start)
            sent_at[sock] = time.monotonic()

        async def normal_request() -> Reply:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
                return await post(
                    session, gateway.url + "/v1/chat/completions", _big_chat(BODY_LIMIT // 4)
                )

        # six bodies declare 4 MiB each (three times the budget); only what they sent counts
        served = asyncio.run(normal_request())
        assert served.status == 200, served.body
        assert _answered(sockets) == [], "a stalled body was answered before its timeout"
        for sock in sockets:
            status, headers, body = _read_answer(sock)
            waited = time.monotonic() - sent_at[sock]
            assert (status, body["error"]["code"]) == (408, "request_body_timeout")
            assert body["error"]["type"] == "invalid_request_error"
            assert headers["connection"] == "close"
            assert waited >= BODY_TIMEOUT, waited
    finally:
        for sock in sockets:
            sock.close()
    # a record is written once its answer is sent
    assert wait_until(lambda: len(gateway.records()) == STALLED_DECLARED + 1, ANSWER_TIMEOUT)
    timed_out = [record for record in gateway.records() if record["status"] == 408]
    assert len(timed_out) == STALLED_DECLARED
    assert {record["error"] for record in timed_out} == {"request_body_timeout"}
    # what the timed-out bodies had sent was given back: a body of the largest size fits again

    async def largest_request() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await post(
                session, gateway.url + "/v1/chat/completions", _big_chat(BODY_LIMIT - 1024)
            )

    assert asyncio.run(largest_request()).status == 200


def test_a_chunked_body_past_the_size_limit_is_413_and_one_that_does_not_decode_is_400(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route(MODEL, backend.url)]},
        "--max-body-bytes",
        str(BODY_LIMIT),
        "--max-held-bytes",
        str(BODY_LIMIT),
    )
    over_limit = _headers(gateway.port, "Transfer-Encoding: chunked\r\n") + _chunked(
        _body_of(BODY_LIMIT + 1)
    )
    not_gzip = b"this is not gzip"
    undecodable = (
        _headers(gateway.port, f"Content-Encoding: gzip\r\nContent-Length: {len(not_gzip)}\r\n")
        + not_gzip
    )
    logged_before = len(gateway.logs())
    answers = []
    for request in (over_limit, undecodable):
        with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
            sock.sendall(request)
            answers.append(_read_answer(sock))
            if request is undecodable:
                # closed after the answer, not kept reading a body that cannot be read
                assert sock.recv(1) == b""
    (too_large_status, _, too_large), (bad_status, bad_headers, bad_body) = answers
    assert (too_large_status, too_large["error"]["code"]) == (413, "request_too_large")
    assert (bad_status, bad_body["error"]["code"]) == (400, "invalid_request_body")
    assert bad_body["error"]["type"] == "invalid_request_error"
    assert bad_headers["connection"] == "close"
    assert wait_until(lambda: len(gateway.records()) == 2, ANSWER_TIMEOUT)
    assert [record["error"] for record in gateway.records()] == [
        "request_too_large",
        "invalid_request_body",
    ]
    assert not [line for line in gateway.logs()[logged_before:] if "exception" in line]
    # neither body's bytes stayed charged: a body of the largest size is still served

    async def largest_request() -> Reply:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            return await post(
                session, gateway.url + "/v1/chat/completions", _big_chat(BODY_LIMIT - 1024)
            )

    assert asyncio.run(largest_request()).status == 200
