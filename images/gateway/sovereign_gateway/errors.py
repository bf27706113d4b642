"""OpenAI's error JSON shape, the one way every error leaves the public listener."""

from __future__ import annotations

import json
import math
from http import HTTPStatus

from aiohttp import web

# what every answer of the public listener names as its server: no software or version to fingerprint
SERVER_HEADER = "sovereign-gateway"
# the longest client-sent value echoed in an error message or written to a request record
MAX_ECHOED_CHARS = 256
INTERNAL_ERROR = "internal_error"
BACKEND_ERROR = "upstream_error"
# the replica closed or reset its connection before its answer ended
UPSTREAM_DISCONNECTED = "upstream_disconnected"
# the replica did not answer within the route's requestTimeoutSeconds
UPSTREAM_TIMEOUT = "upstream_timeout"
# the request's body did not arrive whole within --body-timeout
BODY_TIMEOUT = "request_body_timeout"
# the request's body does not decode (its Content-Encoding is not what it claims)
INVALID_BODY = "invalid_request_body"


def echoed(value: str) -> str:
    """``value`` as an error message or a record may repeat it: at most ``MAX_ECHOED_CHARS``
    characters, a longer one cut with its full length said, so a client cannot make an answer
    or a record line grow with what it sends."""
    if len(value) <= MAX_ECHOED_CHARS:
        return value
    return f"{value[:MAX_ECHOED_CHARS]}... ({len(value)} characters)"


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


def internal_error_response(request_id: str | None = None) -> web.Response:
    """A fault of the gateway's own: OpenAI's 500, with nothing of the fault in it."""
    return error_response(
        500,
        "The gateway failed to process your request.",
        "server_error",
        INTERNAL_ERROR,
        request_id=request_id,
    )


def backend_error_message(model: str, status: int) -> str:
    """What a client is told of a backend's 5xx instead of its body (a traceback, an internal
    address): which model failed and how, never the backend's own words."""
    return f"The model `{model}` failed to answer (its replica returned HTTP {status})."


def raw_error_response(
    status: int, message: str, error_type: str, code: str, *, retry_after: int | None = None
) -> bytes:
    """A whole HTTP/1.1 error answer, for a connection that has no request object to answer
    through (its headers never arrived, or it is past the connection limit); it closes the
    connection."""
    body = error_body(message, error_type, code).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Server: {SERVER_HEADER}",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def sse_error_event(message: str, code: str) -> bytes:
    """The event that ends a stream whose backend failed, as OpenAI-compatible servers send it."""
    return b"data: " + error_body(message, "server_error", code).encode() + b"\n\n"
