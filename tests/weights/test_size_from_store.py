"""``sovereign size`` reads each model's manifest from its endpoint and keeps it for offline use."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sovereign_weights.layout import local_manifest_path, parse_object_uri
from sovereign_weights.publish import Publisher, PublishSettings
from sovereign_weights.report import Reporter

from components.config.models import GpuSpec, ModelSpec, StackConfig, WeightsSource
from components.model_facts import model_facts_for
from components.plan.sizing import size_stack
from tests.lab_stacks import lab_stack
from tests.weights.conftest import CREDENTIALS, MiB, make_model, s3_client
from tests.weights.s3_proxy import S3Proxy


def stack_on(endpoint: str, bucket: str, *names: str, allowed: str) -> StackConfig:
    """The lab stack with models served from ``endpoint`` (model_copy skips the https rule:
    the loopback server speaks plain HTTP)."""
    base = lab_stack()
    models = tuple(
        ModelSpec(
            name=name,
            source=WeightsSource(
                uri=f"s3://{bucket}/org/{name}",
                endpoint="https://placeholder.example.eu",
                revision="r1",
            ),
            max_model_len=4096,
        ).model_copy(
            update={
                "source": WeightsSource.model_construct(
                    uri=f"s3://{bucket}/org/{name}", endpoint=endpoint, revision="r1"
                )
            }
        )
        for name in names
    )
    host = base.hosts[0].model_copy(update={"gpu": GpuSpec(model="L4-24GB", count=1)})
    return base.model_copy(
        update={
            "hosts": (host,),
            "inference": base.inference.model_copy(update={"models": models}),
            "residency": base.residency.model_copy(
                update={"allowed_object_store_endpoints": (allowed,)}
            ),
        }
    )


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)


@pytest.mark.usefixtures("aws_env")
def test_size_fetches_manifests_once_then_works_offline(
    tmp_path: Path, bucket: str, proxy: S3Proxy
) -> None:
    model = make_model(tmp_path / "tiny", shard_mib=(3,))
    Publisher(
        s3_client(proxy.url),
        parse_object_uri(f"s3://{bucket}/org/tiny"),
        "r1",
        "tiny",
        PublishSettings(),
        Reporter("publish", stream=io.StringIO(), tty=False),
    ).publish(model)
    config = stack_on(proxy.url, bucket, "tiny", "unpublished", allowed=proxy.url)
    kept = tmp_path / "manifests"

    proxy.reset()
    found, missing = model_facts_for(config, kept, fetch=True)
    assert found["tiny"].tensor_bytes == 3 * MiB
    assert len(missing) == 1
    assert missing[0].startswith("unpublished: no manifest at s3://")
    assert local_manifest_path(kept, "tiny", "r1").is_file()
    assert [r.method for r in proxy.requests] == ["GET", "GET"]  # one manifest each

    proxy.reset()
    offline, _ = model_facts_for(config, kept, fetch=False)
    assert offline == {"tiny": found["tiny"]}
    assert proxy.requests == []
    report = size_stack(config, offline)
    assert report.models[0].weight_bytes == 3 * MiB


@pytest.mark.usefixtures("aws_env")
def test_size_never_contacts_an_endpoint_outside_the_policy(
    tmp_path: Path, bucket: str, proxy: S3Proxy
) -> None:
    config = stack_on(proxy.url, bucket, "tiny", allowed="https://objects.example.eu")
    found, missing = model_facts_for(config, tmp_path, fetch=True)
    assert found == {}
    assert "is not an allowed object-store endpoint" in missing[0]
    assert proxy.requests == []
