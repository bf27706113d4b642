"""One request's record: what it leaves in the request records, and the error answers that set it.

Every routed request gets a :class:`RequestRecord` on arrival; admission and forwarding fill it in,
and :func:`finish_record` writes it (never prompt or completion content) and meters it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from sovereign_gateway.errors import echoed, error_response
from sovereign_gateway.logs import iso_time, write_record
from sovereign_gateway.metering import Metering
from sovereign_gateway.usage_sniffer import Usage

CLIENT_GONE: Final = "client_disconnected"
SHUTTING_DOWN: Final = "gateway_shutdown"


@dataclass
class RequestRecord:
    """What one request leaves in the request records (never prompt or completion content)."""

    request_id: str
    arrived_wall: float
    arrived: float
    endpoint: str
    model: str = ""
    tenant: str = ""
    stream: bool = False
    status: int = 0
    cold_start: bool = False
    cold_wait: float | None = None
    ttft: float | None = None
    error: str | None = None
    client_address: str | None = None
    # the client's own X-Request-Id, kept beside the gateway's (only when it is a short token)
    client_request_id: str | None = None
    usage: Usage | None = None
    # a reply under way (its status already sent), whether it is an SSE stream, and whether what
    # was sent of it ends at an SSE event's end
    stream_response: web.StreamResponse | None = None
    stream_is_sse: bool = False
    stream_at_event_end: bool = True


def answer_error(
    record: RequestRecord,
    status: int,
    message: str,
    error_type: str,
    code: str | None,
    **kwargs: Any,
) -> web.Response:
    """OpenAI's error answer for ``record``'s request, its code recorded as the request's error."""
    record.error = code or error_type
    return error_response(status, message, error_type, code, request_id=record.request_id, **kwargs)


def finish_record(record: RequestRecord, metering: Metering, metered: bool) -> None:
    """Write the request's record, and meter it when ``metered`` (its model is served)."""
    usage = record.usage or Usage()
    if metered:
        metering.request_done(
            record.model,
            record.tenant,
            record.status,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
    entry: dict[str, Any] = {
        "time": iso_time(record.arrived_wall),
        "requestId": record.request_id,
        "clientRequestId": record.client_request_id,
        "endpoint": record.endpoint,
        # the name as sent: bounded, since an unknown model is recorded too
        "model": echoed(record.model) if record.model else None,
        "tenant": record.tenant or None,
        "stream": record.stream,
        "status": record.status,
        "promptTokens": usage.prompt_tokens,
        "completionTokens": usage.completion_tokens,
        "latencyMs": round((time.monotonic() - record.arrived) * 1000, 3),
        "ttftMs": None if record.ttft is None else round(record.ttft * 1000, 3),
        "coldStart": record.cold_start,
        "coldWaitMs": None if record.cold_wait is None else round(record.cold_wait * 1000, 3),
        "error": record.error,
    }
    if record.client_address is not None:
        entry["clientAddress"] = record.client_address
    write_record(entry)
