"""Forwarding: a request sent to its model's replicas once, and the reply passed back as it comes
(a JSON answer, or an SSE stream with its usage read on the way)."""

from __future__ import annotations

import errno
import logging
import time
from typing import Final

import aiohttp
from aiohttp import web

from sovereign_gateway.connections import OVERLOADED
from sovereign_gateway.errors import (
    BACKEND_ERROR,
    UPSTREAM_DISCONNECTED,
    UPSTREAM_TIMEOUT,
    backend_error_message,
    sse_error_event,
)
from sovereign_gateway.holds import cold_timeout, wait_for_replica
from sovereign_gateway.readiness import ModelReadiness
from sovereign_gateway.request_records import CLIENT_GONE, RequestRecord, answer_error
from sovereign_gateway.serving_state import ServingState
from sovereign_gateway.usage_sniffer import BodyUsage, StreamUsage

log = logging.getLogger(__name__)

# a forward that finds no replica listening goes back to the hold; after this many it is a 503
_MAX_FORWARD_ATTEMPTS: Final = 5
# A connect that failed for want of a local port or descriptor says nothing about the replicas.
_LOCAL_EXHAUSTION: Final = frozenset(
    {errno.EADDRNOTAVAIL, errno.EMFILE, errno.ENFILE, errno.ENOBUFS}
)
_FORWARD_HEADERS: Final = ("Content-Type", "Accept")
# replica time is split between tenants at request starts and ends, at most this often (seconds)
_ACCRUE_GRANULARITY: Final = 0.05


def cut_reply(request: web.Request) -> None:
    """Close the client's connection before the reply's end: a body whose status is already
    sent cannot carry an error, and the missing end tells the client it is incomplete."""
    request.protocol.force_close()


async def _end_reply(response: web.StreamResponse, record: RequestRecord) -> None:
    """Finish a reply whose body went out in pieces; a client gone by then is recorded so, not
    taken for a fault of the gateway's."""
    try:
        await response.write_eof()
    except ConnectionResetError:
        record.error = record.error or CLIENT_GONE


def upstream_session() -> aiohttp.ClientSession:
    """The client the gateway reaches its models' replicas with (forwards and probes)."""
    return aiohttp.ClientSession(
        # one upstream connection per request: through a model's Service, a kept-alive
        # connection stays with the replica it first reached, so under steady load a replica
        # that is draining before it stops (preStop) would keep getting new requests and never
        # drain. A new connection reaches only replicas still in the Service's endpoints;
        # inside the cluster the handshake costs well under a millisecond.
        connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, force_close=True),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=False,
        # the replies' bytes are passed on as they come, with their Content-Type only: ask
        # for them uncompressed, or a compressing backend's body would reach the client
        # without the Content-Encoding that decodes it
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


class Forwarder:
    """Sends admitted requests to their model's replicas over ``session`` and passes back the
    replies; it counts each request held, then in flight, in ``state.counts``."""

    def __init__(self, state: ServingState, session: aiohttp.ClientSession) -> None:
        self._state = state
        self._session = session

    async def forward(  # noqa: PLR0911  (one return per way a forward ends reads best)
        self, request: web.Request, record: RequestRecord, readiness: ModelReadiness, raw: bytes
    ) -> web.StreamResponse:
        """Hold the request until a replica is ready, send it once, and answer with the reply.

        The caller has just checked the model's and tenant's limits: the count is taken here
        before any await, so that check stays exact for this replica.
        """
        counts = self._state.counts
        model, tenant = record.model, record.tenant
        headers = {
            name: request.headers[name] for name in _FORWARD_HEADERS if name in request.headers
        }
        headers["X-Request-Id"] = record.request_id
        counts.hold(model, tenant)
        in_flight = False
        try:
            for _attempt in range(_MAX_FORWARD_ATTEMPTS):
                ready = await wait_for_replica(self._state, record)
                if isinstance(ready, web.Response):
                    return ready
                # a reload while the request was held may have changed the route
                readiness, route = ready, ready.route
                deadline = record.arrived + route.cold_start_timeout_seconds
                url = route.upstream + request.path
                # replica time so far goes to the requests in flight so far
                readiness.accrue(at_least=_ACCRUE_GRANULARITY)
                counts.forward(model, tenant)
                in_flight = True
                try:
                    upstream = await self._session.post(
                        url,
                        data=raw,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=route.request_timeout_seconds),
                    )
                except aiohttp.ClientConnectorError as error:
                    if error.os_error.errno in _LOCAL_EXHAUSTION:
                        # this process or node is out of ports or descriptors: the replica is
                        # not cold, and the request was never sent, so the client may retry
                        return answer_error(
                            record,
                            503,
                            "The gateway has no free connection to the model's replicas right "
                            "now; try again.",
                            "server_error",
                            OVERLOADED,
                            retry_after=1,
                        )
                    # the connection failed before the request was sent (a Service without
                    # ready endpoints refuses): the replica never saw it, so hold it again
                    log.debug("no replica listening", extra={"model": model, "error": repr(error)})
                    readiness.mark_unready()
                    counts.back_to_pending(model, tenant)
                    in_flight = False
                    if time.monotonic() >= deadline:
                        return cold_timeout(record, readiness)
                    continue
                except aiohttp.ClientConnectionError as error:
                    # closed or reset after the request was sent: the replica may have acted on
                    # it, and one that crashes on it would take the next replica down too, so it
                    # is answered once and never sent again
                    log.warning(
                        "backend connection lost before an answer",
                        extra={
                            "model": model,
                            "requestId": record.request_id,
                            "error": type(error).__name__,
                        },
                    )
                    return answer_error(
                        record,
                        502,
                        f"The model `{model}`'s replica closed the connection without answering.",
                        "server_error",
                        UPSTREAM_DISCONNECTED,
                    )
                except TimeoutError:
                    return answer_error(
                        record,
                        504,
                        f"The model `{model}` did not answer within "
                        f"{route.request_timeout_seconds:g} seconds.",
                        "server_error",
                        UPSTREAM_TIMEOUT,
                    )
                try:
                    return await self._respond(request, record, upstream)
                finally:
                    upstream.release()
            return answer_error(
                record,
                503,
                f"The model `{model}` has no replica that accepts requests; try again later.",
                "server_error",
                "model_unavailable",
                retry_after=readiness.cold_retry_after(),
            )
        finally:
            if in_flight:
                readiness.accrue(at_least=_ACCRUE_GRANULARITY)
                counts.finish(model, tenant)
            else:
                counts.release_hold(model, tenant)

    async def _respond(
        self, request: web.Request, record: RequestRecord, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        if upstream.status >= 500:
            return _backend_failed(record, upstream.status)
        content_type = upstream.headers.get("Content-Type", "application/json")
        if (
            record.stream
            and upstream.status == 200
            and content_type.startswith("text/event-stream")
        ):
            return await self._stream(request, record, upstream, content_type)
        return await _pass_body(request, record, upstream, content_type)

    async def _stream(
        self,
        request: web.Request,
        record: RequestRecord,
        upstream: aiohttp.ClientResponse,
        content_type: str,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": content_type,
                "Cache-Control": "no-cache",
                "X-Request-Id": record.request_id,
            },
        )
        await response.prepare(request)
        record.stream_response = response
        record.stream_is_sse = True
        sniffer = StreamUsage()
        record.usage = sniffer.usage
        try:
            async for chunk in upstream.content.iter_any():
                if record.ttft is None:
                    record.ttft = time.monotonic() - record.arrived
                    self._state.metering.first_token(record.model, record.tenant, record.ttft)
                sniffer.feed(chunk)
                record.stream_at_event_end = chunk.endswith(b"\n\n")
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    # the client went away; releasing the upstream response stops the backend
                    record.error = CLIENT_GONE
                    return response
        except (aiohttp.ClientError, TimeoutError) as error:
            timed_out = isinstance(error, TimeoutError)
            record.error = UPSTREAM_TIMEOUT if timed_out else UPSTREAM_DISCONNECTED
            log.warning(
                "backend stream ended early",
                extra={
                    "model": record.model,
                    "requestId": record.request_id,
                    "error": record.error,
                },
            )
            message = (
                "The model's reply took longer than the request timeout."
                if timed_out
                else "The model's replica stopped while streaming the reply."
            )
            try:
                await response.write(sse_error_event(message, record.error))
            except ConnectionResetError:
                return response  # the client left too; the backend's failure stays recorded
        await _end_reply(response, record)
        return response


def _backend_failed(record: RequestRecord, status: int) -> web.Response:
    """A backend's 5xx: same status, OpenAI's error object instead of the backend's body (a
    traceback, an internal address), which is left unread."""
    log.warning(
        "backend answered with an error",
        extra={"model": record.model, "status": status, "requestId": record.request_id},
    )
    return answer_error(
        record,
        status,
        backend_error_message(record.model, status),
        "server_error",
        BACKEND_ERROR,
    )


async def _pass_body(
    request: web.Request,
    record: RequestRecord,
    upstream: aiohttp.ClientResponse,
    content_type: str,
) -> web.StreamResponse:
    """A non-streamed reply, passed through as it arrives whatever its size; the usage of a
    JSON answer is read on the way, never the body kept."""
    # the first bytes are awaited before the status is sent: a replica that fails before
    # sending any of its body still gets a clean error answer
    try:
        chunk = await upstream.content.readany()
    except TimeoutError:
        return answer_error(
            record,
            504,
            f"The model `{record.model}` did not answer within the request timeout.",
            "server_error",
            UPSTREAM_TIMEOUT,
        )
    except aiohttp.ClientError:
        return answer_error(
            record,
            502,
            f"The model `{record.model}`'s replica stopped while answering.",
            "server_error",
            UPSTREAM_DISCONNECTED,
        )
    response = web.StreamResponse(
        status=upstream.status,
        headers={"Content-Type": content_type, "X-Request-Id": record.request_id},
    )
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    await response.prepare(request)
    record.stream_response = response
    sniffer = BodyUsage() if upstream.status == 200 else None
    try:
        while chunk:
            if sniffer is not None:
                sniffer.feed(chunk)
            try:
                await response.write(chunk)
            except ConnectionResetError:
                record.error = CLIENT_GONE
                return response
            chunk = await upstream.content.readany()
    except (aiohttp.ClientError, TimeoutError) as error:
        record.error = (
            UPSTREAM_TIMEOUT if isinstance(error, TimeoutError) else UPSTREAM_DISCONNECTED
        )
        log.warning(
            "backend body ended early",
            extra={
                "model": record.model,
                "requestId": record.request_id,
                "error": record.error,
            },
        )
        cut_reply(request)
        return response
    if sniffer is not None:
        record.usage = sniffer.finish()
    await _end_reply(response, record)
    return response
