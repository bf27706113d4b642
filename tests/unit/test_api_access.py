"""How clients outside the cluster reach the K3s API: the endpoint setting and the allowlist.

The Kubernetes provider runs as its own plugin process of the Pulumi engine and needs the API in
every operation (preview, up, refresh, destroy), so the API port is opened to the ranges the stack
names (``k3s.apiAllowedCidrs``) at the address it names (``k3s.apiEndpoint``). The rules are built
by running the rendered firewall script's own ``render_rules`` in bash.
"""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import StackConfig, StackConfigError
from components.config.loader import PROJECT, load_stack_data
from components.plan.cluster import api_server_url
from components.plan.host_steps import k3s_config, render_host_steps

ROOT = Path(__file__).resolve().parents[2]
K3S = f"{PROJECT}:k3s"


@cache
def _stack_data(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{name}.yaml").read_text())
    return data


def stack_with_k3s(name: str, **k3s: Any) -> dict[str, Any]:
    data = copy.deepcopy(_stack_data(name))
    data["config"][K3S].update(k3s)
    return data


def load(data: dict[str, Any]) -> StackConfig:
    return load_stack_data(data, "Pulumi.case.yaml", ROOT)


def problems_of(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(StackConfigError) as info:
        load(data)
    return {p.path: p.message for p in info.value.problems}


def firewall_rules(config: StackConfig, host_index: int) -> str:
    """The nftables ruleset the host's firewall step would load, built by its own bash code."""
    (step,) = render_host_steps(config, config.hosts[host_index], only=("60-firewall",))
    # everything up to the mode dispatch defines the step's variables and functions
    definitions = step.script.split('case "$SOVEREIGN_MODE" in')[0]
    # no sshd here: ssh_ports falls back to 22
    result = subprocess.run(
        ["bash", "-c", definitions + "\nrender_rules\n"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **step.env},
    )
    return result.stdout


def input_chain(rules: str) -> list[str]:
    chain = rules.split("chain input {")[1].split("}\n", 1)[0]
    return [line.strip() for line in chain.splitlines() if line.strip()]


def set_elements(rules: str, name: str) -> str:
    body = rules.split(f"set {name} {{")[1].split("}\n", 1)[0]
    return body.split("elements = {")[1].split("}")[0].strip() if "elements" in body else ""


# --- the endpoint --------------------------------------------------------------------------------


def test_api_url_is_the_first_server_not_the_gateway_name_in_tls_sans() -> None:
    # prod-fra's only TLS SAN is the gateway's public name
    config = load(stack_with_k3s("prod-fra"))
    assert config.k3s.tls_sans == ("inference.fra.example.eu",)
    assert api_server_url(config) == f"https://{config.servers[0].address}:6443"


def test_api_url_follows_the_api_endpoint_setting() -> None:
    config = load(stack_with_k3s("prod-fra", apiEndpoint="api.fra.example.eu"))
    assert api_server_url(config) == "https://api.fra.example.eu:6443"
    config = load(stack_with_k3s("prod-fra", apiEndpoint="2001:db8::6443"))
    assert api_server_url(config) == "https://[2001:db8::6443]:6443"


def test_api_endpoint_is_in_every_servers_certificate_once() -> None:
    config = load(stack_with_k3s("prod-fra", apiEndpoint="API.fra.example.eu"))
    for host in config.servers:
        sans = k3s_config(config, host)["tls-san"]
        assert sans == ["inference.fra.example.eu", "API.fra.example.eu", host.address]
    # the default endpoint (the first server's address) is that server's own address: listed once
    config = load(stack_with_k3s("prod-fra"))
    first = config.servers[0]
    assert k3s_config(config, first)["tls-san"] == ["inference.fra.example.eu", first.address]
    second = config.servers[1]
    assert k3s_config(config, second)["tls-san"] == [
        "inference.fra.example.eu",
        first.address,
        second.address,
    ]


def test_api_endpoint_on_an_agent_is_refused() -> None:
    data = stack_with_k3s("staging")
    agents = [h for h in data["config"][f"{PROJECT}:hosts"] if h["role"] == "agent"]
    data["config"][K3S]["apiEndpoint"] = agents[0]["address"]
    assert "an agent, which serves no API" in problems_of(data)["k3s.apiEndpoint"]


def test_api_endpoint_must_be_a_host_name_or_address() -> None:
    problems = problems_of(stack_with_k3s("prod-fra", apiEndpoint="https://api.example.eu"))
    assert "k3s.apiEndpoint" in problems


# --- the allowlist -------------------------------------------------------------------------------


@pytest.mark.parametrize("everything", ["0.0.0.0/0", "::/0"])
def test_api_allowed_cidrs_refuse_every_address(everything: str) -> None:
    data = stack_with_k3s("prod-fra", apiAllowedCidrs=["198.51.100.0/28", everything])
    assert "every address" in problems_of(data)["k3s.apiAllowedCidrs[1]"]


@pytest.mark.parametrize(
    "halves",
    [["0.0.0.0/1", "128.0.0.0/1"], ["::/1", "8000::/1"]],
    ids=["ipv4-halves", "ipv6-halves"],
)
def test_api_allowed_cidrs_refuse_ranges_that_together_cover_everything(
    halves: list[str],
) -> None:
    data = stack_with_k3s("prod-fra", apiAllowedCidrs=halves)
    assert "cover every address" in problems_of(data)["k3s.apiAllowedCidrs"]


@pytest.mark.parametrize("value", ["198.51.100.1/28", "198.51.100.0/33", "office", "10.0.0.01/32"])
def test_api_allowed_cidrs_take_network_ranges_only(value: str) -> None:
    assert "k3s.apiAllowedCidrs[0]" in problems_of(
        stack_with_k3s("prod-fra", apiAllowedCidrs=[value])
    )


def test_api_allowed_cidrs_listed_twice_are_refused() -> None:
    data = stack_with_k3s("prod-fra", apiAllowedCidrs=["198.51.100.0/28", "198.51.100.0/28"])
    assert "k3s.apiAllowedCidrs[1]" in problems_of(data)


def test_firewall_opens_the_api_port_to_the_allowed_ranges_on_servers() -> None:
    config = load(
        stack_with_k3s("staging", apiAllowedCidrs=["198.51.100.0/28", "2001:db8:70::/48"])
    )
    server = next(i for i, h in enumerate(config.hosts) if h.role == "server")
    rules = firewall_rules(config, server)
    chain = input_chain(rules)
    assert "ip saddr @api_clients tcp dport 6443 accept" in chain
    assert "ip6 saddr @api_clients6 tcp dport 6443 accept" in chain
    assert set_elements(rules, "api_clients") == "198.51.100.0/28"
    assert set_elements(rules, "api_clients6") == "2001:db8:70::/48"
    # nothing else is opened to those ranges
    assert [line for line in chain if "api_clients" in line] == [
        "ip saddr @api_clients tcp dport 6443 accept",
        "ip6 saddr @api_clients6 tcp dport 6443 accept",
    ]


def test_firewall_opens_no_api_port_on_agents_or_without_allowed_ranges() -> None:
    config = load(stack_with_k3s("staging", apiAllowedCidrs=["198.51.100.0/28"]))
    agent = next(i for i, h in enumerate(config.hosts) if h.role == "agent")
    assert set_elements(firewall_rules(config, agent), "api_clients") == ""
    config = load(stack_with_k3s("staging", apiAllowedCidrs=[]))
    server = next(i for i, h in enumerate(config.hosts) if h.role == "server")
    rules = firewall_rules(config, server)
    assert set_elements(rules, "api_clients") == ""
    assert set_elements(rules, "api_clients6") == ""
    # the API port stays open to the cluster's own nodes
    assert "ip saddr @cluster_nodes tcp dport { 2379-2380, 5001, 6443, 10250 } accept" in (
        input_chain(rules)
    )
