"""The whole scale-to-zero loop for real: a harness plays KEDA and the kubelet over real gRPC.

KEDA's side: an open StreamIsActive stream (the external-push trigger) and GetMetrics polls with
the HPA's rule, desired replicas = ceil(metric / target). The kubelet's side: it starts fake
replica processes (after a start delay, like a pod loading its model) sharing one port as a
Service would, and stops them all when the model has been inactive for the cooldown period.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field

import aiohttp
import grpc
from sovereign_gateway.proto import externalscaler_pb2 as scaler_pb
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc

from tests.gateway.client import Reply, StreamReply, chat, post, post_stream
from tests.gateway.conftest import Backend, Gateway, Processes, route, scaled_object
from tests.loopback import free_port

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TARGET = 2
MAX_REPLICAS = 2
COOLDOWN = 1.0
POLL = 0.1


@dataclass
class Harness:
    gateway: Gateway
    processes: Processes
    port: int
    replicas: list[Backend] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    peak: int = 0
    active: bool = False
    inactive_since: float | None = None

    def log(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    async def scale_to(self, count: int) -> None:
        while len(self.replicas) < count:
            self.replicas.append(
                self.processes.backend(self.port, start_delay=0.3, reuse_port=True, wait=False)
            )
            self.log(f"start replica {len(self.replicas)}")
        while len(self.replicas) > count:
            replica = self.replicas.pop()
            await asyncio.to_thread(replica.stop)
            self.log(f"stop replica {len(self.replicas) + 1}")
        self.peak = max(self.peak, len(self.replicas))

    async def watch_active(self, stub: scaler_grpc.ExternalScalerStub) -> None:
        """KEDA's push path: scale from zero the moment the scaler says active."""
        async for message in stub.StreamIsActive(scaled_object(MODEL)):
            self.active = message.result
            self.log(f"pushed active={message.result}")
            if message.result:
                self.inactive_since = None
                if not self.replicas:
                    await self.scale_to(1)
            elif self.inactive_since is None:
                self.inactive_since = time.monotonic()

    async def poll_metrics(self, stub: scaler_grpc.ExternalScalerStub) -> None:
        """The HPA's path: scale on the metric; KEDA's cooldown takes it back to zero."""
        spec = await stub.GetMetricSpec(scaled_object(MODEL))
        target = spec.metricSpecs[0].targetSize
        assert target == TARGET
        request = scaler_pb.GetMetricsRequest(
            scaledObjectRef=scaled_object(MODEL), metricName=spec.metricSpecs[0].metricName
        )
        while True:
            value = (await stub.GetMetrics(request)).metricValues[0].metricValue
            if value and self.replicas:
                desired = min(MAX_REPLICAS, max(1, math.ceil(value / target)))
                if desired > len(self.replicas):
                    await self.scale_to(desired)
            still_active = (await stub.IsActive(scaled_object(MODEL))).result
            if not still_active and self.inactive_since is None:
                self.inactive_since = time.monotonic()
            if (
                self.replicas
                and not still_active
                and self.inactive_since is not None
                and time.monotonic() - self.inactive_since >= COOLDOWN
            ):
                await self.scale_to(0)
            await asyncio.sleep(POLL)


def test_cold_idle_cold_burst(processes: Processes) -> None:
    port = free_port()
    gateway = processes.gateway(
        {"models": [route(MODEL, f"http://127.0.0.1:{port}", targetConcurrency=TARGET)]},
        "--warm-probe-interval",
        "0.2",
    )
    harness = Harness(gateway, processes, port)
    url = gateway.url + "/v1/chat/completions"

    async def scenario() -> tuple[Reply, Reply, list[StreamReply]]:
        async with (
            grpc.aio.insecure_channel(gateway.scaler_address) as channel,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        ):
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            tasks = [
                asyncio.create_task(harness.watch_active(stub)),
                asyncio.create_task(harness.poll_metrics(stub)),
            ]
            try:
                await asyncio.sleep(0.3)
                first = await post(session, url, chat(MODEL))
                # idle: after the cooldown the harness removes the replica
                deadline = time.monotonic() + 10
                while harness.replicas and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert not harness.replicas
                await asyncio.sleep(0.5)  # the gateway's warm probe notices the replica is gone
                second = await post(session, url, chat(MODEL))
                burst = await asyncio.gather(
                    *(
                        post_stream(
                            session,
                            url,
                            chat(MODEL, stream=True, fake={"chunks": 10, "interval": 0.15}),
                        )
                        for _ in range(6)
                    )
                )
                return first, second, burst
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await harness.scale_to(0)

    first, second, burst = asyncio.run(scenario())
    assert first.status == 200
    assert second.status == 200
    assert [reply.status for reply in burst] == [200] * 6
    assert all(reply.data[-1] == "[DONE]" for reply in burst)
    # the burst of 6 over a target of 2 made the harness start a second replica
    assert harness.peak == 2
    whats = [what for _, what in harness.events]
    assert whats.count("start replica 1") == 2  # cold, then cold again after idle
    assert "start replica 2" in whats
    assert "stop replica 1" in whats
    records = gateway.records()
    assert [record["coldStart"] for record in records[:2]] == [True, True]
    usage = gateway.usage()
    row = next(item for item in usage["models"] if item["model"] == MODEL)
    assert row["coldStarts"] >= 2
    assert row["replicaSeconds"] > 0
    assert row["idleCostAvoided"] >= 0
