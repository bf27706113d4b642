"""The committed gRPC stubs describe exactly the committed protos, whatever grpcio-tools is
installed: the comparison is of descriptors (messages, fields, services, methods), which any
generator version embeds unchanged, not of the generated text, which each version words its own
way."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]
from sovereign_gateway.proto import externalscaler_pb2, peers_pb2

GATEWAY_DIR = Path(__file__).resolve().parents[2] / "images" / "gateway"
PROTO_DIR = GATEWAY_DIR / "sovereign_gateway" / "proto"
PROTOS = ("externalscaler.proto", "peers.proto")


def _compiled(proto: str, tmp_path: Path) -> descriptor_pb2.FileDescriptorProto:
    """The committed ``proto`` as protoc reads it."""
    out = tmp_path / "descriptor.pb"
    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{GATEWAY_DIR}",
            f"-I{include}",
            f"--descriptor_set_out={out}",
            f"sovereign_gateway/proto/{proto}",
        ]
    )
    assert code == 0
    (compiled,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    # protoc fills in each field's JSON name (derived from its name); the Python generator
    # embeds the descriptor without it
    messages = list(compiled.message_type)
    while messages:
        message = messages.pop()
        for field in message.field:
            field.ClearField("json_name")
        messages.extend(message.nested_type)
    return compiled


@pytest.mark.parametrize("proto", PROTOS)
def test_the_committed_stubs_hold_the_committed_protos_messages_and_services(
    proto: str, tmp_path: Path
) -> None:
    stem = proto.removesuffix(".proto")
    messages = importlib.import_module(f"sovereign_gateway.proto.{stem}_pb2")
    committed = descriptor_pb2.FileDescriptorProto.FromString(messages.DESCRIPTOR.serialized_pb)
    assert committed == _compiled(proto, tmp_path), f"{stem}_pb2.py is stale: regenerate it"
    # the service stubs call each method by its full path, with the committed message types
    calls = (PROTO_DIR / f"{stem}_pb2_grpc.py").read_text()
    for service in committed.service:
        for method in service.method:
            path = f"/{committed.package}.{service.name}/{method.name}"
            assert f"'{path}'" in calls, f"{stem}_pb2_grpc.py is stale: {path} missing"


def test_the_scaler_service_has_keda_names_and_fields() -> None:
    """KEDA's client calls /externalscaler.ExternalScaler/<Method> with these field numbers."""
    service = externalscaler_pb2.DESCRIPTOR.services_by_name["ExternalScaler"]
    assert service.full_name == "externalscaler.ExternalScaler"
    assert [method.name for method in service.methods] == [
        "IsActive",
        "StreamIsActive",
        "GetMetricSpec",
        "GetMetrics",
    ]
    fields = {
        message: {
            f.name: f.number
            for f in externalscaler_pb2.DESCRIPTOR.message_types_by_name[message].fields
        }
        for message in ("ScaledObjectRef", "MetricSpec", "GetMetricsRequest", "MetricValue")
    }
    assert fields == {
        "ScaledObjectRef": {"name": 1, "namespace": 2, "scalerMetadata": 3},
        "MetricSpec": {"metricName": 1, "targetSize": 2, "targetSizeFloat": 3},
        "GetMetricsRequest": {"scaledObjectRef": 1, "metricName": 2},
        "MetricValue": {"metricName": 1, "metricValue": 2, "metricValueFloat": 3},
    }
    assert peers_pb2.DESCRIPTOR.services_by_name["GatewayPeers"].methods[0].name == "WatchCounts"
