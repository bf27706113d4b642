"""The committed gRPC stubs are exactly what grpcio-tools generates from the committed protos."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from grpc_tools import protoc  # type: ignore[import-untyped]
from sovereign_gateway.proto import externalscaler_pb2, peers_pb2

GATEWAY_DIR = Path(__file__).resolve().parents[2] / "images" / "gateway"
PROTO_DIR = GATEWAY_DIR / "sovereign_gateway" / "proto"
PROTOS = ("externalscaler.proto", "peers.proto")


@pytest.mark.parametrize("proto", PROTOS)
def test_regenerating_the_stubs_gives_identical_files(proto: str, tmp_path: Path) -> None:
    package = tmp_path / "sovereign_gateway" / "proto"
    package.mkdir(parents=True)
    shutil.copy(PROTO_DIR / proto, package / proto)
    relative = f"sovereign_gateway/proto/{proto}"
    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{tmp_path}",
            f"-I{include}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(tmp_path / relative),
        ]
    )
    assert code == 0
    stem = proto.removesuffix(".proto")
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        generated = (package / f"{stem}{suffix}").read_text()
        committed = (PROTO_DIR / f"{stem}{suffix}").read_text()
        assert generated == committed, f"{stem}{suffix} is stale: regenerate it (see README)"


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
