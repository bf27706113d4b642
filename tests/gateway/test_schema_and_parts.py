"""In-process tests of the pure parts: route-table schema, settings, API keys, usage, counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sovereign_gateway.auth import ApiKeyFileError, parse_api_keys
from sovereign_gateway.counts import Counts, Pair, PeerCounts
from sovereign_gateway.metering import IDLE_TENANT, Metering
from sovereign_gateway.ports import ADMIN_HTTP_PORT, PUBLIC_PORT, SCALER_GRPC_PORT
from sovereign_gateway.routes import (
    ModelRoute,
    RouteTable,
    RouteTableError,
    load_route_table,
    parse_route_table,
)
from sovereign_gateway.settings import HostPort, SettingsError, parse_settings
from sovereign_gateway.usage_sniffer import StreamUsage, usage_from_body


def test_the_contract_example_parses_with_defaults_for_the_rest() -> None:
    table = parse_route_table(
        json.dumps(
            {
                "models": [
                    {
                        "name": "meta-llama/Llama-3.3-70B-Instruct",
                        "upstream": "http://llama-70b.sovereign-models.svc:8000/",
                        "gpusPerReplica": 4,
                    },
                    {"name": "BAAI/bge-m3", "upstream": "https://bge.example.eu"},
                ],
                "tenants": [{"name": "team-a", "maxConcurrentRequests": 16}],
                "metering": {"pricePerGpuHour": 2.5, "currency": "EUR"},
            }
        )
    )
    llama = table.model("meta-llama/Llama-3.3-70B-Instruct")
    assert llama is not None
    assert llama.upstream == "http://llama-70b.sovereign-models.svc:8000"
    assert (llama.target_concurrency, llama.max_pending_requests) == (8, 1000)
    assert (llama.cold_start_timeout_seconds, llama.request_timeout_seconds) == (900, 600)
    assert llama.gpus_per_replica == 4
    assert table.tenant("team-a") is not None
    assert table.tenant("team-b") is None
    assert table.metering.price_per_gpu_hour == 2.5


def test_the_plan_layer_can_build_a_table_in_python_and_the_gateway_reads_it_back() -> None:
    table = RouteTable(
        models=[ModelRoute(name="m", upstream="http://m.svc:8000", target_concurrency=3)]
    )
    text = table.to_json()
    assert '"targetConcurrency": 3' in text
    assert parse_route_table(text) == table


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"models": [{"name": "m"}]}, "models[0].upstream: Field required"),
        (
            {"models": [{"name": "m", "upstream": "ftp://x"}]},
            "models[0].upstream: expected an http(s) base URL",
        ),
        (
            {"models": [{"name": "m", "upstream": "http://x:99999"}]},
            "models[0].upstream: expected a valid port",
        ),
        (
            {"models": [{"name": "m", "upstream": "http://x", "targetConcurrency": 0}]},
            "models[0].targetConcurrency: Input should be greater than or equal to 1",
        ),
        (
            {"models": [{"name": "m", "upstream": "http://x", "target_concurrency": 2}]},
            "models[0].target_concurrency: Extra inputs are not permitted",
        ),
        (
            {"models": [{"name": "m", "upstream": "http://x"}] * 2},
            "models[1].name: 'm' appears twice",
        ),
        (
            {"models": [], "tenants": [{"name": "Team_A"}]},
            "tenants[0].name: expected a DNS label",
        ),
        ({"models": [], "metering": {"currency": "euro"}}, "metering.currency: expected an ISO"),
        ([], "(top level): Input should be a valid dictionary"),
    ],
)
def test_route_table_errors_name_the_field(document: object, expected: str) -> None:
    with pytest.raises(RouteTableError) as caught:
        parse_route_table(json.dumps(document), source="routes.json")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("routes.json: ")


def test_route_table_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RouteTableError, match="cannot read"):
        load_route_table(tmp_path / "missing.json")
    broken = tmp_path / "routes.json"
    broken.write_text('{"models": [')
    with pytest.raises(RouteTableError, match="expected JSON, line 1 column 13"):
        load_route_table(broken)


def test_settings_defaults_and_errors_naming_the_flag() -> None:
    settings = parse_settings(["--routes", "r.json", "--peers", "10.0.0.2:9090, [fd00::3]:9090"])
    assert settings.listen == HostPort("0.0.0.0", PUBLIC_PORT)
    assert settings.scaler_listen.port == SCALER_GRPC_PORT
    assert settings.admin_listen.port == ADMIN_HTTP_PORT
    assert [str(peer) for peer in settings.peers] == ["10.0.0.2:9090", "[fd00::3]:9090"]
    assert settings.api_keys is None
    for argv, message in [
        (["--listen", "nohost"], "--listen: expected HOST:PORT"),
        (["--peers", "a:1,b"], "--peers: expected HOST:PORT"),
        (["--peers-dns", ":9090"], "--peers-dns: expected HOST:PORT"),
        (["--scaler-listen", ":70000"], "--scaler-listen: expected a port between 1 and 65535"),
        (["--max-body-bytes", "0"], "--max-body-bytes: expected a positive number of bytes"),
        (["--cold-probe-interval", "-1"], "--cold-probe-interval: expected a positive number"),
    ]:
        with pytest.raises(SettingsError, match=message):
            parse_settings(["--routes", "r.json", *argv])


def test_api_keys_match_in_constant_time_and_errors_never_show_a_digest() -> None:
    digest = hashlib.sha256(b"sk-a").hexdigest()
    keys = parse_api_keys(f"team-a:{digest}\nteam-b:{hashlib.sha256(b'sk-b').hexdigest()}\n", "f")
    assert keys.tenant_for("Bearer sk-a") == "team-a"
    assert keys.tenant_for("bearer sk-b") == "team-b"
    assert keys.tenant_for("Bearer sk-c") is None
    assert keys.tenant_for("Basic sk-a") is None
    assert keys.tenant_for(None) is None
    assert keys.tenant_for(f"Bearer {digest}") is None
    for text, message in [
        ("", "expected at least one tenant:sha256hex line"),
        ("team-a\n", "line 1: expected tenant:sha256hex"),
        ("TeamA:" + digest, "line 1: expected tenant:sha256hex with the tenant a DNS label"),
        ("team-a:" + digest[:-1], "line 1: expected the key's SHA-256 as 64 hex digits"),
    ]:
        with pytest.raises(ApiKeyFileError, match=message) as caught:
            parse_api_keys(text, "f")
        assert digest[:-1] not in str(caught.value)


def test_stream_usage_is_found_across_chunk_boundaries() -> None:
    final = b'data: {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}\n\n'
    stream = b'data: {"choices": [{"delta": {}}], "usage": null}\n\n' + final + b"data: [DONE]\n\n"
    for cut in range(1, len(stream)):
        sniffer = StreamUsage()
        sniffer.feed(stream[:cut])
        sniffer.feed(stream[cut:])
        assert (sniffer.usage.prompt_tokens, sniffer.usage.completion_tokens) == (7, 5), cut
    assert usage_from_body(b'{"usage": {"prompt_tokens": 3}}').prompt_tokens == 3
    assert usage_from_body(b"not json").prompt_tokens == 0


def test_counts_sum_local_and_peers_and_forget_a_dead_peer() -> None:
    counts = Counts()
    counts.hold("m", "t")
    counts.hold("m", "t")
    counts.forward("m", "t")
    assert counts.local_model("m") == Pair(1, 1)
    counts.set_peer("b", PeerCounts(models={"m": Pair(2, 3)}, tenants={"t": Pair(2, 3)}))
    assert counts.total_model("m") == Pair(3, 4)
    assert counts.total_tenant("t") == 7
    counts.drop_peer("b")
    assert counts.total_model("m") == Pair(1, 1)
    counts.finish("m", "t")
    counts.release_hold("m", "t")
    assert counts.snapshot() == PeerCounts(models={}, tenants={})


def test_gpu_time_is_split_by_in_flight_share_and_idle_time_is_its_own() -> None:
    metering = Metering(price_per_gpu_hour=3.6, currency="EUR")
    metering.replicas_changed("m", 2, 4)
    metering.replica_time("m", 2, 4, 10.0, {"a": 3, "b": 1})
    metering.replica_time("m", 2, 4, 5.0, {})
    usage = metering.usage(["m"])
    (row,) = usage["models"]
    assert row["replicaSeconds"] == 30.0
    assert row["gpuSeconds"] == 120.0
    assert row["cost"] == pytest.approx(0.12)
    assert row["costPerSecondNow"] == pytest.approx(0.008)
    tenants = {item["tenant"]: item["gpuSeconds"] for item in usage["tenants"]}
    assert tenants == {"a": 60.0, "b": 20.0, IDLE_TENANT: 40.0}
