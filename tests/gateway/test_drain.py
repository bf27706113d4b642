"""SIGTERM drains for ``--drain-seconds``, not longer, and a stream cut at the end is told why.

A real gateway process with two streams open when SIGTERM arrives: one ends within the drain and
completes normally, one outlasts it and gets an SSE error event (code ``gateway_shutdown``) before
its connection closes. The process exits within the drain plus a small bound.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp

from tests.gateway.client import StreamReply, chat, post_stream
from tests.gateway.conftest import Processes, route
from tests.loopback import accepts_connections

MODEL = "m"
DRAIN = 3.0
# stopping the listeners, the gRPC server and the process itself after the drain: generous on a
# shared machine, yet short of the doubled drain this test exists to catch
EXIT_BOUND = DRAIN * 0.9


def test_sigterm_drains_for_drain_seconds_and_a_cut_stream_gets_an_error_event(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway(
        {"models": [route(MODEL, backend.url)]}, "--drain-seconds", str(DRAIN)
    )
    url = gateway.url + "/v1/chat/completions"
    short = chat(MODEL, stream=True, fake={"chunks": 10, "interval": 0.1})  # about 1 s
    long = chat(MODEL, stream=True, fake={"chunks": 200, "interval": 0.1})  # about 20 s

    async def scenario() -> tuple[StreamReply, StreamReply, float, float, bool]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            # warm the model first, so both streams are under way when SIGTERM comes
            await post_stream(session, url, chat(MODEL, stream=True))
            long_reply = asyncio.create_task(post_stream(session, url, long))
            await asyncio.sleep(0.3)
            short_reply = asyncio.create_task(post_stream(session, url, short))
            await asyncio.sleep(0.2)
            gateway.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.3)
            refused = not accepts_connections(gateway.port)
            replies = await asyncio.gather(short_reply, long_reply)
            await asyncio.to_thread(gateway.process.wait, 30)
            exited = time.monotonic()
            return replies[0], replies[1], signalled, exited, refused

    short_reply, long_reply, signalled, exited, refused = asyncio.run(scenario())
    print(f"drain took {exited - signalled:.2f} s with --drain-seconds {DRAIN}")
    assert gateway.process.returncode == 0
    assert refused, "the public listener still accepted connections while draining"
    # the short stream finished inside the drain, as if nothing happened
    assert short_reply.data[-1] == "[DONE]"
    # the long one kept streaming through the drain, then was cut with an error event
    assert any(signalled + 1.0 < arrival < signalled + DRAIN for arrival, _ in long_reply.events)
    last = long_reply.data[-1]
    assert isinstance(last, dict)
    assert last["error"]["code"] == "gateway_shutdown"
    assert exited - signalled >= DRAIN
    assert exited - signalled <= DRAIN + EXIT_BOUND
