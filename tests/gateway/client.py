"""An OpenAI-style test client over aiohttp: plain requests and SSE streams with arrival times."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from multidict import CIMultiDict


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: Any


@dataclass
class StreamReply:
    status: int
    headers: CIMultiDict[str]
    events: list[tuple[float, Any]] = field(default_factory=list)  # (arrival, parsed data)

    @property
    def data(self) -> list[Any]:
        return [event for _, event in self.events]


def chat(model: str, *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say something."}],
        **extra,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with session.post(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    ) as response:
        raw = await response.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = raw.decode()
        return Reply(response.status, CIMultiDict(response.headers), parsed)


async def post_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> StreamReply:
    """POST and read the SSE reply line by line, stamping each ``data:`` event on arrival."""
    async with session.post(
        url, json=body, headers={"Accept": "text/event-stream", **(headers or {})}
    ) as response:
        reply = StreamReply(response.status, CIMultiDict(response.headers))
        if response.status != 200:
            reply.events.append((time.monotonic(), json.loads(await response.read())))
            return reply
        async for line in response.content:
            arrival = time.monotonic()
            if line.startswith(b"data: "):
                payload = line[len(b"data: ") :].strip()
                reply.events.append(
                    (arrival, "[DONE]" if payload == b"[DONE]" else json.loads(payload))
                )
        return reply
