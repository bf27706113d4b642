"""No script carries a host's address: the addresses reach the steps at run time (``StepPlan.env``),
so the scripts a reviewer reads before any machine is ordered are the ones that run."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from components.config import load_stack_file
from components.plan.host_steps import cluster_node_addresses, k3s_config, render_host_steps
from tests import provider_mocks
from tests.conftest import ROOT

STAGING = ROOT / "stacks" / "Pulumi.staging.yaml"


def test_other_addresses_change_the_steps_env_and_no_script() -> None:
    stack = load_stack_file(STAGING)
    moved = stack.with_addresses({"stg-gpu-1": "198.51.100.121", "stg-gpu-2": "2001:db8::22"})
    for before, after in zip(stack.hosts, moved.hosts, strict=True):
        old = {s.name: s for s in render_host_steps(stack, before)}
        new = {s.name: s for s in render_host_steps(moved, after)}
        assert {n: s.script for n, s in old.items()} == {n: s.script for n, s in new.items()}
        assert {n: s.content_hash for n, s in old.items()} == {
            n: s.content_hash for n, s in new.items()
        }
        assert old["60-firewall"].env != new["60-firewall"].env
    agent = render_host_steps(moved, moved.hosts[1])
    k3s = next(s for s in agent if s.name == "50-k3s")
    assert k3s.env == {"SOVEREIGN_K3S_ADDRESSES": "server: https://198.51.100.121:6443"}
    firewall = next(s for s in agent if s.name == "60-firewall")
    assert firewall.env == {"SOVEREIGN_CLUSTER_NODES": "198.51.100.121 2001:db8::22"}


def test_the_k3s_config_is_the_script_part_then_the_address_part() -> None:
    stack = load_stack_file(STAGING)
    server = k3s_config(stack, stack.hosts[0])
    assert "server" not in server
    assert server["tls-san"] == ["staging.inference.example.eu", "198.51.100.21"]
    assert k3s_config(stack, stack.hosts[1])["server"] == "https://198.51.100.21:6443"


def test_cluster_nodes_are_ips_each_once_ipv4_first_and_an_ordered_placeholder_in_sight() -> None:
    stack = load_stack_file(ROOT / "stacks" / "Pulumi.scw-par.yaml").with_pending_addresses()
    assert cluster_node_addresses(stack) == [
        "scw-gpu-1.known-after-order.invalid",
        "scw-gpu-2.known-after-order.invalid",
    ]
    staging = load_stack_file(STAGING)
    doubled = staging.with_addresses({"stg-gpu-2": "2001:DB8::1"})
    assert cluster_node_addresses(doubled) == ["198.51.100.21", "2001:db8::1"]


def k3s_config_file(step_script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What the K3s step would write to config.yaml: its own code up to the mode dispatch, run
    in bash with ``env`` as the executor sets it."""
    definitions = step_script.split('case "$SOVEREIGN_MODE" in', maxsplit=1)[0]
    return subprocess.run(
        ["bash", "-c", definitions + '\nprintf "%s" "$CONFIG_CONTENT"\n'],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", **env},
    )


@pytest.mark.parametrize("stack_name", ["prod-fra", "staging", "scw-par"])
def test_the_k3s_step_writes_the_planned_config_for_every_role(stack_name: str) -> None:
    stack = provider_mocks.as_ordered(
        load_stack_file(ROOT / "stacks" / f"Pulumi.{stack_name}.yaml")
    )
    for host in stack.hosts:
        (k3s,) = render_host_steps(stack, host, only=("50-k3s",))
        written = k3s_config_file(k3s.script, k3s.env)
        assert written.returncode == 0, written.stdout + written.stderr
        assert written.stdout == yaml.safe_dump(k3s_config(stack, host), sort_keys=False).rstrip()
        assert yaml.safe_load(written.stdout) == k3s_config(stack, host)


@pytest.mark.parametrize(
    "fragment",
    ["server: https://198.51.100.21:6443\ndisable: traefik", "token: stolen", "", "tls-san: [a]"],
)
def test_the_k3s_step_takes_nothing_but_addresses_from_its_env(fragment: str) -> None:
    stack = load_stack_file(STAGING)
    (k3s,) = render_host_steps(stack, stack.hosts[1], only=("50-k3s",))
    written = k3s_config_file(k3s.script, {"SOVEREIGN_K3S_ADDRESSES": fragment})
    assert written.returncode == 3
    assert written.stdout.startswith("SOVEREIGN-REFUSED SOVEREIGN_K3S_ADDRESSES")


def firewall_nodes(nodes: str) -> subprocess.CompletedProcess[str]:
    stack = load_stack_file(STAGING)
    (firewall,) = render_host_steps(stack, stack.hosts[0], only=("60-firewall",))
    definitions = firewall.script.split('case "$SOVEREIGN_MODE" in')[0]
    return subprocess.run(
        [
            "bash",
            "-c",
            definitions + '\necho "${CLUSTER_NODES_V4[*]}|${CLUSTER_NODES_V6[*]}"\n',
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SOVEREIGN_CLUSTER_NODES": nodes},
    )


def test_the_firewall_takes_the_addresses_the_plan_writes_by_family() -> None:
    addresses = ["198.51.100.21", "0.0.0.0", "255.255.255.255", "2001:db8::22", "::1", "fe80::"]
    addresses.append("2001:db8:0:0:0:0:0:1")
    result = firewall_nodes(" ".join(addresses))
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip() == (
        "198.51.100.21 0.0.0.0 255.255.255.255|2001:db8::22 ::1 fe80:: 2001:db8:0:0:0:0:0:1"
    )
    assert firewall_nodes("").stdout.strip() == "|"


@pytest.mark.parametrize(
    "node",
    [
        "999.1.1.1",
        "010.1.1.1",
        "1.2.3",
        ":::",
        "abcde::1",
        "2001:DB8::1",
        "1::2::3",
        "1:2:3:4:5:6:7",
        "::ffff:192.0.2.1",
        "fe80::1%eth0",
        "scw-gpu-1.known-after-order.invalid",
        "198.51.100.21\n198.51.100.22",
    ],
)
def test_the_firewall_refuses_anything_but_an_address(node: str) -> None:
    result = firewall_nodes(node)
    assert result.returncode == 3, result.stdout
    assert result.stdout.startswith("SOVEREIGN-REFUSED SOVEREIGN_CLUSTER_NODES")
