"""Runs ``__main__.py`` under Pulumi mocks for every shipped stack and checks the resource graph.

The config is handed to the program the way the engine does it: ``project:key`` entries with
structured values JSON-encoded, ``secure:`` values decrypted and their top-level keys listed as
secret. The mocks mimic each provider's contract: a ``HostStep`` returns its inputs plus what the
step found, ``ClusterAccess`` returns a kubeconfig and the Ready nodes, Kubernetes resources echo
their inputs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import runpy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor

from components.config import StackConfig, load_stack_file
from components.config.loader import build_stack_config, section_from_engine
from components.plan.host_steps import render_host_steps
from components.plan.kubernetes import InferenceStackSpec, inference_plan
from components.plan.kubernetes.gateway import (
    GATEWAY_SCALER_TLS,
    KEDA_SCALER_CLIENT_TLS,
    SCALER_CA_ANNOTATION,
    SCALER_CA_PLACEHOLDER,
)
from components.providers.scaler_pki import issue_scaler_certificates
from tests import provider_mocks

ROOT = Path(__file__).resolve().parents[2]
STACK_FILES = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
STACK_TYPE = "pulumi:pulumi:Stack"
HOST_STEP_TYPE = "pulumi-python:dynamic/sovereign:HostStep"
CLUSTER_ACCESS_TYPE = "pulumi-python:dynamic/sovereign:ClusterAccess"
SCALER_PKI_TYPE = "pulumi-python:dynamic/sovereign:ScalerPki"
FLEET_TYPE = "sovereign:fleet:Fleet"
GPU_HOST_TYPE = "sovereign:gpu_host:GpuHost"
CACHE_TYPE = "sovereign:nvme_weight_cache:NvmeWeightCache"
K3S_TYPE = "sovereign:k3s_cluster:K3sCluster"
INFERENCE_TYPE = "sovereign:inference_stack:InferenceStack"
K8S_PROVIDER_TYPE = "pulumi:providers:kubernetes"
HELM_TYPE = "kubernetes:helm.sh/v3:Release"
SCALED_OBJECT_TYPE = "kubernetes:keda.sh/v1alpha1:ScaledObject"
# What the mock K3s server hands back: its client key must never show in plain text.
MOCK_CLIENT_KEY = "mock-kubeconfig-client-key-5f0c2a9e7b1d"


def decrypted_test_value(key: str) -> str:
    return f"test-secret-{key}-0123456789abcdef"


def _decrypt_nested(value: Any, path: str, found: list[str]) -> Any:
    if isinstance(value, dict) and set(value) == {"secure"}:
        found.append(path)
        return decrypted_test_value(path)
    if isinstance(value, dict):
        return {k: _decrypt_nested(v, f"{path}.{k}", found) for k, v in value.items()}
    if isinstance(value, list):
        return [_decrypt_nested(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def engine_config(stack_file: Path) -> tuple[dict[str, str], list[str], list[str]]:
    """The flat string map and secret key list the engine gives a program for this stack, and
    every decrypted secret value (to look for in plain text)."""
    data = yaml.safe_load(stack_file.read_text())
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    plaintexts: list[str] = []
    for key, stored in data["config"].items():
        nested: list[str] = []
        value = _decrypt_nested(stored, key, nested)
        if nested:
            secret_keys.append(key)
            plaintexts += [decrypted_test_value(p) for p in nested]
        if isinstance(value, dict | list):
            config[key] = json.dumps(value)
        elif isinstance(value, bool):
            config[key] = "true" if value else "false"
        else:
            config[key] = str(value)
    return config, secret_keys, plaintexts


def engine_stack(stack_file: Path) -> StackConfig:
    """The stack as the program sees it under the engine (secrets decrypted)."""
    config, secret_keys, _ = engine_config(stack_file)
    section, problems = section_from_engine(config, frozenset(secret_keys))
    return build_stack_config(section, str(stack_file), problems)


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    provider: str
    dependencies: list[str]
    secret_paths: list[str]
    raw_inputs: dict[str, Any]
    aliases: list[dict[str, Any]] = field(default_factory=list)


def _secret_paths(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return [path]
        found: list[str] = []
        for k, v in value.items():
            found += _secret_paths(v, f"{path}.{k}" if path else k)
        return found
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _secret_paths(v, f"{path}[{i}]")]
    return []


def without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return "[secret]"
        return {k: without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def unwrap_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return unwrap_secrets(value["value"])
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value


def as_wire(value: Any) -> Any:
    """Plan data as the engine receives it (protobuf Struct: every number is a float)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: as_wire(v) for k, v in value.items()}
    return [as_wire(v) for v in value]


def scaler_ca_as_planned(value: Any) -> Any:
    """Registered inputs with the scaler CA's fingerprint (which the wiring puts where the plan
    holds a placeholder) back to that placeholder, after checking it is one."""
    if isinstance(value, dict):
        return {
            k: SCALER_CA_PLACEHOLDER
            if k == SCALER_CA_ANNOTATION and re.fullmatch(r"[0-9a-f]{64}", v)
            else scaler_ca_as_planned(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scaler_ca_as_planned(v) for v in value]
    return value


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, also recording parents, providers, dependencies and secrets."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        self.registrations.append(self.registration(request, response))
        return response

    def registration(self, request: Any, response: Any) -> Registration:
        raw = json_format.MessageToDict(request.object)
        return Registration(
            type=request.type,
            name=request.name,
            urn=response.urn,
            parent=request.parent,
            provider=request.provider,
            dependencies=list(request.dependencies),
            secret_paths=_secret_paths(raw),
            raw_inputs=raw,
            aliases=[json_format.MessageToDict(a) for a in request.aliases],
        )


class CountingMonitor(RecordingMonitor):
    """The SDK's mock monitor, counting registrations and keeping only their type and name."""

    def registration(self, request: Any, response: Any) -> Registration:
        return Registration(request.type, request.name, response.urn, "", "", [], [], {})


def mock_kubeconfig(server_url: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "default", "cluster": {"server": server_url}}],
            "users": [{"name": "default", "user": {"client-key-data": MOCK_CLIENT_KEY}}],
            "contexts": [{"name": "default", "context": {"cluster": "default", "user": "default"}}],
            "current-context": "default",
        }
    )


class ProgramMocks(pulumi.runtime.Mocks):
    """Each provider's contract, as the program relies on it."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        ordered = provider_mocks.new_resource(args.typ, args.name, inputs)
        if ordered is not None:
            return ordered
        if args.typ == HOST_STEP_TYPE:
            facts = {}
            if inputs["step"] == "40-nvme-cache":
                facts = {
                    "cache.mount_point": inputs["pins"]["cache.mountPoint"],
                    "cache.device": "/dev/md127",
                }
            outs = {**inputs, "result": "changed", "facts": facts, "changes": [], "inSync": True}
            return f"{inputs['host']}/{inputs['step']}", outs
        if args.typ == CLUSTER_ACCESS_TYPE:
            outs = {
                **inputs,
                "kubeconfig": mock_kubeconfig(inputs["serverUrl"]),
                "readyNodes": list(inputs["nodes"]),
            }
            return f"{inputs['host']}/kubeconfig", outs
        if args.typ == SCALER_PKI_TYPE:
            # the provider's create: PEM text for every output, the keys among them
            issued = issue_scaler_certificates(list(inputs["serverNames"]))
            return f"{args.name}-id", {**inputs, **asdict(issued)}
        return f"{args.name}-id", inputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        answer = provider_mocks.call(args.token, dict(args.args))
        if answer is None:
            raise AssertionError(f"the program called {args.token}, which no mock answers")
        return answer, []


@dataclass
class ProgramRun:
    registrations: list[Registration]
    stack_outputs: dict[str, Any]
    by_urn: dict[str, Registration] = field(default_factory=dict)

    def of_type(self, typ: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == typ]

    def closure(self, reg: Registration) -> set[str]:
        """Every URN ``reg`` waits for, directly or through what it waits for."""
        seen: set[str] = set()
        todo = list(reg.dependencies)
        while todo:
            urn = todo.pop()
            if urn in seen:
                continue
            seen.add(urn)
            if urn in self.by_urn:
                todo += self.by_urn[urn].dependencies
        return seen


async def _resolve_exports(exports: dict[str, Any]) -> dict[str, Any]:
    """Exported values as the engine would store them: secrets replaced by a marker."""
    resolved: dict[str, Any] = {}
    for name, value in exports.items():
        output = pulumi.Output.from_input(value)
        is_secret = await output._is_secret
        plain = await output.future()
        resolved[name] = "[secret]" if is_secret else plain
    return resolved


def use_fresh_event_loop() -> None:
    """Give this thread a new event loop: Pulumi's mocks run on the thread's current loop, and an
    ``asyncio.run()`` earlier in the session (the gateway's tests) leaves the thread with none."""
    asyncio.set_event_loop(asyncio.new_event_loop())


def run_mocked(
    program_body: Callable[[], None],
    config: dict[str, str],
    secret_keys: list[str],
    stack: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    record: bool = True,
) -> ProgramRun:
    """Run ``program_body`` as a Pulumi program under the mocks; collect what it registered
    (``record=False``: only count, for benchmarks of the program itself)."""
    exports: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", exports.__setitem__)
    resolved: dict[str, Any] = {}
    mocks = ProgramMocks()
    monitor = RecordingMonitor(mocks) if record else CountingMonitor(mocks)
    use_fresh_event_loop()
    pulumi.runtime.set_mocks(
        mocks, project="sovereign-inference", stack=stack, preview=False, monitor=monitor
    )
    pulumi.runtime.set_all_config(config, secret_keys)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[None]:
        program_body()

        async def collect() -> None:
            resolved.update(await _resolve_exports(exports))

        return pulumi.Output.from_input(collect())

    try:
        program()
    finally:
        pulumi.runtime.set_all_config({}, [])
    run = ProgramRun(monitor.registrations, resolved)
    run.by_urn = {r.urn: r for r in monitor.registrations}
    return run


def run_program(
    stack_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    project_dir: Path = ROOT,
    *,
    record: bool = True,
) -> ProgramRun:
    monkeypatch.chdir(project_dir)
    env = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
    config, secret_keys, _ = engine_config(stack_file)

    def body() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    return run_mocked(body, config, secret_keys, env, monkeypatch, record=record)


@pytest.fixture(scope="module", params=STACK_FILES, ids=lambda p: p.name)
def program_run(request: pytest.FixtureRequest) -> tuple[Path, ProgramRun]:
    """One run per stack, shared by the tests that only read what it registered."""
    stack_file: Path = request.param
    with pytest.MonkeyPatch.context() as monkeypatch:
        return stack_file, run_program(stack_file, monkeypatch)


def test_every_stack_is_covered() -> None:
    assert {p.name for p in STACK_FILES} >= {
        "Pulumi.lab.yaml",
        "Pulumi.staging.yaml",
        "Pulumi.prod-fra.yaml",
    }


def test_no_two_resources_share_type_and_name(program_run: tuple[Path, ProgramRun]) -> None:
    _, run = program_run
    keys = [(r.type, r.name) for r in run.registrations]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates


def test_every_resource_has_the_expected_parent(program_run: tuple[Path, ProgramRun]) -> None:
    _, run = program_run
    expected_parent = {
        FLEET_TYPE: STACK_TYPE,
        GPU_HOST_TYPE: FLEET_TYPE,
        CACHE_TYPE: GPU_HOST_TYPE,
        K3S_TYPE: STACK_TYPE,
        CLUSTER_ACCESS_TYPE: K3S_TYPE,
        INFERENCE_TYPE: STACK_TYPE,
        SCALER_PKI_TYPE: INFERENCE_TYPE,
    }
    for reg in run.registrations:
        if reg.type == STACK_TYPE:
            continue
        assert reg.parent, f"{reg.type} {reg.name} has no parent"
        parent_type = reg.parent.split("::")[2].split("$")[-1]
        if reg.type in expected_parent:
            assert parent_type == expected_parent[reg.type], f"{reg.name} under {parent_type}"
        elif reg.type == HOST_STEP_TYPE:
            assert parent_type in {GPU_HOST_TYPE, CACHE_TYPE}
            parent = run.by_urn[reg.parent]
            assert reg.name.startswith(parent.name.removesuffix("-cache") + "-")
        elif reg.type == K8S_PROVIDER_TYPE:
            assert parent_type == K3S_TYPE
        elif reg.type in provider_mocks.ORDERING_TYPES | {provider_mocks.HOST_KEY_PIN}:
            # a host's source: ordered (and pinned) before the fleet's hosts are built on it
            assert parent_type == FLEET_TYPE, f"{reg.type} {reg.name} under {parent_type}"
        else:
            assert reg.type.startswith("kubernetes:"), reg.type
            assert parent_type == INFERENCE_TYPE, f"{reg.type} {reg.name} under {parent_type}"
        if reg.type == CACHE_TYPE:
            assert reg.name == f"{run.by_urn[reg.parent].name}-cache"
        if reg.type == GPU_HOST_TYPE:
            # hosts were children of the stack before Fleet: the alias keeps their state (and
            # their steps') instead of replacing every step of every host
            assert reg.aliases, f"{reg.name} has no alias to its old place"
            specs = [a.get("spec", {}) for a in reg.aliases]
            assert all(
                a.get("noParent") or f"::{STACK_TYPE}::" in a.get("parentUrn", "") for a in specs
            )


def test_each_host_gets_its_steps_in_order(program_run: tuple[Path, ProgramRun]) -> None:
    stack_file, run = program_run
    # an ordered host's steps are rendered with the addresses its order returned
    config = provider_mocks.as_ordered(load_stack_file(stack_file))
    steps_by_host: dict[str, list[Registration]] = {}
    for reg in run.of_type(HOST_STEP_TYPE):
        steps_by_host.setdefault(reg.raw_inputs["host"], []).append(reg)
    assert set(steps_by_host) == {h.name for h in config.hosts}
    for host in config.hosts:
        expected = [s.name for s in render_host_steps(config, host)]
        registered = steps_by_host[host.name]
        assert [r.raw_inputs["step"] for r in registered] == expected
        plans = {s.name: s for s in render_host_steps(config, host)}
        for reg in registered:
            plan = plans[reg.raw_inputs["step"]]
            assert reg.raw_inputs["contentHash"] == plan.content_hash
            # what the step reads at run time: the hosts' addresses, an order's as it returned
            assert reg.raw_inputs.get("env", {}) == as_wire(plan.env)
        # each step waits for the one before it (directly, or through the cache component)
        for before, after in itertools.pairwise(registered):
            ancestors = {before.urn, before.parent}
            assert ancestors & set(after.dependencies), (
                f"{after.name} does not depend on {before.name}"
            )


def test_secrets_stay_secret(program_run: tuple[Path, ProgramRun]) -> None:
    stack_file, run = program_run
    _, _, plaintexts = engine_config(stack_file)
    plaintexts.append(MOCK_CLIENT_KEY)
    for reg in run.registrations:
        if reg.type == HOST_STEP_TYPE:
            assert "secretEnv" in reg.secret_paths, f"{reg.name}: secretEnv is not marked secret"
        if reg.type == K8S_PROVIDER_TYPE:
            assert "kubeconfig" in reg.secret_paths, "the provider's kubeconfig is not secret"
        if reg.type == "kubernetes:core/v1:Secret":
            assert "stringData" in reg.secret_paths, f"{reg.name}: content is not secret"
        visible = json.dumps(without_secrets(reg.raw_inputs))
        for plaintext in plaintexts:
            assert plaintext not in visible, f"{reg.name} exposes a secret in plain text"
    outputs = json.dumps(without_secrets(run.stack_outputs))
    for plaintext in plaintexts:
        assert plaintext not in outputs
    config = load_stack_file(stack_file)
    if config.k3s.install:
        assert run.stack_outputs["kubeconfig"] == "[secret]"


def test_stack_exports_what_verification_needs(program_run: tuple[Path, ProgramRun]) -> None:
    stack_file, run = program_run
    config = provider_mocks.as_ordered(load_stack_file(stack_file))
    assert run.stack_outputs["environment"] == config.environment
    exported = {h["name"]: h for h in run.stack_outputs["hosts"]}
    assert set(exported) == {h.name for h in config.hosts}
    for host in config.hosts:
        assert exported[host.name]["country"] == host.country
        assert exported[host.name]["address"] == host.address
        assert exported[host.name]["port"] == host.ssh.port
        assert exported[host.name]["hostKey"] == host.ssh.host_key
    facts = run.stack_outputs["facts"]
    for host in config.hosts:
        if host.nvme:
            assert facts[host.name]["cache.mount_point"] == config.cache.mount_point


def test_bad_config_stops_the_program_before_any_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    stack_file = ROOT / "stacks" / "Pulumi.staging.yaml"
    config, secret_keys, _ = engine_config(stack_file)
    hosts = json.loads(config["sovereign-inference:hosts"])
    hosts[1]["name"] = hosts[0]["name"]
    config["sovereign-inference:hosts"] = json.dumps(hosts)
    mocks = ProgramMocks()
    monitor = RecordingMonitor(mocks)
    use_fresh_event_loop()
    pulumi.runtime.set_mocks(
        mocks, project="sovereign-inference", stack="staging", preview=False, monitor=monitor
    )
    pulumi.runtime.set_all_config(config, secret_keys)
    monkeypatch.chdir(ROOT)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    try:
        with pytest.raises(Exception, match=r"hosts\[1\]\.name: duplicate host name"):
            program()
    finally:
        pulumi.runtime.set_all_config({}, [])
    assert not [r for r in monitor.registrations if r.type != STACK_TYPE]


def test_joining_nodes_wait_for_the_first_server(program_run: tuple[Path, ProgramRun]) -> None:
    stack_file, run = program_run
    config = load_stack_file(stack_file)
    k3s_steps = {
        r.raw_inputs["host"]: r
        for r in run.of_type(HOST_STEP_TYPE)
        if r.raw_inputs["step"] == "50-k3s"
    }
    if not config.k3s.install:
        assert not k3s_steps
        return
    first = config.servers[0].name
    assert set(k3s_steps) == {h.name for h in config.hosts}
    for host, reg in k3s_steps.items():
        if host != first:
            assert k3s_steps[first].urn in reg.dependencies, f"{host} joins before {first} is up"
        secret = reg.raw_inputs["secretEnv"]
        assert secret[SECRET_SIG_KEY] == SECRET_SIG
        assert set(secret["value"]) == {"K3S_TOKEN"}


def test_cluster_waits_for_every_host_and_reads_the_first_server(
    program_run: tuple[Path, ProgramRun],
) -> None:
    stack_file, run = program_run
    config = provider_mocks.as_ordered(load_stack_file(stack_file))
    access = run.of_type(CLUSTER_ACCESS_TYPE)
    if not config.k3s.install:
        assert not access
        assert not run.of_type(K8S_PROVIDER_TYPE)
        assert "kubeconfig" not in run.stack_outputs
        return
    (reg,) = access
    first = config.servers[0]
    assert reg.raw_inputs["host"] == first.name
    assert reg.raw_inputs["address"] == first.address
    assert reg.raw_inputs["hostKey"] == first.ssh.host_key
    assert sorted(reg.raw_inputs["nodes"]) == sorted(h.name for h in config.hosts)
    # the API endpoint, never a TLS SAN (the gateway's name, which may reach an agent)
    wanted = config.k3s.api_endpoint or first.address
    assert reg.raw_inputs["serverUrl"] == f"https://{wanted}:6443"
    last_steps = {
        r.urn
        for r in run.of_type(HOST_STEP_TYPE)
        if r.raw_inputs["step"] == render_host_steps(config, config.hosts[0])[-1].name
    }
    assert last_steps <= set(reg.dependencies), "the cluster is read before every host is done"
    (provider,) = run.of_type(K8S_PROVIDER_TYPE)
    assert reg.urn in provider.dependencies, "the provider is not built from the read kubeconfig"


def _inference_run(stack_file: Path, run: ProgramRun) -> list[Registration]:
    return [r for r in run.registrations if r.type.startswith("kubernetes:")]


def test_kubernetes_resources_are_the_plan_objects_unchanged(
    program_run: tuple[Path, ProgramRun],
) -> None:
    stack_file, run = program_run
    config = load_stack_file(stack_file)
    registered = _inference_run(stack_file, run)
    if not (config.k3s.install and config.inference.models):
        assert not registered
        return
    plan = inference_plan(InferenceStackSpec.from_stack(engine_stack(stack_file)))
    (provider,) = run.of_type(K8S_PROVIDER_TYPE)
    objects = {
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in plan.objects()
    }
    seen = set()
    for reg in registered:
        assert reg.provider.startswith(provider.urn), f"{reg.name} is not on the cluster's provider"
        if reg.type == HELM_TYPE:
            continue
        inputs = unwrap_secrets(reg.raw_inputs)
        key = (
            inputs["apiVersion"],
            inputs["kind"],
            inputs["metadata"].get("namespace"),
            inputs["metadata"]["name"],
        )
        assert key in objects, f"{reg.type} {reg.name} is not in the plan"
        if key[3] in (GATEWAY_SCALER_TLS, KEDA_SCALER_CLIENT_TLS):
            # the certificates come from ScalerPki, as secrets (tests/unit/test_scaler_trust_plan.py)
            assert "stringData" in reg.secret_paths
            inputs.pop("stringData")
        # camelCase plan dicts reach the engine key for key, value for value
        inputs = scaler_ca_as_planned(inputs)
        assert inputs == as_wire(objects[key]), f"{reg.name} differs from the plan"
        seen.add(key)
    assert seen == set(objects)
    releases = {r.raw_inputs["name"]: r.raw_inputs for r in run.of_type(HELM_TYPE)}
    assert set(releases) == {c.name for c in plan.charts}
    for chart in plan.charts:
        release = releases[chart.name]
        assert release["version"] == chart.version
        assert release["chart"] == chart.chart
        assert release["namespace"] == chart.namespace
        assert release["repositoryOpts"] == {"repo": chart.repository}
        assert scaler_ca_as_planned(release["values"]) == as_wire(chart.values)
    assert releases["keda"]["version"] == config.inference.charts.keda
    assert (
        releases["nvidia-device-plugin"]["version"] == config.inference.charts.nvidia_device_plugin
    )
    assert releases["dcgm-exporter"]["version"] == config.inference.charts.dcgm_exporter


def assert_no_inference_resources(run: ProgramRun) -> None:
    """What a stack without a cluster or without models gets: no chart, no Kubernetes object, no
    inference component, and no model list or gateway address among its outputs."""
    kubernetes = [r.type for r in run.registrations if r.type.startswith("kubernetes:")]
    assert not kubernetes, f"registered without a cluster or models: {kubernetes}"
    assert not run.of_type(INFERENCE_TYPE)
    assert not {"models", "gatewayUrl"} & set(run.stack_outputs)


def test_order_cluster_ready_then_keda_then_scaled_objects(
    program_run: tuple[Path, ProgramRun],
) -> None:
    stack_file, run = program_run
    config = load_stack_file(stack_file)
    if not (config.k3s.install and config.inference.models):
        # no cluster or no models (the lab stack): nothing to order, and nothing is registered
        assert_no_inference_resources(run)
        return
    (access,) = run.of_type(CLUSTER_ACCESS_TYPE)
    keda = next(r for r in run.of_type(HELM_TYPE) if r.raw_inputs["name"] == "keda")
    assert access.urn in run.closure(keda), "KEDA is installed before the cluster is Ready"
    scaled = run.of_type(SCALED_OBJECT_TYPE)
    assert len(scaled) == len(config.inference.models)
    for reg in scaled:
        assert keda.urn in reg.dependencies, f"{reg.name} is created before KEDA's CRDs"
    warmer = list(run.of_type("kubernetes:apps/v1:DaemonSet"))
    models = [
        r
        for r in run.of_type("kubernetes:apps/v1:Deployment")
        if r.raw_inputs["metadata"]["namespace"] == "sovereign-inference"
    ]
    assert len(models) == len(config.inference.models)
    if any(m.prefetch for m in config.inference.models):
        assert len(warmer) == 1
        for reg in models:
            assert warmer[0].urn in reg.dependencies, f"{reg.name} starts before the warmer"


def test_each_model_gets_deployment_service_scaled_object_from_config(
    program_run: tuple[Path, ProgramRun],
) -> None:
    stack_file, run = program_run
    config = load_stack_file(stack_file)
    if not (config.k3s.install and config.inference.models):
        assert_no_inference_resources(run)
        return

    def find(typ: str, name: str) -> dict[str, Any]:
        return next(
            r.raw_inputs
            for r in run.of_type(typ)
            if r.raw_inputs["metadata"]["name"] == name
            and r.raw_inputs["metadata"].get("namespace") == "sovereign-inference"
        )

    for model in config.inference.models:
        deployment = find("kubernetes:apps/v1:Deployment", model.name)
        pod = deployment["spec"]["template"]["spec"]
        (server,) = pod["containers"]
        assert server["image"] == (model.image or config.inference.image)
        gpus = str(model.gpus_per_replica)
        assert server["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert pod["runtimeClassName"] == "nvidia"
        args = server["args"]
        assert args[args.index("--served-model-name") + 1] == model.served
        assert args[args.index("--tensor-parallel-size") + 1] == gpus
        env = {e["name"]: e["value"] for e in server["env"]}
        assert env["HF_HUB_OFFLINE"] == env["VLLM_NO_USAGE_STATS"] == env["DO_NOT_TRACK"] == "1"
        service = find("kubernetes:core/v1:Service", model.name)
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
        scaled = find(SCALED_OBJECT_TYPE, model.name)["spec"]
        assert scaled["minReplicaCount"] == 0
        assert scaled["maxReplicaCount"] == model.max_replicas
        assert scaled["cooldownPeriod"] == model.idle_seconds
        assert scaled["scaleTargetRef"]["name"] == model.name
        (trigger,) = scaled["triggers"]
        assert trigger["type"] == "external-push"
        assert trigger["metadata"]["model"] == model.served
        assert trigger["metadata"]["scalerAddress"].endswith(":9090")
    assert run.stack_outputs["models"] == [m.served for m in config.inference.models]
    scheme = "https" if config.inference.gateway.tls_secret else "http"
    assert run.stack_outputs["gatewayUrl"] == f"{scheme}://{config.inference.gateway.host}/v1"


def test_model_replicas_are_left_to_keda(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Deployment asks Pulumi to ignore spec.replicas, so a refresh never scales it back."""
    stack_file = ROOT / "stacks" / "Pulumi.staging.yaml"
    seen: dict[str, list[str]] = {}
    import components.inference_stack as wiring

    real = wiring.kubernetes_resource

    def spy(name: str, obj: dict[str, Any], opts: pulumi.ResourceOptions) -> Any:
        seen[f"{obj['kind']}/{obj['metadata']['name']}"] = list(opts.ignore_changes or [])
        return real(name, obj, opts)

    monkeypatch.setattr(wiring, "kubernetes_resource", spy)
    run_program(stack_file, monkeypatch)
    config = load_stack_file(stack_file)
    for model in config.inference.models:
        assert seen[f"Deployment/{model.name}"] == ["spec.replicas"]
    assert seen["Deployment/sovereign-gateway"] == []
