"""The config boundary: shipped stacks load; broken ones are refused with every field named."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import StackConfigError, load_stack_file
from components.config.loader import section_from_engine

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
NS = "sovereign-inference:"


def stack_data(name: str = "staging") -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{name}.yaml").read_text())
    return data


def write_stack(tmp_path: Path, data: dict[str, Any]) -> Path:
    (tmp_path / "Pulumi.yaml").write_text("name: sovereign-inference\nruntime: python\n")
    path = tmp_path / "Pulumi.test.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems_for(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], base: str = "staging"
) -> dict[str, str]:
    data = copy.deepcopy(stack_data(base))
    mutate(data["config"])
    with pytest.raises(StackConfigError) as info:
        load_stack_file(write_stack(tmp_path, data))
    return {p.path: p.message for p in info.value.problems}


@pytest.mark.parametrize("stack_file", STACKS, ids=lambda p: p.name)
def test_shipped_stacks_are_valid(stack_file: Path) -> None:
    config = load_stack_file(stack_file)
    assert config.hosts
    assert config.environment == stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")


def test_every_broken_field_is_named_by_its_path(tmp_path: Path) -> None:
    def mutate(c: dict[str, Any]) -> None:
        c[NS + "hosts"][0]["ssh"]["port"] = 70000
        c[NS + "hosts"][0]["country"] = "de"
        c[NS + "hosts"][0]["rack"] = "r12"
        c[NS + "hosts"][1]["gpu"]["count"] = -1
        c[NS + "hosts"][1]["nvme"][0]["id"] = "/dev/nvme0n1"
        c[NS + "k3s"]["version"] = "1.31"
        c[NS + "inference"]["models"][0]["source"]["uri"] = "https://bucket"

    problems = problems_for(tmp_path, mutate)
    assert set(problems) >= {
        "hosts[0].ssh.port",
        "hosts[0].country",
        "hosts[0].rack",
        "hosts[1].gpu.count",
        "hosts[1].nvme[0].id",
        "k3s.version",
        "inference.models[0].source.uri",
    }
    assert "65535" in problems["hosts[0].ssh.port"]
    assert "ISO 3166-1" in problems["hosts[0].country"]
    assert "unknown field" in problems["hosts[0].rack"]
    assert "not stable" in problems["hosts[1].nvme[0].id"]
    assert "v1.31.6+k3s1" in problems["k3s.version"]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (
            lambda c: c[NS + "hosts"][1].update(name=c[NS + "hosts"][0]["name"]),
            "hosts[1].name",
            "duplicate host name",
        ),
        (
            lambda c: c[NS + "hosts"][1].update(
                address=c[NS + "hosts"][0]["address"], ssh=c[NS + "hosts"][0]["ssh"]
            ),
            "hosts[1].address",
            "already used by hosts[0]",
        ),
        (
            lambda c: c[NS + "hosts"][0].update(country="US"),
            "hosts[0].country",
            "outside the residency policy",
        ),
        (lambda c: c[NS + "hosts"][1].update(role="server"), "hosts", "odd number"),
        (lambda c: c[NS + "hosts"][0].update(role="agent"), "hosts", "no host has role 'server'"),
        (
            lambda c: c[NS + "inference"]["models"][0].update(gpusPerReplica=2),
            "inference.models[0].gpusPerReplica",
            "no host can run a replica",
        ),
        (
            lambda c: c[NS + "inference"]["models"][0].update(minGpuMemoryGib=100),
            "inference.models[0].gpusPerReplica",
            "100 GiB",
        ),
        (
            lambda c: c[NS + "inference"].update(
                image="docker.io/vllm/vllm-openai:v0.11.0@sha256:" + "a" * 64
            ),
            "inference.image",
            "docker.io is not in residency.allowedRegistries",
        ),
        (
            lambda c: c[NS + "inference"].update(image="vllm/vllm-openai@sha256:" + "b" * 64),
            "inference.image",
            "docker.io",
        ),
        (
            lambda c: c[NS + "inference"]["models"][0]["source"].update(
                endpoint="https://s3.us-east-1.amazonaws.com"
            ),
            "inference.models[0].source.endpoint",
            "allowedObjectStoreEndpoints",
        ),
        (
            lambda c: c[NS + "nvidia"].update(driverVersion="550.144.03"),
            "nvidia.driverVersion",
            "too old for CUDA 12.8",
        ),
        (
            lambda c: c[NS + "nvidia"].update(cudaVersion="11.8"),
            "nvidia.cudaVersion",
            "unsupported CUDA release",
        ),
        (
            lambda c: c[NS + "hosts"][0]["ssh"].pop("hostKey"),
            "hosts[0].ssh.hostKey",
            "pin the host key",
        ),
        (
            lambda c: c[NS + "hosts"][0]["ssh"].update(hostKey="SHA256:short"),
            "hosts[0].ssh.hostKey",
            "43 base64",
        ),
        (
            lambda c: c[NS + "hosts"][0]["gpu"].update(model="H900"),
            "hosts[0].gpu.model",
            "unknown GPU model",
        ),
        (
            lambda c: c[NS + "hosts"][0]["gpu"].update(count=0),
            "hosts[0].gpu.count",
            "is 0 but a model is set",
        ),
        (
            lambda c: c[NS + "hosts"][0]["nvme"].append(dict(c[NS + "hosts"][0]["nvme"][0])),
            "hosts[0].nvme[2].id",
            "listed twice",
        ),
        (
            lambda c: c[NS + "hosts"][1]["nvme"].append(dict(c[NS + "hosts"][0]["nvme"][0])),
            "hosts[1].nvme[2].id",
            "also listed on hosts[0]",
        ),
        (
            lambda c: c[NS + "hosts"][0].update(egressIps=["10.1.2.3"]),
            "hosts[0].egressIps[0]",
            "public",
        ),
        (
            lambda c: c[NS + "k3s"].update(serviceCidr="10.42.128.0/17"),
            "k3s.serviceCidr",
            "overlaps",
        ),
        (
            lambda c: c[NS + "cache"].update(mountPoint="/var"),
            "cache.mountPoint",
            "system location",
        ),
        (
            lambda c: c[NS + "inference"]["models"].append(
                copy.deepcopy(c[NS + "inference"]["models"][0])
            ),
            "inference.models[1].name",
            "used twice",
        ),
        (lambda c: c.update({NS + "replicas": 3}), "replicas", "unknown field"),
        (
            lambda c: c.update({"sovereign-infrence:hosts": []}),
            "sovereign-infrence:hosts",
            "unknown namespace",
        ),
    ],
)
def test_cross_field_rules_name_the_field_to_fix(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], path: str, fragment: str
) -> None:
    problems = problems_for(tmp_path, mutate)
    assert path in problems, problems
    assert fragment in problems[path]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "Pulumi.bad.yaml"
    path.write_text(
        "config:\n  sovereign-inference:environment: lab\n  sovereign-inference:hosts: [\n    - name: x\n"
    )
    with pytest.raises(StackConfigError) as info:
        load_stack_file(path)
    (problem,) = info.value.problems
    assert "YAML syntax error at line" in problem.message


def test_duplicate_yaml_key_is_refused_with_its_line(tmp_path: Path) -> None:
    text = (ROOT / "stacks" / "Pulumi.staging.yaml").read_text()
    text += "  sovereign-inference:environment: again\n"
    path = tmp_path / "Pulumi.dup.yaml"
    path.write_text(text)
    with pytest.raises(StackConfigError) as info:
        load_stack_file(path)
    message = info.value.problems[0].message
    assert "duplicate key 'sovereign-inference:environment'" in message
    assert f"line {len(text.splitlines())}" in message


def test_plaintext_secret_is_refused_and_never_echoed(tmp_path: Path) -> None:
    token = "plain-token-value-9f8e7d6c"
    problems = problems_for(tmp_path, lambda c: c.update({NS + "k3sToken": token}))
    assert "Pulumi secret" in problems["k3sToken"]
    assert token not in json.dumps(problems)


def test_private_key_material_is_refused(tmp_path: Path) -> None:
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"
    problems = problems_for(tmp_path, lambda c: c[NS + "hosts"][0]["ssh"].update(privateKey=key))
    assert "never put key material" in problems["hosts[0].ssh.privateKey"]
    assert "b3BlbnNzaC1rZXktdjEAAAAA" not in json.dumps(problems)


def test_secret_value_is_kept_secret(tmp_path: Path) -> None:
    config = load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    assert config.k3s_token is not None
    assert "secure" not in repr(config)
    assert config.k3s_token.get_secret_value().startswith("v1:")


def test_inventory_fills_connection_facts(tmp_path: Path) -> None:
    data = stack_data("lab")
    stack = write_stack(tmp_path, data)
    (tmp_path / ".lab").mkdir()
    fingerprint = "SHA256:" + "A" * 43
    inventory = {
        "version": 1,
        "hosts": [
            {
                "name": "lab-1",
                "address": "127.0.0.1",
                "port": 2301,
                "user": "root",
                "privateKey": str(tmp_path / ".lab" / "id_ed25519"),
                "hostKey": fingerprint,
            }
        ],
    }
    (tmp_path / ".lab" / "inventory.json").write_text(json.dumps(inventory))
    config = load_stack_file(stack)
    lab1 = config.hosts[0]
    assert lab1.ssh.port == 2301
    assert lab1.ssh.host_key == fingerprint
    assert lab1.ssh.private_key == f"file:{tmp_path / '.lab' / 'id_ed25519'}"
    assert config.hosts[1].ssh.host_key is None  # not in the inventory: stays unpinned


def test_engine_config_is_read_like_the_file() -> None:
    data = stack_data("prod-fra")["config"]
    raw = {}
    for key, value in data.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            raw[key] = "decrypted-token-value"
        elif isinstance(value, dict | list):
            raw[key] = json.dumps(value)
        else:
            raw[key] = str(value)
    section, problems = section_from_engine(raw, frozenset({NS + "k3sToken"}))
    assert not problems
    from components.config.loader import build_stack_config

    config = build_stack_config(section, "engine", [])
    assert config.k3s_token is not None
    assert config.k3s_token.get_secret_value() == "decrypted-token-value"
    assert config == load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml").model_copy(
        update={"k3s_token": config.k3s_token}
    )


def test_engine_plain_value_for_secret_key_is_refused() -> None:
    """The whole prod-fra stack as the engine hands it over, the token alone not among its
    secrets: it is refused, by its key, without its value."""
    from components.config.loader import build_stack_config
    from tests.unit.test_program_mocks import engine_config

    raw, secret_keys, _ = engine_config(ROOT / "stacks" / "Pulumi.prod-fra.yaml")
    assert NS + "k3sToken" in secret_keys  # in the file it is a secret: only the engine dropped it
    token = raw[NS + "k3sToken"]
    section, problems = section_from_engine(raw, frozenset(secret_keys) - {NS + "k3sToken"})
    with pytest.raises(StackConfigError) as refused:
        build_stack_config(section, "engine", problems)
    found = {p.path: p.message for p in refused.value.problems}
    assert list(found) == ["k3sToken"], found
    assert "must be stored as a Pulumi secret" in found["k3sToken"]
    assert token not in str(refused.value)
