"""The scaler listener sends GOAWAY past ``--scaler-max-connection-age`` and ends the calls still
open after the grace: KEDA's connection to one gateway replica is renewed, never held forever."""

from __future__ import annotations

import asyncio
import time

import grpc
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc

from tests.gateway.conftest import Processes, route, scaled_object

MODEL = "m"
AGE = 1.0
GRACE = 0.5


def test_a_scaler_connection_gets_goaway_at_its_max_age_and_open_calls_end_after_the_grace(
    processes: Processes,
) -> None:
    gateway = processes.gateway(
        {"models": [route(MODEL, "http://127.0.0.1:9")]},
        "--scaler-max-connection-age",
        str(AGE),
        "--scaler-max-connection-age-grace",
        str(GRACE),
    )

    async def scenario() -> tuple[float, float, grpc.ChannelConnectivity, grpc.StatusCode]:
        async with grpc.aio.insecure_channel(gateway.scaler_address) as channel:
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            await stub.IsActive(scaled_object(MODEL))
            opened = time.monotonic()
            stream = stub.StreamIsActive(scaled_object(MODEL))
            await stream.initial_metadata()
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            # GOAWAY takes the connection out of use: the channel leaves READY
            await asyncio.wait_for(
                channel.wait_for_state_change(grpc.ChannelConnectivity.READY), 10
            )
            goaway = time.monotonic() - opened
            state = channel.get_state()
            try:
                await asyncio.wait_for(stream.read(), 10)
            except grpc.aio.AioRpcError as error:
                code = error.code()
            else:
                code = grpc.StatusCode.OK
            return goaway, time.monotonic() - opened, state, code

    goaway, ended, state, code = asyncio.run(scenario())
    print(f"GOAWAY after {goaway:.2f} s, open stream ended after {ended:.2f} s")
    assert state != grpc.ChannelConnectivity.READY
    # gRPC spreads the age by up to 10% either way
    assert goaway >= AGE * 0.9 - 0.1
    assert code == grpc.StatusCode.UNAVAILABLE
    assert ended - goaway >= GRACE * 0.5
