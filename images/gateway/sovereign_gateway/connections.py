"""The gateway's HTTP connections, on both listeners: how long a client may take to send its
headers, how long an idle one stays open, how many may be open, and the answers aiohttp would
otherwise give by itself (plain text, its version in ``Server``, a traceback in the log with the
client's address).

aiohttp bounds none of these but the idle time: a connection that sends half a request line stays
open until the keep-alive timeout, and past the process's descriptor limit asyncio stops accepting,
``/readyz`` included, and logs every failed accept. Here a connection is a ``GuardedConnection``
(aiohttp's ``RequestHandler`` plus a header timer and a place in the count and in the order of
connections waiting for a request), made by ``GuardedSite``, which stands where aiohttp's
``TCPSite`` would.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from sovereign_gateway.errors import (
    SERVER_HEADER,
    error_response,
    internal_error_response,
    raw_error_response,
)
from sovereign_gateway.logs import RepeatLimit, log_failure

log = logging.getLogger(__name__)

# what the kubelet asks: answered on a connection past the limit, where anything else gets 503
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
# connections past --max-connections that still get one answer (a probe's, or 503); when these
# are taken too, a new connection takes the place of the oldest one waiting for a request
ANSWER_SLOTS = 64
# a connection past the limit has this long to send its headers (or --header-timeout, if
# shorter): it exists to carry one probe, which sends its request at once, and an idle one must
# not keep the slot from the next probe for long
PAST_LIMIT_HEADER_TIMEOUT = 1.0
# the admin listener serves the metrics scraper (one keep-alive connection) and an operator's
# curl: a few connections, and as many answer slots past them
ADMIN_MAX_CONNECTIONS = 16
ADMIN_ANSWER_SLOTS = 16
# descriptors kept for everything but HTTP connections: listeners, gRPC, peers, probes, files
_RESERVED_DESCRIPTORS = 64
# a public connection may pair with one connection to a backend while its request is forwarded
_DESCRIPTORS_PER_CONNECTION = 2
OVERLOADED = "server_overloaded"
HEADER_TIMEOUT = "request_header_timeout"
BAD_HTTP = "invalid_http_request"

_HEADER_TIMEOUT_ANSWER = raw_error_response(
    408,
    "The request's headers did not arrive in time.",
    "invalid_request_error",
    HEADER_TIMEOUT,
)
_OVERLOADED_MESSAGE = "The gateway has too many open connections; try again later."
_OVERLOADED_ANSWER = raw_error_response(
    503, _OVERLOADED_MESSAGE, "server_error", OVERLOADED, retry_after=1
)


def raise_descriptor_limit() -> int:
    """Raise the soft descriptor limit to the hard one (as Go programs do at start) and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_limit(requested: int, descriptors: int) -> int:
    """``--max-connections``, lowered so that the public connections served, the answer slots
    past them, a backend connection for each served one and the admin listener's connections fit
    in ``descriptors`` (at least 1)."""
    others = _RESERVED_DESCRIPTORS + ANSWER_SLOTS + ADMIN_MAX_CONNECTIONS + ADMIN_ANSWER_SLOTS
    room = (descriptors - others) // _DESCRIPTORS_PER_CONNECTION
    return max(1, min(requested, room))


_REJECT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.BadHttpMethod, "the method is not valid"),
    (http_exceptions.BadStatusLine, "the request line is malformed"),
    (http_exceptions.InvalidHeader, "a header is malformed"),
    (http_exceptions.InvalidURLError, "the URL is malformed"),
    (http_exceptions.PayloadEncodingError, "the body's encoding is malformed"),
)


def _rejected_because(error: BaseException | None) -> str:
    """Why aiohttp's parser refused a request, in words that repeat nothing the client sent."""
    for kind, reason in _REJECT_REASONS:
        if isinstance(error, kind):
            return reason
    return "it is malformed"


RequestHandlerFunction = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


class GuardedConnection(RequestHandler):
    """One connection: aiohttp's handler, plus the header timer and the connection count.

    Reads ``_messages``, ``_request_in_progress``, ``_force_close`` and ``_close`` of aiohttp's
    handler and wraps its ``_handle_request`` (the pinned version's): whether a request has been
    parsed, is being answered, or the connection is closing.

    The header timer starts when a connection opens and when the first byte of a later request
    arrives, pipelined ones included: bytes that arrive once the last request's body is whole
    belong to the next request, even while the last one is still being answered. The one read
    it cannot tell apart is a read that ends a body and begins the next request (the parser
    does not say where the body ended): that request is timed from its next read, or, if none
    comes, bounded by ``--keepalive-timeout`` once the answer before it ends.
    """

    def __init__(self, site: GuardedSite, *, past_limit: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._site = site
        self.past_limit = past_limit
        self._header_timeout = (
            min(site.header_timeout, PAST_LIMIT_HEADER_TIMEOUT)
            if past_limit
            else site.header_timeout
        )
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial_request = False
        # asyncio makes every connection of an accept burst before it opens the first, and one
        # may be closed to make room before it is opened
        self._opened = False
        self._shed_before_opening = False
        # the body of the request parsed last, while it is not whole: bytes that arrive are its
        # own (kept no longer: an unread body's buffer goes with it)
        self._last_body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._opened = True
        if self._shed_before_opening:
            self.force_close()
            return
        # the first request's headers are due from the opening: a connection that sends nothing
        # is as idle as one that sends half a line
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        self._site.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self._header_timer is None and self._next_request_begins():
            self._start_header_timer()
        if data and self._header_timer is not None:
            self._partial_request = True
        super().data_received(data)
        if self._messages:
            # a whole header block (or one the parser refused, answered by handle_error)
            self._stop_header_timer()
            self._last_body = self._messages[-1][1]
            self._site.busy(self)

    async def _handle_request(
        self,
        request: BaseRequest,
        start_time: float | None,
        request_handler: RequestHandlerFunction,
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._forget_whole_body()
            if self.waiting_for_request():
                self._site.waiting(self)

    def waiting_for_request(self) -> bool:
        """Open, no request being answered or parsed and queued: idle, or sending headers."""
        if not self._opened:
            return not self._shed_before_opening
        return (
            self.transport is not None
            and not (self._force_close or self._close)
            and not self._request_in_progress
            and not self._messages
        )

    def _next_request_begins(self) -> bool:
        """Whether bytes arriving now begin a request's headers: no request is queued and the
        body of the last one is whole."""
        if self._messages:
            return False
        self._forget_whole_body()
        return self._last_body is None

    def _forget_whole_body(self) -> None:
        if self._last_body is not None and self._last_body.is_eof():
            self._last_body = None

    def _start_header_timer(self) -> None:
        self._partial_request = False
        self._header_timer = self._loop.call_later(self._header_timeout, self._header_time_up)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._partial_request = False

    def _header_time_up(self) -> None:
        self._header_timer = None
        if self._messages or self.transport is None:
            return
        self._site.header_timeouts.note(self._partial_request)
        if self._request_in_progress:
            # a pipelined request's headers are late, behind an answer still being sent: that
            # answer ends, then the connection closes (aiohttp reads nothing more meanwhile)
            self.close()
            return
        if self._partial_request:
            self.transport.write(_HEADER_TIMEOUT_ANSWER)
        # what aiohttp itself does when the keep-alive timer finds the connection idle
        self.force_close()

    def shed(self) -> None:
        """Close to make room for a new connection: a request begun gets 503, an idle
        connection is closed as the keep-alive timeout would."""
        if not self._opened:
            self._shed_before_opening = True
            return
        if self._partial_request and self.transport is not None:
            self.transport.write(_OVERLOADED_ANSWER)
        self._stop_header_timer()
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or whose handler failed, in OpenAI's
        shape: one log line, no traceback for a client's mistake, no client address."""
        if request.writer.output_size > 0:
            # as aiohttp: the answer has begun, only closing is left
            raise ConnectionError("the response had begun when the request failed")
        response: web.Response
        if status == 500:
            log_failure("request failed in the gateway", exc)
            response = internal_error_response()
        elif status == 504:
            response = error_response(
                504, "The gateway timed out answering.", "server_error", "timeout"
            )
        else:
            reason = _rejected_because(exc)
            held_back = self._site.rejects.due()
            if held_back is not None:
                log.warning(
                    "request rejected before routing",
                    extra={
                        "listener": self._site.listener,
                        "status": status,
                        "reason": reason,
                        "errorType": type(exc).__name__,
                        "heldBack": held_back,
                    },
                )
            response = error_response(
                status,
                f"The request is not valid HTTP/1.1: {reason}.",
                "invalid_request_error",
                BAD_HTTP,
            )
        response.headers["Server"] = SERVER_HEADER
        response.force_close()
        return response


class _Refused(asyncio.Protocol):
    """A connection past the answer slots while no open connection waits for a request (every
    one is being answered): closed at once, nothing read, nothing written (a client that had
    sent its request sees a reset)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _TimeoutCount:
    """Header timeouts, logged at most once per interval with how many there were."""

    def __init__(self, listener: str) -> None:
        self._listener = listener
        self._limit = RepeatLimit()
        self._answered = 0
        self._silent = 0

    def note(self, answered: bool) -> None:
        if answered:
            self._answered += 1
        else:
            self._silent += 1
        if self._limit.due() is not None:
            log.info(
                "connections closed at the header timeout",
                extra={
                    "listener": self._listener,
                    "with408": self._answered,
                    "withoutRequest": self._silent,
                },
            )
            self._answered = self._silent = 0


class GuardedSite(web.BaseSite):
    """A listener: aiohttp's TCP site with each connection guarded and counted.

    Past ``max_connections`` a connection gets one answer (``shed_past_connection_limit``); past
    ``answer_slots`` more, the connection that has waited longest for a request's headers is
    closed to make room, so that a flood of connections that send nothing (or half a request)
    cannot keep a probe from its answer; only when every connection is busy with a request is a
    new one closed at once.
    """

    __slots__ = (
        "_answer_slots",
        "_closed_waiting_since_line",
        "_host",
        "_keepalive_timeout",
        "_open",
        "_port",
        "_refused_since_line",
        "_shed",
        "_shed_since_line",
        "_waiting",
        "header_timeout",
        "header_timeouts",
        "listener",
        "max_connections",
        "rejects",
    )

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        listener: str,
        header_timeout: float,
        keepalive_timeout: float,
        max_connections: int,
        answer_slots: int,
        backlog: int,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self.listener = listener
        self.header_timeout = header_timeout
        self._keepalive_timeout = keepalive_timeout
        self.max_connections = max_connections
        self._answer_slots = answer_slots
        self._open: weakref.WeakSet[GuardedConnection] = weakref.WeakSet()
        # connections waiting for a request's headers, the longest-waiting first
        self._waiting: OrderedDict[GuardedConnection, None] = OrderedDict()
        self.rejects = RepeatLimit()
        self.header_timeouts = _TimeoutCount(listener)
        self._shed = RepeatLimit()
        self._shed_since_line = 0
        self._closed_waiting_since_line = 0
        self._refused_since_line = 0

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._connection, self._host, self._port, reuse_address=True, backlog=self._backlog
        )

    def _connection(self) -> asyncio.Protocol:
        # counted here, not in connection_made: asyncio makes every protocol of an accept burst
        # before it calls the first connection_made
        full = len(self._open) >= self.max_connections + self._answer_slots
        if full and not self._close_longest_waiting():
            self._note_shed(refused=True)
            return _Refused()
        past_limit = len(self._open) >= self.max_connections
        if past_limit:
            self._note_shed(refused=False)
        server = self._runner.server
        assert server is not None
        connection = GuardedConnection(
            self,
            past_limit=past_limit,
            manager=server,
            loop=asyncio.get_running_loop(),
            keepalive_timeout=self._keepalive_timeout,
            access_log=None,
        )
        self._open.add(connection)
        self._waiting[connection] = None
        return connection

    def _close_longest_waiting(self) -> bool:
        """Close the connection that has waited longest for a request; False when none waits."""
        while self._waiting:
            connection, _ = self._waiting.popitem(last=False)
            if connection.waiting_for_request():
                connection.shed()
                # its descriptor is released as the loop closes the transport, right after
                self._open.discard(connection)
                self._closed_waiting_since_line += 1
                return True
        return False

    def waiting(self, connection: GuardedConnection) -> None:
        self._waiting[connection] = None
        self._waiting.move_to_end(connection)

    def busy(self, connection: GuardedConnection) -> None:
        self._waiting.pop(connection, None)

    def closed(self, connection: GuardedConnection) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)

    def _note_shed(self, *, refused: bool) -> None:
        if refused:
            self._refused_since_line += 1
        else:
            self._shed_since_line += 1
        if self._shed.due() is not None:
            log.warning(
                "connection limit reached",
                extra={
                    "listener": self.listener,
                    "maxConnections": self.max_connections,
                    "answeredOnce": self._shed_since_line,
                    "closedWaiting": self._closed_waiting_since_line,
                    "closedAtOnce": self._refused_since_line,
                },
            )
            self._shed_since_line = self._closed_waiting_since_line = 0
            self._refused_since_line = 0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def shed_past_connection_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a connection past the limit: a probe is answered, anything else gets 503; then close."""
    connection = request.protocol
    if not (isinstance(connection, GuardedConnection) and connection.past_limit):
        return await handler(request)
    if request.path in PROBE_PATHS:
        response = await handler(request)
    else:
        response = error_response(
            503, _OVERLOADED_MESSAGE, "server_error", OVERLOADED, retry_after=1
        )
    response.force_close()
    return response
