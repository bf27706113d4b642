"""Admission: a routed request from its arrival to the forward. It is authenticated, its body
taken in under the held-bytes budget and the body timeout, its model and stream flag read, the
tenant's and the model's limits checked; past the drain's end it is cut with an answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from typing import Any, Final

from aiohttp import web

from sovereign_gateway.auth import ANONYMOUS
from sovereign_gateway.errors import (
    BODY_TIMEOUT,
    INTERNAL_ERROR,
    INVALID_BODY,
    error_response,
    internal_error_response,
    sse_error_event,
)
from sovereign_gateway.forwarding import Forwarder, cut_reply
from sovereign_gateway.holds import model_not_found
from sovereign_gateway.logs import log_failure
from sovereign_gateway.request_bodies import (
    BodyTimeout,
    BodyTooLarge,
    HeldBytes,
    HeldBytesFull,
    receive_body,
)
from sovereign_gateway.request_records import (
    CLIENT_GONE,
    SHUTTING_DOWN,
    RequestRecord,
    answer_error,
    finish_record,
)
from sovereign_gateway.serving_state import ServingState

log = logging.getLogger(__name__)

_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def authenticate(state: ServingState, request: web.Request) -> str | None:
    """The request's tenant, or None when its API key is missing or unknown."""
    if state.api_keys is None:
        return ANONYMOUS
    return state.api_keys.tenant_for(request.headers.get("Authorization"))


def unauthorized(request: web.Request) -> web.Response:
    present = bool(request.headers.get("Authorization"))
    message = (
        "Incorrect API key provided."
        if present
        else "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
    )
    return error_response(401, message, "invalid_request_error", "invalid_api_key")


def _routing_fields(raw: bytes) -> tuple[Any, bool] | None:
    """The body's ``model`` and whether it asks for a stream; None when it is not a JSON object.

    Only the top-level object's own fields survive the parse: a body of many small objects
    parses into a tree about 25 times its size, and a held request must cost what its bytes cost.
    """
    closed: list[list[tuple[str, Any]]] = []

    def drop_object(pairs: list[tuple[str, Any]]) -> None:
        # objects close innermost first: the last one closed is the top level
        closed[:] = [pairs]

    try:
        document = json.loads(raw, object_pairs_hook=drop_object)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    if document is not None or not closed:
        return None  # an array, a scalar or null
    fields = dict(closed[0])
    return fields.get("model"), fields.get("stream") is True


async def _answer_then_close(request: web.Request, response: web.Response) -> None:
    """Send ``response`` and close the connection at once. aiohttp would otherwise keep reading
    the rest of the body for up to 10 s after the answer (its lingering close), which is right for
    a body refused while it still flows, and wrong for one that stopped arriving or cannot be
    decoded (there is no rest to wait for, and reading a broken one again logs a traceback)."""
    with contextlib.suppress(ConnectionError):  # a client that has gone needs no answer
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()


class Admission:
    """The handler of the routed paths; it hands each admitted request to ``forwarder``.

    It also keeps the requests under way: the drain sets their deadline (``end_at``) and waits
    for them (``wait_idle``).
    """

    def __init__(self, state: ServingState, forwarder: Forwarder) -> None:
        self._state = state
        self._forwarder = forwarder
        self._held_bytes = HeldBytes(state.settings.max_held_bytes)
        # each routed request runs under a deadline that SIGTERM sets to the end of the drain
        self._request_scopes: set[asyncio.Timeout] = set()
        self._drain_deadline: float | None = None
        self._routed_requests = 0
        self._no_requests = asyncio.Event()
        self._no_requests.set()

    def end_at(self, deadline: float) -> None:
        """The drain ends at ``deadline`` (event-loop time): requests still running then are cut."""
        self._drain_deadline = deadline
        for scope in self._request_scopes:
            scope.reschedule(deadline)

    async def wait_idle(self) -> None:
        """Return once no routed request is under way."""
        await self._no_requests.wait()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """A request on a routed path, answered and recorded whatever happens to it."""
        settings = self._state.settings
        client_id = request.headers.get("X-Request-Id", "")
        record = RequestRecord(
            # the gateway's own id: a client cannot make two records share one, or forge one
            request_id=uuid.uuid4().hex,
            arrived_wall=time.time(),
            arrived=time.monotonic(),
            endpoint=request.path,
            client_request_id=client_id if _REQUEST_ID.fullmatch(client_id) else None,
        )
        if settings.record_client_address:
            record.client_address = request.remote
        self._routed_requests += 1
        self._no_requests.clear()
        try:
            response = await self._admit_until_drain_ends(request, record)
        except asyncio.CancelledError:
            record.status = 499  # the client went away
            record.error = record.error or CLIENT_GONE
            raise
        except Exception as error:  # any fault of the gateway's: answered and recorded as a 500
            response = _failed(request, record, error)
            record.status = 500
            return response
        else:
            record.status = 499 if record.error == CLIENT_GONE else response.status
            return response
        finally:
            metered = bool(record.model) and record.model in self._state.models
            finish_record(record, self._state.metering, metered)
            self._routed_requests -= 1
            if not self._routed_requests:
                self._no_requests.set()

    async def _admit_until_drain_ends(
        self, request: web.Request, record: RequestRecord
    ) -> web.StreamResponse:
        scope = asyncio.timeout_at(self._drain_deadline)
        try:
            async with scope:
                self._request_scopes.add(scope)
                try:
                    return await self._admit(request, record)
                finally:
                    self._request_scopes.discard(scope)
        except TimeoutError:
            if not scope.expired():
                raise
        return await _cut_at_drain_end(request, record)

    async def _admit(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        settings = self._state.settings
        tenant = authenticate(self._state, request)
        if tenant is None:
            record.error = "invalid_api_key"
            return unauthorized(request)
        record.tenant = tenant
        # the body's bytes count against --max-held-bytes as they arrive, and stay counted to the
        # request's end: the gateway keeps them all that time
        with self._held_bytes.charge() as charge:
            try:
                raw = await receive_body(
                    request.content,
                    request.content_length,
                    charge,
                    max_bytes=settings.max_body_bytes,
                    timeout=settings.body_timeout,
                )
            except (
                BodyTooLarge,
                HeldBytesFull,
                BodyTimeout,
                web.RequestPayloadError,
                ConnectionError,
            ) as error:
                response = self._body_refused(record, error)
                if isinstance(error, (BodyTimeout, web.RequestPayloadError)):
                    await _answer_then_close(request, response)
                return response
            return await self._route_body(request, record, raw)

    def _body_refused(self, record: RequestRecord, error: Exception) -> web.Response:
        """The answer to a body the gateway did not take in whole. After a body that timed out or
        cannot be decoded the connection closes: what may follow it cannot be told apart from a
        next request."""
        settings = self._state.settings
        if isinstance(error, HeldBytesFull):
            return answer_error(
                record,
                429,
                f"The gateway is at its limit of {settings.max_held_bytes} bytes of requests "
                "waiting for or being served by a replica; try again later.",
                "rate_limit_error",
                "queue_full",
                retry_after=1,
            )
        if isinstance(error, ConnectionError):
            record.error = CLIENT_GONE
            return web.Response(status=499)  # never sent: there is no one to send it to
        if isinstance(error, BodyTooLarge):
            return answer_error(
                record,
                413,
                f"Request body too large: the limit is {settings.max_body_bytes} bytes.",
                "invalid_request_error",
                "request_too_large",
            )
        if isinstance(error, BodyTimeout):
            response = answer_error(
                record,
                408,
                f"The request's body did not arrive within {settings.body_timeout:g} seconds.",
                "invalid_request_error",
                BODY_TIMEOUT,
            )
        else:
            response = answer_error(
                record,
                400,
                "The request's body could not be read: its Content-Encoding does not decode.",
                "invalid_request_error",
                INVALID_BODY,
            )
        response.force_close()
        return response

    async def _route_body(
        self, request: web.Request, record: RequestRecord, raw: bytes
    ) -> web.StreamResponse:
        state = self._state
        tenant = record.tenant
        routing = _routing_fields(raw)
        if routing is None:
            return answer_error(
                record,
                400,
                "We could not parse the JSON body of your request: expected a JSON object.",
                "invalid_request_error",
                "invalid_json",
            )
        model, stream = routing
        if not isinstance(model, str) or not model:
            return answer_error(
                record,
                400,
                "You must provide a model parameter.",
                "invalid_request_error",
                "missing_model",
                param="model",
            )
        record.model = model
        record.stream = stream
        # ``models`` holds exactly the models of the current route table (``RouteReload``)
        readiness = state.models.get(model)
        if readiness is None:
            return model_not_found(record)
        # no await from this check to ``counts.hold`` in ``Forwarder.forward``: this replica's
        # own count stays exact, so no one replica admits past the limit (the bound across
        # replicas is the limit x the replicas: README, Tenants)
        tenant_limit = state.routes.tenant(tenant)
        if (
            tenant_limit is not None
            and tenant_limit.max_concurrent_requests is not None
            and state.counts.total_tenant(tenant) >= tenant_limit.max_concurrent_requests
        ):
            return answer_error(
                record,
                429,
                f"Tenant {tenant!r} is at its limit of {tenant_limit.max_concurrent_requests} "
                "concurrent requests.",
                "rate_limit_error",
                "tenant_concurrency_limit",
                retry_after=1,
            )
        if state.counts.local_model(model).pending >= readiness.route.max_pending_requests:
            return answer_error(
                record,
                429,
                f"The model `{model}` has {readiness.route.max_pending_requests} requests "
                "waiting for a replica; try again later.",
                "rate_limit_error",
                "queue_full",
                retry_after=readiness.cold_retry_after(),
            )
        return await self._forwarder.forward(request, record, readiness, raw)


def _failed(request: web.Request, record: RequestRecord, error: Exception) -> web.StreamResponse:
    """A fault of the gateway's own: one log line, and OpenAI's 500 without the fault in it
    (or, when the reply has begun, its connection cut)."""
    log_failure("request failed in the gateway", error, requestId=record.request_id)
    record.error = INTERNAL_ERROR
    if record.stream_response is not None:
        cut_reply(request)
        return record.stream_response
    return internal_error_response(record.request_id)


async def _cut_at_drain_end(request: web.Request, record: RequestRecord) -> web.StreamResponse:
    """The drain ended with this request still running: tell the client, then close."""
    log.warning(
        "request cut at the end of the drain",
        extra={"model": record.model, "requestId": record.request_id},
    )
    message = "The gateway replica is shutting down; send the request again."
    response = record.stream_response
    if response is None:
        return answer_error(record, 503, message, "server_error", SHUTTING_DOWN, retry_after=1)
    record.error = SHUTTING_DOWN
    if not record.stream_is_sse:
        cut_reply(request)
        return response
    try:
        if not record.stream_at_event_end:
            await response.write(b"\n\n")  # end the partial event before ours
        await response.write(sse_error_event(message, SHUTTING_DOWN))
        await response.write_eof()
    except ConnectionResetError:
        record.error = CLIENT_GONE
    return response
