"""Residency comparisons have one home (components.config.residency): every spelling of a registry,
an endpoint or a country gets the same answer from the config boundary, the policy pack and the
functions themselves; and the config-key messages ``sovereign validate`` prints."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import PolicyResourceOptions, ResourceValidationArgs

from components.config import StackConfigError
from components.config.loader import load_stack_data
from components.config.residency import (
    country_allowed,
    endpoint_allowed,
    endpoint_port,
    normalize_endpoint,
    normalize_registry,
    registry_allowed,
    registry_of,
)
from components.plan.host_steps import k3s_registries
from components.policy.residency import (
    pack_config,
    validate_endpoints,
    validate_gpu_hosts,
    validate_images,
)
from tests.conftest import sovereign
from tests.lab_stacks import lab_stack
from tests.unit.test_config import NS, ROOT, stack_data

DIGEST = "@sha256:" + "c" * 64
UPSTREAM = ROOT / "tests" / "data" / "distribution-reference-aeed5e6" / "normalize.go.txt"


@pytest.mark.parametrize(
    ("spelling", "normalized"),
    [
        ("Registry.EU.example:5000", "registry.eu.example:5000"),
        ("registry.eu.example:443", "registry.eu.example"),
        ("2001:DB8:0:0::1", "[2001:db8::1]"),
        ("[2001:db8:0::1]:443", "[2001:db8::1]"),
        ("[2001:DB8::1]:5000", "[2001:db8::1]:5000"),
        ("LOCALHOST:5000", "localhost:5000"),
        ("index.docker.io", "docker.io"),
    ],
)
def test_a_registry_has_one_spelling(spelling: str, normalized: str) -> None:
    assert normalize_registry(spelling) == normalized


@pytest.mark.parametrize(
    "refused", ["registry.eu.example:0", "registry.eu.example:70000", "[not-v6]:5000", "a b"]
)
def test_a_registry_that_is_no_host_is_refused(refused: str) -> None:
    with pytest.raises(ValueError, match=r"registry|host"):
        normalize_registry(refused)


# (image, registry, the rule of splitDockerDomain the case exercises)
DOCKER_CASES = [
    ("ubuntu", "docker.io", "Fast-path for single element"),
    ("ubuntu:latest", "docker.io", "Fast-path for single element"),
    ("vllm/vllm-openai:v0.11.0", "docker.io", "None of the above"),
    ("localhost/x", "localhost", "case maybeDomain == localhost"),
    ("index.docker.io/library/ubuntu", "docker.io", "case maybeDomain == legacyDefaultDomain"),
    ("example.com/x", "example.com", 'strings.ContainsAny(maybeDomain, ".:")'),
    ("127.0.0.1/x", "127.0.0.1", 'strings.ContainsAny(maybeDomain, ".:")'),
    ("example:5000/x", "example:5000", 'strings.ContainsAny(maybeDomain, ".:")'),
    ("[::1]:5000/x", "[::1]:5000", 'strings.ContainsAny(maybeDomain, ".:")'),
    ("Registry/x", "registry", "strings.ToLower(maybeDomain) != maybeDomain"),
]


@pytest.mark.parametrize(("image", "registry", "rule"), DOCKER_CASES)
def test_the_registry_of_an_image_follows_docker(image: str, registry: str, rule: str) -> None:
    assert rule in UPSTREAM.read_text()
    assert registry_of(image) == registry


@pytest.mark.parametrize(
    ("image_or_registry", "allowed", "expected"),
    [
        ("registry.eu.example:5000/a/b" + DIGEST, ["Registry.EU.example"], True),
        ("Registry.EU.example/a/b" + DIGEST, ["registry.eu.example:443"], True),
        ("registry.eu.example:5000/a/b", ["registry.eu.example:5001"], False),
        ("registry.eu.example/a/b", ["registry.eu.example:5000"], False),
        ("[2001:DB8:0::1]:5000/a/b", ["2001:db8::1"], True),
        ("2001:db8::1", ["[2001:DB8:0::1]"], True),
        ("nginx:1.25", ["index.docker.io"], True),
        ("nginx", ["registry.eu.example"], False),
        ("registry.eu.example.attacker.example/a", ["registry.eu.example"], False),
        ("[zz]:5000/a", ["registry.eu.example", "not a host"], False),
    ],
)
def test_a_registry_is_allowed_whatever_its_spelling(
    image_or_registry: str, allowed: list[str], expected: bool
) -> None:
    assert registry_allowed(image_or_registry, allowed) is expected


@pytest.mark.parametrize(
    ("url", "normalized", "port"),
    [
        ("HTTPS://S3.Example.EU:443/", "https://s3.example.eu", 443),
        ("https://[2001:DB8:0::1]:8443", "https://[2001:db8::1]:8443", 8443),
        ("http://objects.lab.internal:80", "http://objects.lab.internal", 80),
    ],
)
def test_an_endpoint_has_one_spelling_and_a_port(url: str, normalized: str, port: int) -> None:
    assert normalize_endpoint(url) == normalized
    assert endpoint_port(url) == port


def test_an_endpoint_is_allowed_whatever_its_spelling() -> None:
    allowed = ["https://[2001:DB8:0:0::1]:443/", "https://S3.Example.EU"]
    assert endpoint_allowed("https://[2001:db8::1]", allowed)
    assert endpoint_allowed("https://s3.example.eu:443", allowed)
    assert not endpoint_allowed("http://s3.example.eu", allowed)  # another scheme, another port
    assert not endpoint_allowed("https://s3.example.eu/bucket", allowed)  # not an endpoint
    assert not endpoint_allowed("https://s3.example.eu", ["s3.example.eu"])  # nor is the entry


def test_a_country_is_allowed_in_either_letter_case_and_nothing_else_is() -> None:
    assert country_allowed("de", ["DE"])
    assert country_allowed("DE", ["de"])
    assert not country_allowed("US", ["DE"])
    assert not country_allowed("DEU", ["DE", "DEU"])
    assert not country_allowed(None, ["DE"])


# --- the config boundary, the policy pack and the functions agree ------------------------------


def _pack(validate: Any, resource_type: str, props: dict[str, Any], config: dict[str, Any]) -> bool:
    violations: list[str] = []
    opts = PolicyResourceOptions(False, [], None, [], None, [], None)  # type: ignore[arg-type]
    args = ResourceValidationArgs(
        resource_type, props, "urn:pulumi:s::p::t::r", "r", opts, None, config
    )
    validate(args, lambda message, _urn=None: violations.append(message))
    return not violations


def _refused_paths(data: dict[str, Any]) -> set[str]:
    """The fields the config boundary refuses in a stack (none: it loads)."""
    try:
        load_stack_data(data, "case", ROOT)
    except StackConfigError as exc:
        return {p.path for p in exc.problems}
    return set()


def _stack_with(
    allowed_registries: list[str] | None = None,
    image: str | None = None,
    endpoints: list[str] | None = None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    data = copy.deepcopy(stack_data("staging"))
    residency = data["config"][NS + "residency"]
    model = data["config"][NS + "inference"]["models"][0]
    if allowed_registries is not None:
        residency["allowedRegistries"] = allowed_registries
    if endpoints is not None:
        residency["allowedObjectStoreEndpoints"] = endpoints
    if image is not None:
        model["image"] = image
    if endpoint is not None:
        model["source"]["endpoint"] = endpoint
    return data


def _workload(image: str) -> dict[str, Any]:
    return {"spec": {"template": {"spec": {"containers": [{"name": "vllm", "image": image}]}}}}


STACK_REGISTRY = "registry.fsn1.example.eu"
# (allowed registries as the stack writes them, the model's image)
REGISTRY_SPELLINGS = [
    (["Registry.EU.example"], "registry.eu.example/vllm/vllm-openai:v0.11.0" + DIGEST, True),
    (["registry.eu.example"], "Registry.EU.example:5000/vllm/vllm-openai:v0.11.0" + DIGEST, True),
    (["REGISTRY.eu.example"], "Registry.EU.example:443/vllm/vllm-openai" + DIGEST, True),
    (["2001:DB8:0:0::1"], "[2001:db8::1]:5000/vllm/vllm-openai" + DIGEST, True),
    (["2001:db8::1"], "[2001:DB8:0::1]/vllm/vllm-openai" + DIGEST, True),
    (["registry.eu.example"], "ghcr.io/vllm/vllm-openai" + DIGEST, False),
    (["2001:db8::1"], "[2001:db8::2]:5000/vllm/vllm-openai" + DIGEST, False),
]


@pytest.mark.parametrize(("allowed", "image", "expected"), REGISTRY_SPELLINGS)
def test_validate_and_the_pack_judge_each_registry_spelling_alike(
    allowed: list[str], image: str, expected: bool
) -> None:
    """The live bug: a stack whose registry was spelled in capitals or as a non-canonical IPv6
    address passed ``validate`` and then failed the policy pack. The pack is given the config
    both as ``policy-config`` writes it from the loaded stack and as written by hand."""
    allowed = [*allowed, STACK_REGISTRY]  # where the stack's other images come from
    assert registry_allowed(image, allowed) is expected
    endpoint = stack_data("staging")["config"][NS + "residency"]["allowedObjectStoreEndpoints"]
    refused = _refused_paths(_stack_with(allowed, image))
    assert refused == (set() if expected else {"inference.models[0].image"})
    hand_written = pack_config(["DE"], allowed, endpoint)["images-from-allowed-registries"]
    kind = "kubernetes:apps/v1:Deployment"
    assert _pack(validate_images, kind, _workload(image), hand_written) is expected
    if expected:  # a refused stack has no config to derive the pack's from
        policy = load_stack_data(_stack_with(allowed, image), "case", ROOT).residency
        derived = pack_config(
            sorted(policy.allowed_countries),
            list(policy.allowed_registries),
            list(policy.allowed_object_store_endpoints),
        )["images-from-allowed-registries"]
        assert _pack(validate_images, kind, _workload(image), derived)


# (allowed endpoints as the stack writes them, the model's source endpoint)
ENDPOINT_SPELLINGS = [
    (["https://[2001:DB8:0::1]"], "https://[2001:db8::1]:443/", True),
    (["https://S3.Example.EU:443"], "https://s3.example.eu", True),
    (["https://s3.example.eu"], "https://s3.example.eu:8443", False),
]


@pytest.mark.parametrize(("allowed", "endpoint", "expected"), ENDPOINT_SPELLINGS)
def test_validate_and_the_pack_judge_each_endpoint_spelling_alike(
    allowed: list[str], endpoint: str, expected: bool
) -> None:
    assert endpoint_allowed(endpoint, allowed) is expected
    refused = _refused_paths(_stack_with(endpoints=allowed, endpoint=endpoint))
    assert refused == (set() if expected else {"inference.models[0].source.endpoint"})
    env = {"name": "S3_ENDPOINT", "value": endpoint.upper().replace("HTTPS", "https", 1)}
    props = {"spec": {"template": {"spec": {"containers": [{"name": "c", "env": [env]}]}}}}
    pack = pack_config(["DE"], ["docker.io"], allowed)["object-store-endpoints-allowed"]
    assert _pack(validate_endpoints, "kubernetes:apps/v1:Deployment", props, pack) is expected


def test_an_endpoint_in_capital_scheme_is_still_checked_by_the_pack() -> None:
    env = {"name": "S3_ENDPOINT", "value": "HTTPS://s3.us-east-1.amazonaws.com"}
    props = {"spec": {"template": {"spec": {"containers": [{"name": "c", "env": [env]}]}}}}
    pack = pack_config(["DE"], ["docker.io"], ["https://s3.example.eu"])
    config = pack["object-store-endpoints-allowed"]
    assert not _pack(validate_endpoints, "kubernetes:apps/v1:Deployment", props, config)


def test_the_pack_reads_a_hand_written_country_in_either_case() -> None:
    config = {"allowedCountries": ["de", "fr"]}
    assert _pack(validate_gpu_hosts, "sovereign:gpu_host:GpuHost", {"country": "DE"}, config)
    assert not _pack(validate_gpu_hosts, "sovereign:gpu_host:GpuHost", {"country": "US"}, config)


def test_the_config_stores_registries_and_endpoints_in_their_one_spelling() -> None:
    data = _stack_with(
        allowed_registries=["Registry.FSN1.Example.EU", "2001:DB8:0::1"],
        endpoints=["https://FSN1.your-objectstorage.com:443/"],
        endpoint="https://fsn1.your-objectstorage.com",
    )
    policy = load_stack_data(data, "case", ROOT).residency
    assert policy.allowed_registries == ("registry.fsn1.example.eu", "2001:db8::1")
    assert policy.allowed_object_store_endpoints == ("https://fsn1.your-objectstorage.com",)


# --- config-key messages, as `sovereign validate` prints them ----------------------------------


def _validate(tmp_path: Path, text: str) -> str:
    (tmp_path / "Pulumi.yaml").write_text("name: sovereign-inference\nruntime: python\n")
    path = tmp_path / "Pulumi.case.yaml"
    path.write_text(text)
    result = sovereign("validate", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stdout + result.stderr


def _staging_text() -> str:
    return (ROOT / "stacks" / "Pulumi.staging.yaml").read_text()


def test_validate_calls_the_k3s_section_k3s(tmp_path: Path) -> None:
    text = _staging_text().replace(
        "  sovereign-inference:k3s:\n",
        "  sovereign-inference:k3s:\n    clusterCidr: 10.42.0.1/16\n",
        1,
    )
    out = _validate(tmp_path, text)
    assert "k3s.clusterCidr:" in out
    assert "k3S" not in out


def test_an_unknown_field_is_answered_with_the_closest_allowed_one(tmp_path: Path) -> None:
    text = _staging_text().replace("sovereign-inference:hosts:", "sovereign-inference:hostz:", 1)
    text = text.replace("      datacenter: fsn1-dc14\n", "      datacentre: fsn1-dc14\n", 1)
    out = _validate(tmp_path, text)
    assert "hostz: unknown field; did you mean 'hosts'?" in out


def test_an_unknown_nested_field_is_answered_from_its_own_section(tmp_path: Path) -> None:
    text = _staging_text().replace("    cudaVersion:", "    cudaVersio:", 1)
    out = _validate(tmp_path, text)
    assert "nvidia.cudaVersio: unknown field; did you mean 'cudaVersion'?" in out


def test_an_unquoted_cuda_version_is_told_to_be_quoted(tmp_path: Path) -> None:
    assert '    cudaVersion: "12.8"\n' in _staging_text()
    text = _staging_text().replace('    cudaVersion: "12.8"\n', "    cudaVersion: 12.8\n", 1)
    out = _validate(tmp_path, text)
    assert "nvidia.cudaVersion: expected text, got the number 12.8" in out
    assert 'put the value in quotes, e.g. "12.8"' in out


def test_render_writes_the_k3s_section_as_k3s(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = sovereign("render", "stacks/Pulumi.staging.yaml", "--out", str(out))
    assert result.returncode == 0, result.stderr
    (stack_json,) = out.rglob("stack.json")
    stack = json.loads(stack_json.read_text())
    assert "k3s" in stack
    assert "k3S" not in stack_json.read_text()


def test_the_k3s_mirror_of_an_ipv6_registry_is_a_url() -> None:
    base = lab_stack()
    residency = base.residency.model_copy(update={"allowed_registries": ("2001:db8::1",)})
    mirrors = k3s_registries(base.model_copy(update={"residency": residency}))["mirrors"]
    assert {m["endpoint"][0] for m in mirrors.values()} == {"https://[2001:db8::1]"}
