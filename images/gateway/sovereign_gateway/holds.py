"""Holds: a request for a model without a ready replica waits here until one is ready, its cold
start times out, or its model leaves the route table."""

from __future__ import annotations

import time

from aiohttp import web

from sovereign_gateway.errors import echoed
from sovereign_gateway.readiness import ModelReadiness, RouteRemoved
from sovereign_gateway.request_records import RequestRecord, answer_error
from sovereign_gateway.serving_state import ServingState


async def wait_for_replica(
    state: ServingState, record: RequestRecord
) -> ModelReadiness | web.Response:
    """The model's readiness once a replica is ready, or the answer to send instead.

    A held request follows the route table that replaces its own: it waits on the model's
    route in the current table (its new upstream and timeouts), and gets 404 at once when
    the model has left the table.
    """
    while True:
        readiness = state.models.get(record.model)
        if readiness is None:
            return model_not_found(record)
        if readiness.ready:
            return readiness
        record.cold_start = True
        try:
            await readiness.wait_ready(record.arrived + readiness.route.cold_start_timeout_seconds)
        except TimeoutError:
            return cold_timeout(record, readiness)
        except RouteRemoved:
            continue
        record.cold_wait = time.monotonic() - record.arrived
        return readiness


def model_not_found(record: RequestRecord) -> web.Response:
    return answer_error(
        record,
        404,
        f"The model `{echoed(record.model)}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        param="model",
    )


def cold_timeout(record: RequestRecord, readiness: ModelReadiness) -> web.Response:
    return answer_error(
        record,
        503,
        f"The model `{readiness.name}` is starting and was not ready within "
        f"{readiness.route.cold_start_timeout_seconds:g} seconds; try again later.",
        "server_error",
        "model_cold_start_timeout",
        retry_after=readiness.cold_retry_after(),
    )
