"""Scale-in on KEDA 2.16.1 honours ``cooldownPeriod`` after a busy period longer than the cooldown.

KEDA 2.16.1's push path acts on a stale copy of the ScaledObject (``keda_2_16.py`` plays it, read
from the committed source). A gateway that pushed "inactive" when its count reached 0 had every
replica removed at that moment once the model had been busy longer than the cooldown; the gateway
pushes only "active", and the polled ``IsActive`` with the cooldown takes the model to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import aiohttp
import grpc
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc

from tests.gateway.client import StreamReply, chat, post_stream
from tests.gateway.conftest import Processes, route, scaled_object
from tests.gateway.keda_2_16 import Keda216

KEDA_SOURCE = Path(__file__).resolve().parents[1] / "data" / "keda-2.16.1"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
COOLDOWN = 1.0
POLL = 0.1


def _go_function(file: str, signature: str) -> str:
    """The body of the Go function whose declaration starts with ``signature``."""
    text = (KEDA_SOURCE / file).read_text()
    start = text.index(signature)
    end = text.find("\n}\n", start)
    return text[start:end]


def _compact(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_the_played_rule_is_the_one_in_keda_2_16_1s_source() -> None:
    handler = "scale_handler.go"
    start = _compact(_go_function(handler, "func (h *scaleHandler) HandleScalableObject"))
    assert "go h.startPushScalers(ctx, withTriggers, obj.DeepCopy(), scalingMutex)" in start
    push = _compact(_go_function(handler, "func (h *scaleHandler) startPushScalers"))
    # every pushed value goes to RequestScale with the copy the push path started with
    assert "case active := <-activeCh:" in push
    assert "h.scaleExecutor.RequestScale(ctx, obj, active, false," in push
    assert "client.Get" not in push
    poll = _compact(_go_function(handler, "func (h *scaleHandler) checkScalers"))
    get = poll.index("h.client.Get(ctx, types.NamespacedName{Name: obj.Name")
    assert get < poll.index("h.scaleExecutor.RequestScale(ctx, obj, isActive, isError,")

    executor = "scale_scaledobjects.go"
    request = _compact(_go_function(executor, "func (e *scaleExecutor) RequestScale"))
    assert "currentReplicas == 0: // triggers are active" in request
    assert "e.scaleFromZeroOrIdle(ctx, logger, scaledObject, currentScale" in request
    assert "err := e.updateLastActiveTime(ctx, logger, scaledObject)" in request
    assert "currentReplicas > 0 && minReplicas == 0:" in request
    assert "e.scaleToZeroOrIdle(ctx, logger, scaledObject, currentScale)" in request
    to_zero = _compact(_go_function(executor, "func (e *scaleExecutor) scaleToZeroOrIdle"))
    assert "scaledObject.Status.LastActiveTime.Add(cooldownPeriod).Before(time.Now())" in to_zero
    from_zero = _compact(_go_function(executor, "func (e *scaleExecutor) scaleFromZeroOrIdle"))
    assert "e.updateLastActiveTime(ctx, logger, scaledObject)" in from_zero

    scaler = "external_scaler.go"
    stream = _compact(_go_function(scaler, "func handleIsActiveStream"))
    assert "active <- resp.Result" in stream  # every message, "inactive" included
    activity = _compact(_go_function(scaler, "func (s *externalScaler) GetMetricsAndActivity"))
    assert "grpcClient.IsActive(ctx, &s.scaledObjectRef)" in activity


def test_a_busy_period_longer_than_the_cooldown_still_gets_the_cooldown(
    processes: Processes,
) -> None:
    backend = processes.backend()
    gateway = processes.gateway({"models": [route(MODEL, backend.url)]})
    url = gateway.url + "/v1/chat/completions"
    busy = chat(MODEL, stream=True, fake={"chunks": 10, "interval": 0.25})  # 2.5 s > COOLDOWN
    short = chat(MODEL, stream=True, fake={"chunks": 5, "interval": 0.1})

    async def scenario() -> tuple[Keda216, StreamReply, float, float, StreamReply]:
        async with (
            grpc.aio.insecure_channel(gateway.scaler_address) as channel,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            keda = Keda216(stub, scaled_object(MODEL), COOLDOWN, POLL)
            tasks = [
                asyncio.create_task(keda.push_path()),
                asyncio.create_task(keda.polling_loop()),
            ]
            try:
                await asyncio.sleep(0.3)
                reply = await post_stream(session, url, busy)
                ended = time.monotonic()
                deadline = ended + 10
                while keda.replicas and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                at_zero = time.monotonic()
                assert keda.replicas == 0, "never scaled in"
                again = await post_stream(session, url, short)
                return keda, reply, ended, at_zero, again
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    keda, reply, ended, at_zero, again = asyncio.run(scenario())
    assert reply.status == 200
    assert reply.data[-1] == "[DONE]"
    assert again.status == 200
    assert [to for _, to, _ in keda.scalings] == [1, 0, 1]
    # the last poll that saw the request may precede its end by one polling interval
    print(
        f"scaled to 0 {at_zero - ended:.3f} s after the busy period ended (cooldown {COOLDOWN} s)"
    )
    assert at_zero - ended >= COOLDOWN - POLL
    assert keda.scalings[1][2] == "poll"
    # "inactive" is never pushed; becoming active again is
    assert keda.pushed == [True, True]
