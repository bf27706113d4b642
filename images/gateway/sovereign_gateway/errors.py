"""OpenAI's error JSON shape, the one way every error leaves the public listener."""

from __future__ import annotations

import json
import math

from aiohttp import web


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> str:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI's API writes it."""
    return json.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


def error_response(
    status: int,
    message: str,
    error_type: str,
    code: str | None,
    *,
    param: str | None = None,
    retry_after: float | None = None,
    request_id: str | None = None,
) -> web.Response:
    """An error response; ``retry_after`` (seconds, rounded up, at least 1) sets Retry-After."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    return web.Response(
        status=status,
        text=error_body(message, error_type, code, param),
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(message: str, code: str) -> bytes:
    """The event that ends a stream whose backend failed, as OpenAI-compatible servers send it."""
    return b"data: " + error_body(message, "server_error", code).encode() + b"\n\n"
