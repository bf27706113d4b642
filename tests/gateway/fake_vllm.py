"""A fake vLLM server for gateway tests: the OpenAI surface, streamed or not, with usage.

Run as ``python -m tests.gateway.fake_vllm --port N``. It behaves like a replica seen from outside:
``--start-delay S`` keeps the port closed (connections refused) for S seconds, as during a cold
start, then listens. ``--reuse-port`` lets a second replica share the port, the kernel spreading
connections between them like a Service. A request may steer the reply through a ``fake`` object in
its body: ``chunks`` (streamed chunks), ``interval`` (seconds between chunks), ``delay`` (seconds
before answering), ``die_after`` (the process exits after sending that many chunks),
``reset_after_read`` (the request is read, counted, then its connection reset, as by a replica that
crashes on it), ``body_bytes`` (a non-streamed answer of exactly that many bytes, generated while it
is sent: ``large_answer``), ``fail_status`` (that 5xx status, its body a traceback:
``ENGINE_TRACEBACK``). ``POST /fake/health`` slows ``/health`` or makes its next answers 503 (a
replica busy generating). Every streamed chunk carries ``sent``, the server's ``time.monotonic()``
when it was written (the clock is shared by the processes of one machine). ``GET /fake/stats`` tells
when it started listening and when the first request arrived (``requests`` counts the requests read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

MODEL = web.AppKey("model", str)
# the body of a ``fail_status`` answer: what must never reach a gateway's client
ENGINE_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/local/lib/python3.12/site-packages/vllm/engine/llm_engine.py", line 1, in step\n'
    "RuntimeError: CUDA error: an illegal memory access was encountered (node gpu-7, 10.42.3.17)\n"
)
_STATS: dict[str, Any] = {
    "listening_since": None,
    "first_request_at": None,
    "requests": 0,
    # the client end (address:port) of each connection a completion request arrived on
    "request_connections": [],
    # the Accept-Encoding of each completion request (None: not sent)
    "accept_encodings": [],
}
_HEALTH: dict[str, Any] = {"delay": 0.0, "failures": 0}
_LARGE_ANSWER_PIECE = 1 << 20


def _fake(body: dict[str, Any]) -> dict[str, Any]:
    value = body.get("fake")
    return value if isinstance(value, dict) else {}


def _count_request() -> None:
    if _STATS["first_request_at"] is None:
        _STATS["first_request_at"] = time.monotonic()
    _STATS["requests"] += 1


def _prompt_tokens(body: dict[str, Any]) -> int:
    text = json.dumps(body.get("messages") or body.get("prompt") or body.get("input") or "")
    return max(1, len(text) // 4)


async def _health(request: web.Request) -> web.Response:
    if _HEALTH["delay"]:
        await asyncio.sleep(_HEALTH["delay"])
    if _HEALTH["failures"]:
        _HEALTH["failures"] -= 1
        return web.Response(status=503, text="busy")
    return web.Response(text="")


async def _set_health(request: web.Request) -> web.Response:
    """``{"delay": S, "failures": N}``: later /health answers take S seconds; the next N are 503."""
    body = await request.json()
    _HEALTH["delay"] = float(body.get("delay", 0.0))
    _HEALTH["failures"] = int(body.get("failures", 0))
    return web.json_response(_HEALTH)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response({**_STATS, "pid": os.getpid()})


async def _model_info(request: web.Request) -> web.Response:
    """What routers that discover a worker's model ask for (vllm-router, sglang-router)."""
    name = request.app[MODEL]
    return web.json_response({"model_id": name, "model_path": name, "is_generation": True})


async def _models(request: web.Request) -> web.Response:
    name = request.app[MODEL]
    return web.json_response({"object": "list", "data": [{"id": name, "object": "model"}]})


def large_answer(size: int, usage: dict[str, int]) -> Iterator[bytes]:
    """A chat completion of exactly ``size`` bytes, its content padded with numbered pieces and
    ``usage`` last, as vLLM writes it; the test regenerates it to check every byte."""
    head = (
        b'{"id":"cmpl-fake","object":"chat.completion","model":"fake/model","choices":'
        b'[{"index":0,"message":{"role":"assistant","content":"'
    )
    tail = b'"},"finish_reason":"stop"}],"usage":' + json.dumps(usage).encode() + b"}"
    padding = size - len(head) - len(tail)
    if padding < 0:
        raise ValueError(f"body_bytes: expected at least {len(head) + len(tail)}, got {size}")
    yield head
    for number, start in enumerate(range(0, padding, _LARGE_ANSWER_PIECE)):
        piece = b"%010d" % number + b"y" * (_LARGE_ANSWER_PIECE - 10)
        yield piece[: padding - start]
    yield tail


async def _send_large_answer(
    request: web.Request, size: int, usage: dict[str, int]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = size
    await response.prepare(request)
    for piece in large_answer(size, usage):
        await response.write(piece)
    await response.write_eof()
    return response


def _reset_connection(request: web.Request) -> None:
    """Drop the client's connection with a TCP reset (SO_LINGER 0), as a crashing replica does."""
    transport = request.transport
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    transport.abort()


async def _completion(request: web.Request) -> web.StreamResponse:
    _count_request()
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if peer is not None and f"{peer[0]}:{peer[1]}" not in _STATS["request_connections"]:
        _STATS["request_connections"].append(f"{peer[0]}:{peer[1]}")
    _STATS["accept_encodings"].append(request.headers.get("Accept-Encoding"))
    body = await request.json()
    fake = _fake(body)
    if fake.get("reset_after_read"):
        _reset_connection(request)
        return web.Response()  # never reaches the client: its connection is gone
    if fake.get("fail_status"):
        # a server whose handler raised and whose error page is the traceback
        return web.Response(status=int(fake["fail_status"]), text=ENGINE_TRACEBACK)
    chunks = int(fake.get("chunks", 3))
    interval = float(fake.get("interval", 0.0))
    die_after = fake.get("die_after")
    if fake.get("delay"):
        await asyncio.sleep(float(fake["delay"]))
    chat = request.path.endswith("/chat/completions")
    model = body.get("model", request.app[MODEL])
    prompt_tokens = _prompt_tokens(body)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": chunks,
        "total_tokens": prompt_tokens + chunks,
    }
    created = int(time.time())
    if body.get("stream") is not True and fake.get("body_bytes"):
        return await _send_large_answer(request, int(fake["body_bytes"]), usage)
    if body.get("stream") is not True:
        text = " ".join(f"tok{i}" for i in range(chunks))
        choice: dict[str, Any] = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if chat
            else {"index": 0, "text": text, "finish_reason": "stop"}
        )
        return web.json_response(
            {
                "id": "cmpl-fake",
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
                "pid": os.getpid(),
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    for index in range(chunks):
        if die_after is not None and index >= int(die_after):
            os._exit(3)  # the replica dies mid-stream: the kernel closes its sockets
        delta = {"content": f"tok{index} "}
        event: dict[str, Any] = {
            "id": "cmpl-fake",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": None}
                if chat
                else {"index": 0, "text": delta["content"], "finish_reason": None}
            ],
            "seq": index,
            "sent": time.monotonic(),
            "pid": os.getpid(),
        }
        if include_usage:
            event["usage"] = None
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if interval:
            await asyncio.sleep(interval)
    if include_usage:
        final = {
            "id": "cmpl-fake",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": usage,
        }
        await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _embeddings(request: web.Request) -> web.Response:
    _count_request()
    body = await request.json()
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    prompt_tokens = _prompt_tokens(body)
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                for i in range(len(items))
            ],
            "model": body.get("model"),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


def build_app(model: str) -> web.Application:
    # vLLM takes bodies far past aiohttp's 1 MiB default; the gateway's own limit is what is tested
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[MODEL] = model
    app.router.add_get("/health", _health)
    app.router.add_get("/fake/stats", _stats)
    app.router.add_post("/fake/health", _set_health)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/get_model_info", _model_info)
    app.router.add_get("/get_server_info", _model_info)
    app.router.add_post("/v1/chat/completions", _completion)
    app.router.add_post("/v1/completions", _completion)
    app.router.add_post("/v1/embeddings", _embeddings)
    return app


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if args.start_delay > 0:
        await asyncio.sleep(args.start_delay)
    runner = web.AppRunner(build_app(args.model), access_log=None)
    await runner.setup()
    await web.TCPSite(
        runner, args.host, args.port, reuse_port=args.reuse_port, backlog=1024
    ).start()
    _STATS["listening_since"] = time.monotonic()
    print(json.dumps({"event": "listening", "t": _STATS["listening_since"]}), flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="fake-vllm")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake/model")
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--reuse-port", action="store_true")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
