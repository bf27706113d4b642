"""Post-deploy suites: ``pytest -m verify tests/verify --stack-file stacks/Pulumi.<env>.yaml``.

Facts are collected once per host, in parallel, over one pinned SSH connection each; every test
then judges one layer of one host and fails with the layer, host, check, observed and expected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra.host

from components.config import load_stack_file
from components.config.loader import project_dir_for
from components.config.models import HostSpec, StackConfig
from components.execution.ssh import HostSession, HostTarget
from components.verification.results import CheckResult
from components.verification.runner import (
    Verification,
    hosts_from_outputs,
    load_outputs,
    verify_stack,
)
from components.verification.testinfra_backend import testinfra_host


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sovereign verify")
    group.addoption("--stack-file", help="stacks/Pulumi.<env>.yaml of the fleet to verify")
    group.addoption(
        "--outputs",
        help="pulumi stack output --json --show-secrets (hosts' addresses and keys, kubeconfig)",
    )


def _stack_file(config: pytest.Config) -> Path | None:
    value = config.getoption("--stack-file", default=None)
    return Path(value) if value else None


def _hosts(config: pytest.Config) -> list[HostSpec]:
    stack_file = _stack_file(config)
    if stack_file is None:
        return []
    stack = load_stack_file(stack_file)
    outputs = config.getoption("--outputs", default=None)
    return hosts_from_outputs(stack, load_outputs(Path(outputs))) if outputs else list(stack.hosts)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host_name" in metafunc.fixturenames:
        names = [h.name for h in _hosts(metafunc.config)]
        metafunc.parametrize("host_name", names, ids=names)


@pytest.fixture(scope="session")
def stack(pytestconfig: pytest.Config) -> StackConfig:
    stack_file = _stack_file(pytestconfig)
    if stack_file is None:
        pytest.fail("verification needs --stack-file stacks/Pulumi.<env>.yaml")
    return load_stack_file(stack_file)


def _kubeconfig(config: pytest.Config) -> str | None:
    """The stack's secret ``kubeconfig`` output, from ``--outputs`` (``--show-secrets``)."""
    outputs = config.getoption("--outputs", default=None)
    value = load_outputs(Path(outputs)).get("kubeconfig") if outputs else None
    return value if isinstance(value, str) else None


@pytest.fixture(scope="session")
def verification(pytestconfig: pytest.Config, stack: StackConfig) -> Verification:
    stack_file = _stack_file(pytestconfig)
    assert stack_file is not None
    return verify_stack(
        stack,
        project_dir_for(stack_file),
        hosts=_hosts(pytestconfig),
        kubeconfig=_kubeconfig(pytestconfig),
    )


@pytest.fixture(scope="session")
def host_specs(pytestconfig: pytest.Config) -> dict[str, HostSpec]:
    return {h.name: h for h in _hosts(pytestconfig)}


@pytest.fixture
def host(
    pytestconfig: pytest.Config, stack: StackConfig, host_specs: dict[str, HostSpec], host_name: str
) -> Iterator[testinfra.host.Host]:
    """testinfra's ``host`` for the host under test, over a pinned SSH session."""
    stack_file = _stack_file(pytestconfig)
    assert stack_file is not None
    session = HostSession(
        HostTarget.from_spec(host_specs[host_name], project_dir_for(stack_file)), stack.ssh
    )
    try:
        yield testinfra_host(session)
    finally:
        session.close()


def layer_results(verification: Verification, layer: str, host: str) -> list[CheckResult]:
    return [r for r in verification.results if r.layer == layer and r.host == host]


def assert_layer(verification: Verification, layer: str, host: str) -> None:
    results = layer_results(verification, layer, host)
    assert results, f"[{layer}] {host}: no checks ran"
    failed = [r.message() for r in results if r.status == "fail"]
    if failed:
        pytest.fail("\n".join(failed), pytrace=False)
    if all(r.status == "skip" for r in results):
        pytest.skip(f"[{layer}] {host}: {results[0].observed}")
