"""KEDA's external-push scaler over gRPC: IsActive, StreamIsActive, GetMetricSpec, GetMetrics.

A ScaledObject names its model in the trigger metadata key ``model``. The metric is the model's
pending plus in-flight requests summed over every live gateway replica; its per-replica target is
the model's ``targetConcurrency``; the model is active while that sum is above zero. The push
stream carries only "active" (see ``StreamIsActive``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import grpc

from sovereign_gateway.counts import Counts
from sovereign_gateway.proto import externalscaler_pb2 as pb
from sovereign_gateway.proto import externalscaler_pb2_grpc as pb_grpc
from sovereign_gateway.routes import ModelRoute, RouteTable
from sovereign_gateway.trigger import METADATA_MODEL_KEY

METRIC_NAME = "gateway-requests"
"""The metric's name as GetMetricSpec gives it (KEDA prefixes it with the trigger index)."""

_Context = grpc.aio.ServicerContext

log = logging.getLogger(__name__)


class StreamSlots:
    """Bounds one kind of long-lived stream on the scaler listener: KEDA's or the peers'.

    Each open stream is a coroutine woken by count changes; past the bound a new stream is
    refused with RESOURCE_EXHAUSTED (KEDA and the peers retry it) instead of taxing every
    request. Each kind has its own slots, so a caller of one kind never locks the other out.
    """

    def __init__(self, limit: int, flag: str) -> None:
        self.limit = limit
        self.flag = flag
        self.open = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[bool]:
        """Yields whether a slot was free; the slot is given back when the block ends."""
        if self.open >= self.limit:
            yield False
            return
        self.open += 1
        try:
            yield True
        finally:
            self.open -= 1

    async def refuse(self, context: _Context[object, object], what: str) -> None:
        log.warning(
            "scaler stream refused: too many open",
            extra={"stream": what, "limit": self.limit, "flag": self.flag, "peer": context.peer()},
        )
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{self.limit} {what} streams are open on this scaler listener ({self.flag}); "
            "try again later",
        )


class ExternalScaler(pb_grpc.ExternalScalerServicer):
    """Answers KEDA for the models of the current route table."""

    def __init__(
        self, counts: Counts, routes: Callable[[], RouteTable], streams: StreamSlots
    ) -> None:
        self._counts = counts
        self._routes = routes
        self._streams = streams

    async def _route(
        self, ref: pb.ScaledObjectRef, context: _Context[object, object]
    ) -> ModelRoute:
        name = ref.scalerMetadata.get(METADATA_MODEL_KEY, "")
        if not name:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"ScaledObject {ref.namespace}/{ref.name}: expected the trigger metadata key "
                f"'{METADATA_MODEL_KEY}' naming a model of the route table",
            )
        route = self._routes().model(name)
        if route is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"ScaledObject {ref.namespace}/{ref.name}: model {name!r} is not in the route table",
            )
        assert route is not None  # abort raises
        return route

    def _active(self, model: str) -> bool:
        return self._counts.total_model(model).total > 0

    async def IsActive(  # noqa: N802  (gRPC method name)
        self, request: pb.ScaledObjectRef, context: _Context[object, object]
    ) -> pb.IsActiveResponse:
        route = await self._route(request, context)
        return pb.IsActiveResponse(result=self._active(route.name))

    async def StreamIsActive(  # noqa: N802  (gRPC method name)
        self, request: pb.ScaledObjectRef, context: _Context[object, object]
    ) -> AsyncIterator[pb.IsActiveResponse]:
        """Pushes "active" at once if the model is, then each time it becomes active again.

        Never "inactive": KEDA 2.16 acts on a pushed value with the ScaledObject copy its push
        path was started with, whose last-active time only its own pushes refresh, so a pushed
        "inactive" after a busy period longer than ``cooldownPeriod`` scales every replica to
        zero at once (fixed in KEDA 2.18). Scale-in is left to the polled ``IsActive``, whose
        loop re-reads the ScaledObject and honours the cooldown.
        """
        route = await self._route(request, context)
        with self._streams.take() as admitted:
            if not admitted:
                await self._streams.refuse(context, "StreamIsActive")
            # the stream is open from here on: a caller can tell that before any push comes
            await context.send_initial_metadata(())
            signal = self._counts.model_signal(route.name)
            was_active = False
            while True:
                changed = signal.current()
                active = self._active(route.name)
                if active and not was_active:
                    yield pb.IsActiveResponse(result=True)
                was_active = active
                await changed.wait()

    async def GetMetricSpec(  # noqa: N802  (gRPC method name)
        self, request: pb.ScaledObjectRef, context: _Context[object, object]
    ) -> pb.GetMetricSpecResponse:
        route = await self._route(request, context)
        return pb.GetMetricSpecResponse(
            metricSpecs=[
                pb.MetricSpec(
                    metricName=METRIC_NAME,
                    targetSize=route.target_concurrency,
                    targetSizeFloat=float(route.target_concurrency),
                )
            ]
        )

    async def GetMetrics(  # noqa: N802  (gRPC method name)
        self, request: pb.GetMetricsRequest, context: _Context[object, object]
    ) -> pb.GetMetricsResponse:
        route = await self._route(request.scaledObjectRef, context)
        value = self._counts.total_model(route.name).total
        return pb.GetMetricsResponse(
            metricValues=[
                pb.MetricValue(
                    metricName=request.metricName or METRIC_NAME,
                    metricValue=value,
                    metricValueFloat=float(value),
                )
            ]
        )


def add_scaler(server: grpc.aio.Server, scaler: ExternalScaler) -> None:
    """Register the scaler on ``server`` (the generated registration function is untyped)."""
    pb_grpc.add_ExternalScalerServicer_to_server(scaler, server)  # type: ignore[no-untyped-call]
