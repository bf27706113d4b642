"""Post-deploy suites: ``pytest -m verify tests/verify --stack-file stacks/Pulumi.<env>.yaml``.

The same verification as ``sovereign verify`` (:func:`verify_stack`, run once per session): facts
are collected once per host, in parallel, over one pinned SSH connection each. There is one test
per planned check (:func:`components.plan.checks.host_checks` and ``cluster_checks``), its id
``<host>:<check id>``; it fails with the layer, host, check, observed and expected, and is skipped
with the reason when the check could not be judged.
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
from components.plan.checks import CLUSTER, cluster_checks, host_checks
from components.verification.results import Finding
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


def planned(config: pytest.Config, layer: str) -> list[tuple[str, str]]:
    """(host, check id) of every planned check of ``layer``: each hosts's, then the cluster's."""
    stack_file = _stack_file(config)
    if stack_file is None:
        return []
    stack = load_stack_file(stack_file)
    pairs = [
        (host.name, check.id)
        for host in _hosts(config)
        for check in host_checks(stack, host)
        if check.layer == layer
    ]
    pairs += [(CLUSTER, c.id) for c in cluster_checks(stack) if c.layer == layer]
    return pairs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "host_name" in metafunc.fixturenames and "check_id" in metafunc.fixturenames:
        layer = metafunc.module.LAYER
        pairs = planned(metafunc.config, layer)
        metafunc.parametrize(("host_name", "check_id"), pairs, ids=[f"{h}:{c}" for h, c in pairs])
    elif "host_name" in metafunc.fixturenames:
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


def assert_check(verification: Verification, host: str, check_id: str) -> None:
    """The one result of a planned check: fails with its message, skips with its reason."""
    found: list[Finding] = [r for r in verification.results if r.host == host and r.id == check_id]
    assert len(found) == 1, f"{host} {check_id}: {len(found)} results, expected one"
    (result,) = found
    if result.status == "fail":
        pytest.fail(result.message(), pytrace=False)
    if result.status == "skip":
        pytest.skip(f"[{result.layer}] {host} {result.check}: {result.observed}")
