"""No script carries a host's address: the addresses reach the steps at run time (``StepPlan.env``),
so the scripts a reviewer reads before any machine is ordered are the ones that run."""

from __future__ import annotations

from components.config import load_stack_file
from components.plan.host_steps import cluster_node_addresses, k3s_config, render_host_steps
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
