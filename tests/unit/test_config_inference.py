"""The inference section of the config boundary: pinned images, models that can run, tenants' keys."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import load_stack_file
from components.config.loader import build_stack_config, section_from_engine
from tests.conftest import sovereign
from tests.unit.test_config import NS, ROOT, problems_for, stack_data, write_stack

DIGEST = "@sha256:" + "c" * 64


def _model(c: dict[str, Any], i: int = 0) -> dict[str, Any]:
    model: dict[str, Any] = c[NS + "inference"]["models"][i]
    return model


REFUSED: list[tuple[Callable[[dict[str, Any]], None], str, str]] = [
    (
        lambda c: c[NS + "inference"].update(
            image="registry.fsn1.example.eu/vllm/vllm-openai:v0.11.0"
        ),
        "inference.image",
        "pinned by digest",
    ),
    (
        lambda c: c[NS + "inference"].update(gatewayImage="registry.fsn1.example.eu/gw:latest"),
        "inference.gatewayImage",
        "pinned by digest",
    ),
    (
        lambda c: c[NS + "inference"].update(weightsImage="registry.fsn1.example.eu/w@sha256:abc"),
        "inference.weightsImage",
        "malformed image reference",
    ),
    (
        lambda c: _model(c).update(image="ghcr.io/acme/sglang:0.4" + DIGEST),
        "inference.models[0].image",
        "ghcr.io is not in residency.allowedRegistries",
    ),
    (
        lambda c: _model(c).update(image="registry.fsn1.example.eu/acme/sglang:0.4"),
        "inference.models[0].image",
        "pinned by digest",
    ),
    (
        lambda c: _model(c).update(gpu={"model": "H100-SXM5-80GB"}),
        "inference.models[0].gpu.model",
        "no host has H100-SXM5-80GB GPUs",
    ),
    (
        lambda c: _model(c).update(gpu={"model": "B200"}),
        "inference.models[0].gpu.model",
        "unknown GPU model",
    ),
    (
        lambda c: _model(c).update(gpusPerReplica=2),
        "inference.models[0].gpusPerReplica",
        "no host can run a replica",
    ),
    (
        lambda c: _model(c).update(targetConcurrency=0),
        "inference.models[0].targetConcurrency",
        "greater than or equal to 1",
    ),
    (
        lambda c: _model(c)["source"].update(endpoint="https://s3.us-east-1.amazonaws.com"),
        "inference.models[0].source.endpoint",
        "not in residency.allowedObjectStoreEndpoints",
    ),
    (
        lambda c: c[NS + "inference"]["models"].append(
            {**copy.deepcopy(_model(c)), "name": "other-name"}
        ),
        "inference.models[1].servedName",
        "used twice",
    ),
    (
        # "<model>-replicas" is the name of a model's headless Service: it would clash
        lambda c: _model(c).update(name="mistral-replicas", servedName="x/y"),
        "inference.models[0].name",
        "ends with '-replicas'",
    ),
    (
        lambda c: _model(c)["source"].update(revision=".hidden"),
        "inference.models[0].source.revision",
        "not starting with '.' or '-'",
    ),
    (
        lambda c: _model(c).update(env={"BAD NAME": "x"}),
        "inference.models[0].env.BAD NAME",
        "environment variable name",
    ),
    (
        lambda c: c[NS + "inference"]["gateway"].update(tlsSecret="Not_A_Name"),
        "inference.gateway.tlsSecret",
        "DNS-1123 subdomain",
    ),
    (
        lambda c: c[NS + "inference"]["gateway"].update(
            tenants=[{"name": "team-a", "apiKey": "plain-text-key-0123456789"}]
        ),
        "inference.gateway.tenants[0].apiKey",
        "Pulumi secret",
    ),
    (
        lambda c: c[NS + "inference"]["gateway"].update(
            tenants=[
                {"name": "team-a", "apiKey": {"secure": "v1:aaaaaaaaaaaaaaaaaaaa"}},
                {"name": "team-a", "apiKey": {"secure": "v1:bbbbbbbbbbbbbbbbbbbb"}},
            ]
        ),
        "inference.gateway.tenants[1].name",
        "used twice",
    ),
    (
        lambda c: c[NS + "inference"].update(metering={"pricePerGpuHour": -1}),
        "inference.metering.pricePerGpuHour",
        "greater than or equal to 0",
    ),
    (
        lambda c: c[NS + "inference"].update(charts={"keda": "latest"}),
        "inference.charts.keda",
        "malformed version pin",
    ),
    (
        lambda c: c[NS + "hosts"][0]["nvme"][0].update(
            id="nvme-SAMSUNG_MZWLO3T8HCLS-00A07_S7B0NA0W100101-part1"
        ),
        "hosts[0].nvme[0].id",
        "names a partition",
    ),
]


@pytest.mark.parametrize(("mutate", "path", "fragment"), REFUSED, ids=[r[1] for r in REFUSED])
def test_inference_rules_name_the_field(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], path: str, fragment: str
) -> None:
    problems = problems_for(tmp_path, mutate)
    assert path in problems, problems
    assert fragment in problems[path]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda c: c[NS + "inference"].update(image="docker.io/vllm/vllm-openai:v0.11.0"),
            "inference.image",
        ),
        (lambda c: _model(c).update(gpu={"model": "L40S-48GB"}), "inference.models[0].gpu.model"),
        (lambda c: _model(c).update(targetConcurrency=0), "inference.models[0].targetConcurrency"),
        (
            lambda c: _model(c)["source"].update(endpoint="https://objects.example.com"),
            "inference.models[0].source.endpoint",
        ),
        (
            lambda c: c[NS + "inference"]["models"].append(
                {**copy.deepcopy(_model(c)), "name": "twin"}
            ),
            "inference.models[1].servedName",
        ),
    ],
)
def test_validate_exits_2_naming_the_field(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    data = copy.deepcopy(stack_data("staging"))
    mutate(data["config"])
    path = write_stack(tmp_path, data)
    result = sovereign("validate", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{path}: {field}: " in result.stdout + result.stderr


def test_model_pinned_to_a_gpu_model_fits_only_those_hosts(tmp_path: Path) -> None:
    def mutate(c: dict[str, Any]) -> None:
        _model(c).update(gpu={"model": "RTX-6000-ADA-48GB"}, minGpuMemoryGib=40)

    data = copy.deepcopy(stack_data("staging"))
    mutate(data["config"])
    config = load_stack_file(write_stack(tmp_path, data))
    model = config.inference.models[0]
    assert model.gpu is not None
    assert all(config.host_fits(h, model) == (h.gpu.model == model.gpu.model) for h in config.hosts)


def test_tenant_keys_are_secrets_in_the_file_and_never_rendered() -> None:
    config = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    tenants = config.inference.gateway.tenants
    assert [t.name for t in tenants] == ["search-team", "support-bots"]
    dumped = config.model_dump_json()
    for tenant in tenants:
        assert tenant.api_key.get_secret_value() not in dumped


def _engine_view(stack: str, plaintext: dict[str, str]) -> tuple[dict[str, str], frozenset[str]]:
    """The stack's config as the Pulumi engine hands it to a program: JSON strings, secrets
    decrypted, and every key holding a secret (also nested) listed as a secret key."""
    raw: dict[str, str] = {}
    secret_keys: set[str] = set()

    def decrypt(value: Any, key: str) -> Any:
        if isinstance(value, dict) and set(value) == {"secure"}:
            secret_keys.add(NS + key)
            return plaintext[value["secure"]]
        if isinstance(value, dict):
            return {k: decrypt(v, key) for k, v in value.items()}
        if isinstance(value, list):
            return [decrypt(v, key) for v in value]
        return value

    for full_key, value in stack_data(stack)["config"].items():
        key = full_key.removeprefix(NS)
        clear = decrypt(value, key)
        raw[full_key] = json.dumps(clear) if isinstance(clear, dict | list) else str(clear)
    return raw, frozenset(secret_keys)


def test_engine_reads_nested_tenant_keys_as_secrets() -> None:
    data = stack_data("prod-fra")["config"]
    tenants = data[NS + "inference"]["gateway"]["tenants"]
    plaintext = {t["apiKey"]["secure"]: f"key-of-{t['name']}-0123456789abcdef" for t in tenants}
    plaintext[data[NS + "k3sToken"]["secure"]] = "decrypted-token-value"
    raw, secret_keys = _engine_view("prod-fra", plaintext)
    assert NS + "inference" in secret_keys
    section, problems = section_from_engine(raw, secret_keys)
    assert not problems
    config = build_stack_config(section, "engine", [])
    keys = [t.api_key.get_secret_value() for t in config.inference.gateway.tenants]
    assert keys == ["key-of-search-team-0123456789abcdef", "key-of-support-bots-0123456789abcdef"]
    # everything else reads exactly as from the file
    from_file = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    assert config.inference.models == from_file.inference.models
    assert config.hosts == from_file.hosts


def test_engine_refuses_a_tenant_key_that_is_not_secret() -> None:
    raw, _ = _engine_view("prod-fra", _all_plain("prod-fra"))
    section, _ = section_from_engine(raw, frozenset({NS + "k3sToken"}))
    with pytest.raises(Exception, match=r"tenants\[0\]\.apiKey"):
        build_stack_config(section, "engine", [])


def _all_plain(stack: str) -> dict[str, str]:
    found: dict[str, str] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict) and set(value) == {"secure"}:
            found[value["secure"]] = "plain-value-0123456789abcdef"
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"])
    return found


@pytest.mark.parametrize(
    ("reference", "accepted"),
    [
        ("agent:SHA256:kR2pN9xW4vB7cL1mZ6tH3sQ8fD5gJ0aE2uY7iO4nT1w", True),
        ("file:~/.ssh/deploy_ed25519", True),
        ("agent:SHA256:not-a-fingerprint", False),
        ("agent:", False),
        ("ssh-agent:SHA256:kR2pN9xW4vB7cL1mZ6tH3sQ8fD5gJ0aE2uY7iO4nT1w", False),
    ],
)
def test_deploy_keys_are_referenced_by_file_or_agent(
    tmp_path: Path, reference: str, accepted: bool
) -> None:
    data = copy.deepcopy(stack_data("staging"))
    data["config"][NS + "hosts"][0]["ssh"]["privateKey"] = reference
    path = write_stack(tmp_path, data)
    if accepted:
        assert load_stack_file(path).hosts[0].ssh.private_key == reference
    else:
        assert "hosts[0].ssh.privateKey" in problems_for(
            tmp_path, lambda c: c[NS + "hosts"][0]["ssh"].update(privateKey=reference)
        )
