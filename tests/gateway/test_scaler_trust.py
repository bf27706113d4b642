"""Who may use the scaler listener, and what a peer may tell a replica, over real gRPC.

The certificates come from the same issuer the inference stack uses (``ScalerPki``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from sovereign_gateway.counts import Pair, PeerCounts
from sovereign_gateway.peers import SELF_TOKEN_HEADER, PeerBounds, counts_from_message
from sovereign_gateway.proto import externalscaler_pb2 as scaler_pb
from sovereign_gateway.proto import externalscaler_pb2_grpc as scaler_grpc
from sovereign_gateway.proto import peers_pb2 as peers_pb
from sovereign_gateway.proto import peers_pb2_grpc as peers_grpc
from sovereign_gateway.routes import parse_route_table
from sovereign_gateway.settings import SettingsError, parse_settings

from components.plan.kubernetes.gateway import scaler_server_names
from components.providers.scaler_pki import issue_scaler_certificates
from tests.gateway.client import chat, post
from tests.gateway.conftest import Gateway, Processes, route, scaled_object
from tests.loopback import free_port, wait_until

MODEL = "mistralai/Mistral-Small-24B-Instruct-2501"
# what KEDA dials (the Service) and the name the replicas know each other by, as the stack issues
KEDA_DIALS, PEER_NAME = scaler_server_names()
PEERS_SERVICE = "sovereign.gateway.peers.GatewayPeers"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    keda_cert: Path
    keda_key: Path

    def gateway_args(self) -> list[str]:
        return [
            "--scaler-tls-cert",
            str(self.server_cert),
            "--scaler-tls-key",
            str(self.server_key),
            "--scaler-tls-ca",
            str(self.ca),
            "--peer-tls-server-name",
            PEER_NAME,
        ]

    def credentials(self, *, client_cert: bool = True) -> grpc.ChannelCredentials:
        if not client_cert:
            return grpc.ssl_channel_credentials(root_certificates=self.ca.read_bytes())
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.keda_key.read_bytes(),
            certificate_chain=self.keda_cert.read_bytes(),
        )

    def replica_credentials(self) -> grpc.ChannelCredentials:
        """What a replica presents when it watches a peer: the replicas' own certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.server_key.read_bytes(),
            certificate_chain=self.server_cert.read_bytes(),
        )

    def server_credentials(self, *, as_keda: bool = False) -> grpc.ServerCredentials:
        """A listener presenting the replicas' certificate (or KEDA's), asking for a client's."""
        cert, key = (
            (self.keda_cert, self.keda_key) if as_keda else (self.server_cert, self.server_key)
        )
        return grpc.ssl_server_credentials(
            [(key.read_bytes(), cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )


def _write_pki(directory: Path) -> Pki:
    directory.mkdir()
    issued = issue_scaler_certificates(scaler_server_names())
    files = {
        "ca": issued.caCert,
        "server_cert": issued.serverCert,
        "server_key": issued.serverKey,
        "keda_cert": issued.kedaCert,
        "keda_key": issued.kedaKey,
    }
    for name, text in files.items():
        (directory / f"{name}.pem").write_text(text)
    return Pki(**{name: directory / f"{name}.pem" for name in files})


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return _write_pki(tmp_path / "pki")


@pytest.fixture
def stranger_pki(tmp_path: Path) -> Pki:
    """A set issued by another CA: what someone who did not get the stack's CA could make."""
    return _write_pki(tmp_path / "stranger")


def _secure_metric(address: str, credentials: grpc.ChannelCredentials) -> int:
    options = [("grpc.ssl_target_name_override", KEDA_DIALS)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
        request = scaler_pb.GetMetricsRequest(
            scaledObjectRef=scaled_object(MODEL), metricName="gateway-requests"
        )
        value: int = stub.GetMetrics(request, timeout=5).metricValues[0].metricValue
        return value


def _insecure_metric(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
        request = scaler_pb.GetMetricsRequest(
            scaledObjectRef=scaled_object(MODEL), metricName="gateway-requests"
        )
        value: int = stub.GetMetrics(request, timeout=5).metricValues[0].metricValue
        return value


async def _hold_one(gateway: Gateway) -> asyncio.Task[Any]:
    """A request for the cold model (nothing listens upstream): held, so counted as pending."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def request() -> Any:
        async with session:
            return await post(session, gateway.url + "/v1/chat/completions", chat(MODEL))

    return asyncio.create_task(request())


def test_scaler_callers_without_a_certificate_of_the_stack_ca_are_refused(
    processes: Processes, pki: Pki, stranger_pki: Pki
) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes, *pki.gateway_args())

    async def scenario() -> None:
        held = await _hold_one(gateway)
        try:
            keda = pki.credentials()
            assert await asyncio.to_thread(
                wait_until, lambda: _secure_metric(gateway.scaler_address, keda) == 1, 5.0
            )
            refused = {
                "plaintext": lambda: _insecure_metric(gateway.scaler_address),
                "TLS without a client certificate": lambda: _secure_metric(
                    gateway.scaler_address, pki.credentials(client_cert=False)
                ),
                "a client certificate of another CA": lambda: _secure_metric(
                    gateway.scaler_address,
                    grpc.ssl_channel_credentials(
                        root_certificates=pki.ca.read_bytes(),
                        private_key=stranger_pki.keda_key.read_bytes(),
                        certificate_chain=stranger_pki.keda_cert.read_bytes(),
                    ),
                ),
            }
            for what, call in refused.items():
                with pytest.raises(grpc.RpcError) as caught:
                    await asyncio.to_thread(call)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, what
        finally:
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)

    asyncio.run(scenario())


def test_two_replicas_share_counts_over_mutual_tls_and_each_finds_itself(
    processes: Processes, pki: Pki
) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    ports_a = (free_port(), free_port(), free_port())
    ports_b = (free_port(), free_port(), free_port())
    peers = f"127.0.0.1:{ports_a[1]},127.0.0.1:{ports_b[1]}"
    a = processes.gateway(routes, *pki.gateway_args(), "--peers", peers, name="a", ports=ports_a)
    b = processes.gateway(routes, *pki.gateway_args(), "--peers", peers, name="b", ports=ports_b)
    keda = pki.credentials()

    async def scenario() -> None:
        held = await _hold_one(a)
        try:
            assert await asyncio.to_thread(
                wait_until, lambda: _secure_metric(b.scaler_address, keda) == 1, 5.0
            )
        finally:
            held.cancel()
            await asyncio.gather(held, return_exceptions=True)

    asyncio.run(scenario())
    for gateway in (a, b):
        assert wait_until(
            lambda gateway=gateway: any(
                line["message"] == "peer address is this replica" for line in gateway.logs()
            ),
            3.0,
        )


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # a negative number as a proto encoder writes an int64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2]) + _varint(len(payload)) + payload


def forged_snapshot(replica_id: str, model: str, pending: int, *, tenant: str = "") -> bytes:
    """A CountsSnapshot as a forger's encoder writes it: ``pending`` may be negative; with
    ``tenant``, the same count for that tenant too."""
    counts = bytes([1 << 3]) + _varint(pending)
    entry = _field(1, model.encode()) + _field(2, counts)
    message = _field(1, replica_id.encode()) + _field(2, entry)
    if tenant:
        message += _field(3, _field(1, tenant.encode()) + _field(2, counts))
    return message


class FakePeer:
    """A peer listener (plaintext) that answers every watch with one forged snapshot."""

    def __init__(self, snapshot: Any, credentials: grpc.ServerCredentials | None = None) -> None:
        self.port = free_port()
        self.watchers: list[str] = []
        self._snapshot = snapshot
        self._stop = threading.Event()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            PEERS_SERVICE,
            {
                "WatchCounts": grpc.unary_stream_rpc_method_handler(
                    self._watch,
                    request_deserializer=peers_pb.WatchCountsRequest.FromString,
                    response_serializer=lambda raw: raw,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        if credentials is None:
            self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        else:
            self._server.add_secure_port(f"127.0.0.1:{self.port}", credentials)

    def _watch(self, request: peers_pb.WatchCountsRequest, context: Any) -> Iterator[bytes]:
        self.watchers.append(request.replicaId)
        snapshot = self._snapshot
        yield snapshot(request.replicaId) if callable(snapshot) else snapshot
        while context.is_active() and not self._stop.wait(0.05):
            pass

    def __enter__(self) -> FakePeer:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._server.stop(0)


# maxPendingRequests + maxReplicas x targetConcurrency = 10 + 2 x 4
BOUNDED = {"maxPendingRequests": 10, "maxReplicas": 2, "targetConcurrency": 4}
MODEL_BOUND = 18
TENANT = "team-a"


@pytest.mark.parametrize(
    ("case", "snapshot"),
    [
        ("huge", lambda _id: forged_snapshot("forger", MODEL, 2**31)),
        ("negative", lambda _id: forged_snapshot("forger", MODEL, -1)),
        # the forger echoes the id the gateway sent with its watch
        ("own id", lambda replica_id: forged_snapshot(replica_id, MODEL, 1)),
        # under --max-peer-count, over what one replica can hold by the route table
        ("over the model's bound", lambda _id: forged_snapshot("forger", MODEL, MODEL_BOUND + 1)),
        ("over the tenant's limit", lambda _id: forged_snapshot("forger", MODEL, 3, tenant=TENANT)),
    ],
)
def test_forged_peer_counts_are_refused(processes: Processes, case: str, snapshot: Any) -> None:
    decoded = peers_pb.CountsSnapshot.FromString(snapshot("x"))
    if case == "negative":
        assert decoded.models[MODEL].pending == 2**32 - 1  # how -1 arrives in a uint32 field
    with FakePeer(snapshot) as fake:
        routes = {
            "models": [route(MODEL, f"http://127.0.0.1:{free_port()}", **BOUNDED)],
            "tenants": [{"name": TENANT, "maxConcurrentRequests": 3 - 1}],
        }
        gateway = processes.gateway(routes, "--peers", f"127.0.0.1:{fake.port}")
        assert wait_until(
            lambda: any(line["message"] == "peer counts refused" for line in gateway.logs()), 5.0
        ), gateway.log_file.read_text()
        # the forger is watched again (and refused again), never taken for this replica itself
        assert wait_until(lambda: len(fake.watchers) >= 2, 5.0)
        assert not any(line["message"] == "peer address is this replica" for line in gateway.logs())
        with grpc.insecure_channel(gateway.scaler_address) as channel:
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            metric = stub.GetMetrics(
                scaler_pb.GetMetricsRequest(
                    scaledObjectRef=scaled_object(MODEL), metricName="gateway-requests"
                ),
                timeout=5,
            )
            assert metric.metricValues[0].metricValue == 0
            assert stub.IsActive(scaled_object(MODEL), timeout=5).result is False


def test_a_caller_claiming_the_replicas_own_id_is_refused(processes: Processes) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes)
    (started,) = [line for line in gateway.logs() if line["message"] == "gateway started"]
    own_id = started["replicaId"]
    with grpc.insecure_channel(gateway.scaler_address) as channel:
        stub = peers_grpc.GatewayPeersStub(channel)  # type: ignore[no-untyped-call]
        for metadata in ((), ((SELF_TOKEN_HEADER, "0" * 32),)):
            call = stub.WatchCounts(
                peers_pb.WatchCountsRequest(replicaId=own_id), metadata=metadata, timeout=5
            )
            with pytest.raises(grpc.RpcError) as caught:
                next(iter(call))
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # any other id is a peer and gets the counts
        call = stub.WatchCounts(peers_pb.WatchCountsRequest(replicaId="another"), timeout=5)
        first = next(iter(call))
        assert first.replicaId == own_id
        call.cancel()


def test_open_scaler_streams_are_capped(processes: Processes) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes, "--max-scaler-streams", "3", "--max-peer-streams", "1")

    async def scenario() -> None:
        async with grpc.aio.insecure_channel(gateway.scaler_address) as channel:
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            streams = [stub.StreamIsActive(scaled_object(MODEL)) for _ in range(3)]
            for stream in streams:
                await asyncio.wait_for(stream.initial_metadata(), 5)
            refused = stub.StreamIsActive(scaled_object(MODEL))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(refused.read(), 5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # peers' watches have their own slots: KEDA's streams do not lock them out
            peers = peers_grpc.GatewayPeersStub(channel)  # type: ignore[no-untyped-call]
            watch = peers.WatchCounts(peers_pb.WatchCountsRequest(replicaId="another"))
            assert (await asyncio.wait_for(watch.read(), 5)).replicaId
            second = peers.WatchCounts(peers_pb.WatchCountsRequest(replicaId="a third"))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(second.read(), 5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            watch.cancel()
            # a stream that ends gives its slot back: a new one stays open (no status comes)
            streams[0].cancel()
            deadline = time.monotonic() + 5
            while True:
                again = stub.StreamIsActive(scaled_object(MODEL))
                try:
                    code = await asyncio.wait_for(again.code(), 1.0)
                except TimeoutError:
                    break
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline, "the slot was not given back"
            for stream in streams[1:]:
                stream.cancel()

    asyncio.run(scenario())
    assert any(line["message"] == "scaler stream refused: too many open" for line in gateway.logs())


def test_scaler_tls_flags_come_all_three_or_none() -> None:
    with pytest.raises(SettingsError, match="--scaler-tls-ca"):
        parse_settings(
            ["--routes", "r.json", "--scaler-tls-cert", "c.pem", "--scaler-tls-key", "k.pem"]
        )
    with pytest.raises(SettingsError, match="--max-scaler-streams"):
        parse_settings(["--routes", "r.json", "--max-scaler-streams", "0"])


def test_an_unreadable_certificate_stops_the_gateway_before_it_listens(
    processes: Processes, pki: Pki, tmp_path: Path
) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    args = pki.gateway_args()
    args[args.index("--scaler-tls-key") + 1] = str(not_pem)
    gateway = processes.gateway(routes, *args, wait=False)
    assert gateway.process.wait(15) == 2
    text = gateway.log_file.read_text()
    assert "--scaler-tls-key: expected a PEM PRIVATE KEY" in text


def _watch_first(address: str, credentials: grpc.ChannelCredentials) -> peers_pb.CountsSnapshot:
    options = [("grpc.ssl_target_name_override", PEER_NAME)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = peers_grpc.GatewayPeersStub(channel)  # type: ignore[no-untyped-call]
        call = stub.WatchCounts(peers_pb.WatchCountsRequest(replicaId="another"), timeout=5)
        first: peers_pb.CountsSnapshot = next(iter(call))
        call.cancel()
        return first


def test_only_the_replicas_certificate_watches_counts_and_keda_cannot_crowd_it_out(
    processes: Processes, pki: Pki, stranger_pki: Pki
) -> None:
    routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
    gateway = processes.gateway(routes, *pki.gateway_args(), "--max-scaler-streams", "2")

    async def scenario() -> None:
        options = [("grpc.ssl_target_name_override", KEDA_DIALS)]
        async with grpc.aio.secure_channel(
            gateway.scaler_address, pki.credentials(), options=options
        ) as channel:
            stub = scaler_grpc.ExternalScalerStub(channel)  # type: ignore[no-untyped-call]
            streams = [stub.StreamIsActive(scaled_object(MODEL)) for _ in range(2)]
            for stream in streams:
                await asyncio.wait_for(stream.initial_metadata(), 5)
            refused = stub.StreamIsActive(scaled_object(MODEL))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(refused.read(), 5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # KEDA's streams fill its slots; a replica still watches
            first = await asyncio.to_thread(
                _watch_first, gateway.scaler_address, pki.replica_credentials()
            )
            assert first.replicaId
            for stream in streams:
                stream.cancel()

    asyncio.run(scenario())
    # KEDA's certificate is of the stack's CA but not the replicas': no counts for it
    with pytest.raises(grpc.RpcError) as caught:
        _watch_first(gateway.scaler_address, pki.credentials())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # a certificate with the replicas' name from another CA fails the handshake
    stranger = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=stranger_pki.server_key.read_bytes(),
        certificate_chain=stranger_pki.server_cert.read_bytes(),
    )
    with pytest.raises(grpc.RpcError) as caught:
        _watch_first(gateway.scaler_address, stranger)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    # (the log file holds gRPC's own handshake lines too, which are not JSON)
    assert "counts watch refused: not a replica's certificate" in gateway.log_file.read_text()


def _handshakes_failed(gateway: Gateway) -> int:
    """gRPC's own log lines (not JSON) of the TLS handshakes the gateway refused."""
    return gateway.log_file.read_text().count("Handshake failed")


@pytest.mark.parametrize("presented", ["the replicas'", "another CA's", "KEDA's"])
def test_a_watched_peer_must_present_the_replicas_certificate(
    processes: Processes, pki: Pki, stranger_pki: Pki, presented: str
) -> None:
    """The watching side of mutual TLS: counts are taken only from a listener whose
    certificate is the stack CA's and carries the replicas' name."""
    credentials = {
        "the replicas'": pki.server_credentials(),
        "another CA's": stranger_pki.server_credentials(),
        "KEDA's": pki.server_credentials(as_keda=True),
    }[presented]
    with FakePeer(lambda _id: forged_snapshot("peer", MODEL, 1), credentials) as peer:
        routes = {"models": [route(MODEL, f"http://127.0.0.1:{free_port()}")]}
        gateway = processes.gateway(
            routes, *pki.gateway_args(), "--peers", f"127.0.0.1:{peer.port}"
        )
        keda = pki.credentials()
        if presented == "the replicas'":
            assert wait_until(lambda: _secure_metric(gateway.scaler_address, keda) == 1, 5.0)
            return
        # retried every --peer-retry-interval: a few rounds, none of which reaches the peer
        assert wait_until(lambda: _handshakes_failed(gateway) >= 3, 10.0), (
            gateway.log_file.read_text()
        )
        assert not peer.watchers
        assert _secure_metric(gateway.scaler_address, keda) == 0


def test_a_replica_caps_its_own_snapshot_by_the_bounds_its_peers_check() -> None:
    """Replicas that share a route table never refuse each other, and the cap loses nothing
    KEDA acts on: it asks for at most maxReplicas replicas either way."""
    table = parse_route_table(
        json.dumps(
            {
                "models": [route(MODEL, "http://127.0.0.1:1", **BOUNDED)],
                "tenants": [{"name": TENANT, "maxConcurrentRequests": 2}],
            }
        )
    )
    bounds = PeerBounds.from_routes(table)
    assert bounds.models == {MODEL: MODEL_BOUND}
    busy = PeerCounts(models={MODEL: Pair(10, 500)}, tenants={TENANT: Pair(0, 5)})
    capped = bounds.cap(busy)
    assert capped.models[MODEL] == Pair(10, MODEL_BOUND - 10)
    assert capped.tenants[TENANT].total == 2
    target = BOUNDED["targetConcurrency"]
    assert -(-capped.models[MODEL].total // target) >= BOUNDED["maxReplicas"]
    message = peers_pb.CountsSnapshot(
        replicaId="peer",
        models={MODEL: peers_pb.Counts(pending=10, inFlight=MODEL_BOUND - 10)},
        tenants={TENANT: peers_pb.Counts(pending=0, inFlight=2)},
    )
    assert counts_from_message(message, 100_000, bounds) == capped
