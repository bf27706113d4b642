"""Operations against a real gateway process: route-table reload and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc

from tests.gateway.client import StreamReply, chat, post, post_stream
from tests.gateway.conftest import (
    Processes,
    http_json,
    route,
    scaled_object,
)
from tests.loopback import free_port, wait_until

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
SECOND = "BAAI/bge-m3"


def _write_atomically(path: Path, document: Any) -> None:
    """Replace the file the way a ConfigMap volume does: a new file renamed over the old."""
    scratch = path.with_suffix(".new")
    scratch.write_text(document if isinstance(document, str) else json.dumps(document))
    os.replace(scratch, path)


def _target(address: str, model: str) -> int:
    async def call() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            spec = await stub.GetMetricSpec(scaled_object(model))
            value: int = spec.metricSpecs[0].targetSize
            return value

    return asyncio.run(call())


def test_route_table_reloads_on_change_without_dropping_requests(processes: Processes) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]}, "--reload-interval", "0.1")
    url = gateway.url + "/v1/chat/completions"

    async def scenario() -> tuple[StreamReply, int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            streaming = asyncio.create_task(
                post_stream(
                    session, url, chat(MODEL, stream=True, fake={"chunks": 10, "interval": 0.1})
                )
            )
            await asyncio.sleep(0.2)
            _write_atomically(
                gateway.routes_file,
                {
                    "models": [
                        route(MODEL, backend.url, targetConcurrency=4),
                        route(SECOND, backend.url),
                    ]
                },
            )
            assert await asyncio.to_thread(
                wait_until, lambda: _target(gateway.scaler_address, MODEL) == 4, 3.0
            )
            second = await post(
                session, gateway.url + "/v1/embeddings", {"model": SECOND, "input": "x"}
            )
            return await streaming, second.status

    streamed, second_status = asyncio.run(scenario())
    assert streamed.status == 200
    assert [
        event["seq"] for event in streamed.data if isinstance(event, dict) and "seq" in event
    ] == list(range(10))
    assert streamed.data[-1] == "[DONE]"
    assert second_status == 200
    _, models = http_json(gateway.url + "/v1/models")
    assert [item["id"] for item in models["data"]] == [MODEL, SECOND]

    # a broken table is refused with the field named, and the last good one stays
    _write_atomically(
        gateway.routes_file, {"models": [{"name": MODEL, "upstream": "ftp://nowhere"}]}
    )
    assert wait_until(lambda: "route table not reloaded" in gateway.log_file.read_text(), 3.0)
    assert "models[0].upstream: expected an http(s) base URL" in gateway.log_file.read_text()
    _, models = http_json(gateway.url + "/v1/models")
    assert [item["id"] for item in models["data"]] == [MODEL, SECOND]


def test_sigterm_finishes_the_streams_in_flight(processes: Processes) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]})
    url = gateway.url + "/v1/chat/completions"

    async def scenario() -> tuple[list[StreamReply], float]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            streams = [
                asyncio.create_task(
                    post_stream(
                        session, url, chat(MODEL, stream=True, fake={"chunks": 10, "interval": 0.1})
                    )
                )
                for _ in range(3)
            ]
            await asyncio.sleep(0.3)
            gateway.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            replies = await asyncio.gather(*streams)
            return replies, signalled

    replies, signalled = asyncio.run(scenario())
    for reply in replies:
        assert reply.status == 200
        assert reply.data[-1] == "[DONE]"
        assert (
            len([event for event in reply.data if isinstance(event, dict) and "seq" in event]) == 10
        )
    assert gateway.process.wait(10) == 0
    assert time.monotonic() - signalled < 5
    assert any(line["message"] == "draining" for line in gateway.logs())
    assert len(gateway.records()) == 3


def test_a_broken_route_table_stops_the_start_naming_the_field(processes: Processes) -> None:
    gateway = processes.gateway(
        {"models": [{"name": MODEL, "upstream": "http://x:8000", "targetConcurrency": 0}]},
        wait=False,
    )
    assert gateway.process.wait(15) == 2
    assert (
        "models[0].targetConcurrency: Input should be greater than or equal to 1"
        in gateway.log_file.read_text()
    )


def test_a_port_in_use_stops_the_start_naming_the_address(processes: Processes) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gateway = processes.gateway(
            {"models": [route(MODEL, "http://127.0.0.1:9")]},
            ports=(port, free_port(), free_port()),
            wait=False,
        )
        assert gateway.process.wait(15) == 2
    assert f"cannot start: cannot listen on 127.0.0.1:{port}" in gateway.log_file.read_text()
