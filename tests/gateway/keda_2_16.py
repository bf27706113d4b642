"""KEDA 2.16.1's scaling of one ScaledObject with one ``external-push`` trigger, played over real gRPC.

What it plays is read from KEDA's source at v2.16.1 (committed under ``tests/data/keda-2.16.1``, and
checked against it by ``test_keda_push_rule.py``):

- the push path (``startPushScalers``) takes one copy of the ScaledObject when it starts and calls
  ``RequestScale`` on that copy for every value the ``StreamIsActive`` stream sends; it never reads
  the object again, so the copy's ``LastActiveTime`` moves only when the push path itself writes it;
- the polling loop (``checkScalers``, every ``pollingInterval``) reads the stored object afresh,
  asks ``IsActive`` and calls ``RequestScale`` with that;
- ``RequestScale`` with ``minReplicaCount`` 0 (no idle, paused or fallback replicas): active with
  0 replicas scales to 1, active otherwise refreshes ``LastActiveTime`` (on the copy it was given
  and in the stored object); inactive with replicas scales to 0 once ``LastActiveTime`` plus
  ``cooldownPeriod`` lies in the past (or at once when no active time was ever recorded).

The HPA's scaling between 1 and the maximum is not played: it never takes a Deployment to 0.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

from sovereign_gateway.proto import externalscaler_pb2 as scaler_pb
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc


@dataclass(frozen=True)
class ScaledObjectCopy:
    """The part of a ScaledObject that the scale-in decision reads."""

    last_active_time: float | None = None


@dataclass
class Keda216:
    """One ScaledObject's replica count as KEDA 2.16.1 would set it."""

    stub: scaler_grpc.ExternalScalerStub
    ref: scaler_pb.ScaledObjectRef
    cooldown_seconds: float
    polling_interval: float
    replicas: int = 0
    stored: ScaledObjectCopy = field(default_factory=ScaledObjectCopy)
    pushed: list[bool] = field(default_factory=list)
    scalings: list[tuple[float, int, str]] = field(default_factory=list)  # (when, to, which path)

    def request_scale(self, copy: ScaledObjectCopy, is_active: bool, path: str) -> ScaledObjectCopy:
        """``RequestScale``; returns the copy as the call left it."""
        now = time.monotonic()
        if is_active:
            if self.replicas == 0:
                self._scale(1, path)
            # updateLastActiveTime patches the object it was handed, and the API server's
            copy = replace(copy, last_active_time=now)
            self.stored = replace(self.stored, last_active_time=now)
        elif self.replicas > 0 and (
            copy.last_active_time is None or copy.last_active_time + self.cooldown_seconds < now
        ):
            self._scale(0, path)
        return copy

    def _scale(self, replicas: int, path: str) -> None:
        self.replicas = replicas
        self.scalings.append((time.monotonic(), replicas, path))

    async def push_path(self) -> None:
        """``startPushScalers``: one copy, taken once, for every pushed value."""
        copy = replace(self.stored)
        async for message in self.stub.StreamIsActive(self.ref):
            self.pushed.append(message.result)
            copy = self.request_scale(copy, message.result, "push")

    async def polling_loop(self) -> None:
        """``startScaleLoop`` / ``checkScalers``: the stored object, read afresh each time."""
        while True:
            fresh = replace(self.stored)
            active = (await self.stub.IsActive(self.ref)).result
            self.request_scale(fresh, active, "poll")
            await asyncio.sleep(self.polling_interval)
