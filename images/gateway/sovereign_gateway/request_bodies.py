"""A request's body as it arrives: read piece by piece within a size and a time limit, each piece
charged to the replica's budget of kept bodies the moment it arrives.

A body is charged by what has arrived, never by what its headers declare: a body sent slowly (or
never), chunked or with a ``Content-Length``, costs the budget exactly the bytes the gateway has
taken in, and a declared length that never comes blocks no one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import StreamReader


class BodyTooLarge(Exception):
    """The body is longer than ``--max-body-bytes`` (declared so, or found so while reading)."""


class HeldBytesFull(Exception):
    """The body's next piece would take the replica past ``--max-held-bytes``."""


class BodyTimeout(Exception):
    """The whole body did not arrive within ``--body-timeout``."""


class BodyCharge:
    """What one request's body has taken of the budget; given back when its request ends."""

    def __init__(self, budget: HeldBytes) -> None:
        self._budget = budget
        self.taken = 0

    def take(self, count: int) -> None:
        """Charge ``count`` more bytes, or raise ``HeldBytesFull`` and charge nothing."""
        if self._budget.held + count > self._budget.limit:
            raise HeldBytesFull
        self._budget.held += count
        self.taken += count


class HeldBytes:
    """The bytes of request bodies this replica keeps at once (arriving, held for a cold model,
    or being forwarded), against one limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    @contextmanager
    def charge(self) -> Iterator[BodyCharge]:
        """A request's charge, given back whichever way the request ends (answered, refused,
        failed, or cancelled because its client left)."""
        charge = BodyCharge(self)
        try:
            yield charge
        finally:
            self.held -= charge.taken


async def receive_body(
    content: StreamReader,
    declared_length: int | None,
    charge: BodyCharge,
    *,
    max_bytes: int,
    timeout: float,
) -> bytes:
    """The whole body, read as it arrives, every piece charged before it is kept.

    Raises ``BodyTooLarge``, ``HeldBytesFull`` or ``BodyTimeout``; a client that leaves mid-body
    raises a ``ConnectionError``, a body that does not decode (its ``Content-Encoding``) aiohttp's
    ``RequestPayloadError``. A chunked framing that breaks mid-body never reaches here (aiohttp's
    parser stops at it): the body stops arriving and ends in ``BodyTimeout``.
    """
    if declared_length is not None and declared_length > max_bytes:
        raise BodyTooLarge
    body = bytearray()
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            while piece := await content.readany():
                if len(body) + len(piece) > max_bytes:
                    raise BodyTooLarge
                charge.take(len(piece))
                body += piece
    except TimeoutError:
        if scope.expired():
            raise BodyTimeout from None
        raise
    # one copy into an immutable body; no await between, so at most one such copy exists at a
    # time in the process (a transient of one body, at most --max-body-bytes)
    return bytes(body)
