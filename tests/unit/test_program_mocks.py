"""Runs ``__main__.py`` under Pulumi mocks for every shipped stack and checks the resource graph.

The config is handed to the program the way the engine does it: ``project:key`` entries with
structured values JSON-encoded, ``secure:`` values decrypted and listed as secret keys.
"""

from __future__ import annotations

import itertools
import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor

from components.config import load_stack_file
from components.plan.host_steps import render_host_steps

ROOT = Path(__file__).resolve().parents[2]
STACK_FILES = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
STACK_TYPE = "pulumi:pulumi:Stack"
HOST_STEP_TYPE = "pulumi-python:dynamic/sovereign:HostStep"


def decrypted_test_value(key: str) -> str:
    return f"test-secret-{key}-0123456789abcdef"


def engine_config(stack_file: Path) -> tuple[dict[str, str], list[str]]:
    """The flat string map and secret key list the engine gives a program for this stack."""
    data = yaml.safe_load(stack_file.read_text())
    config: dict[str, str] = {}
    secret_keys: list[str] = []
    for key, value in data["config"].items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            config[key] = decrypted_test_value(key)
            secret_keys.append(key)
        elif isinstance(value, dict | list):
            config[key] = json.dumps(value)
        elif isinstance(value, bool):
            config[key] = "true" if value else "false"
        else:
            config[key] = str(value)
    return config, secret_keys


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    parent: str
    dependencies: list[str]
    secret_paths: list[str]
    raw_inputs: dict[str, Any]


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


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SECRET_SIG_KEY) == SECRET_SIG:
            return "[secret]"
        return {k: _without_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, also recording parents, dependencies and secret inputs."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)  # type: ignore[no-untyped-call]
        raw = json_format.MessageToDict(request.object)
        self.registrations.append(
            Registration(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                dependencies=list(request.dependencies),
                secret_paths=_secret_paths(raw),
                raw_inputs=raw,
            )
        )
        return response


class HostStepMocks(pulumi.runtime.Mocks):
    """Mimics the HostStep provider's contract: outputs are the inputs plus what the step found."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        if args.typ == HOST_STEP_TYPE:
            inputs = dict(args.inputs)
            facts = {}
            if inputs["step"] == "40-nvme-cache":
                facts = {
                    "cache.mount_point": inputs["pins"]["cache.mountPoint"],
                    "cache.device": "/dev/md127",
                }
            outs = {**inputs, "result": "changed", "facts": facts, "changes": [], "inSync": True}
            return f"{inputs['host']}/{inputs['step']}", outs
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


@dataclass
class ProgramRun:
    registrations: list[Registration]
    stack_outputs: dict[str, Any]
    by_urn: dict[str, Registration] = field(default_factory=dict)


async def _resolve_exports(exports: dict[str, Any]) -> dict[str, Any]:
    """Exported values as the engine would store them: secrets replaced by a marker."""
    resolved: dict[str, Any] = {}
    for name, value in exports.items():
        output = pulumi.Output.from_input(value)
        is_secret = await output._is_secret
        plain = await output.future()
        resolved[name] = "[secret]" if is_secret else plain
    return resolved


def run_program(stack_file: Path, monkeypatch: pytest.MonkeyPatch) -> ProgramRun:
    monkeypatch.chdir(ROOT)
    exports: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", exports.__setitem__)
    resolved: dict[str, Any] = {}
    env = stack_file.name.removeprefix("Pulumi.").removesuffix(".yaml")
    mocks = HostStepMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(
        mocks, project="sovereign-inference", stack=env, preview=False, monitor=monitor
    )
    config, secret_keys = engine_config(stack_file)
    pulumi.runtime.set_all_config(config, secret_keys)

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def program() -> pulumi.Output[None]:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

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


@pytest.fixture(params=STACK_FILES, ids=lambda p: p.name)
def program_run(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, ProgramRun]:
    stack_file: Path = request.param
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
    for reg in run.registrations:
        if reg.type == STACK_TYPE:
            continue
        assert reg.parent, f"{reg.type} {reg.name} has no parent"
        parent = run.by_urn.get(reg.parent, None)
        if reg.type == "sovereign:gpu_host:GpuHost":
            assert reg.parent.split("::")[2] == STACK_TYPE, (
                f"{reg.name} is not a child of the stack"
            )
        elif reg.type == "sovereign:nvme_weight_cache:NvmeWeightCache":
            assert parent is not None
            assert parent.type == "sovereign:gpu_host:GpuHost"
            assert reg.name == f"{parent.name}-cache"
        elif reg.type == HOST_STEP_TYPE:
            assert parent is not None
            assert parent.type in {
                "sovereign:gpu_host:GpuHost",
                "sovereign:nvme_weight_cache:NvmeWeightCache",
            }
            assert reg.name.startswith(parent.name.removesuffix("-cache") + "-")


def test_each_host_gets_its_steps_in_order(program_run: tuple[Path, ProgramRun]) -> None:
    stack_file, run = program_run
    config = load_stack_file(stack_file)
    steps_by_host: dict[str, list[Registration]] = {}
    for reg in run.registrations:
        if reg.type == HOST_STEP_TYPE:
            host = reg.raw_inputs["host"]
            steps_by_host.setdefault(host, []).append(reg)
    assert set(steps_by_host) == {h.name for h in config.hosts}
    for host in config.hosts:
        expected = [s.name for s in render_host_steps(config, host)]
        registered = steps_by_host[host.name]
        assert [r.raw_inputs["step"] for r in registered] == expected
        hashes = {s.name: s.content_hash for s in render_host_steps(config, host)}
        for reg in registered:
            assert reg.raw_inputs["contentHash"] == hashes[reg.raw_inputs["step"]]
        # each step waits for the one before it (directly, or through the cache component)
        for before, after in itertools.pairwise(registered):
            ancestors = {before.urn, before.parent}
            assert ancestors & set(after.dependencies), (
                f"{after.name} does not depend on {before.name}"
            )


def test_secrets_stay_secret(program_run: tuple[Path, ProgramRun]) -> None:
    stack_file, run = program_run
    _, secret_keys = engine_config(stack_file)
    plaintexts = [decrypted_test_value(k) for k in secret_keys]
    for reg in run.registrations:
        if reg.type == HOST_STEP_TYPE:
            assert "secretEnv" in reg.secret_paths, f"{reg.name}: secretEnv is not marked secret"
        visible = json.dumps(_without_secrets(reg.raw_inputs))
        for plaintext in plaintexts:
            assert plaintext not in visible, f"{reg.name} exposes a secret in plain text"
    outputs = json.dumps(_without_secrets(run.stack_outputs))
    for plaintext in plaintexts:
        assert plaintext not in outputs


def test_stack_exports_what_verification_needs(program_run: tuple[Path, ProgramRun]) -> None:
    stack_file, run = program_run
    config = load_stack_file(stack_file)
    assert run.stack_outputs["environment"] == config.environment
    exported = {h["name"]: h for h in run.stack_outputs["hosts"]}
    assert set(exported) == {h.name for h in config.hosts}
    for host in config.hosts:
        assert exported[host.name]["country"] == host.country
    facts = run.stack_outputs["facts"]
    for host in config.hosts:
        if host.nvme:
            assert facts[host.name]["cache.mount_point"] == config.cache.mount_point


def test_bad_config_stops_the_program_before_any_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    stack_file = ROOT / "stacks" / "Pulumi.staging.yaml"
    config, secret_keys = engine_config(stack_file)
    hosts = json.loads(config["sovereign-inference:hosts"])
    hosts[1]["name"] = hosts[0]["name"]
    config["sovereign-inference:hosts"] = json.dumps(hosts)
    mocks = HostStepMocks()
    monitor = RecordingMonitor(mocks)
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
        for r in run.registrations
        if r.type == HOST_STEP_TYPE and r.raw_inputs["step"] == "50-k3s"
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
