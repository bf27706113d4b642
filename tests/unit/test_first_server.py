"""Every part of a rollout agrees on which K3s server starts the cluster: the first host with role
``server`` in the stack file, also when the file lists an agent first.

The stacks here list an agent first, or their servers out of name order, so a consumer that took
``hosts[0]`` or the first name would disagree.
"""

from __future__ import annotations

from pathlib import Path

from components.config import StackConfig, load_stack_file
from components.config.models import host_address
from components.fleet import rollout_order
from components.k3s_cluster import K3sClusterSpec, cluster_access_props
from components.plan.cluster import api_endpoint, api_url, first_server
from components.plan.host_steps import k3s_config, k3s_role, render_host_steps

ROOT = Path(__file__).resolve().parents[2]


def reordered(stack: str, names: list[str]) -> StackConfig:
    """The example stack with its hosts listed in the order ``names`` gives, validated again."""
    config = load_stack_file(ROOT / "stacks" / f"Pulumi.{stack}.yaml")
    by_name = {h.name: h for h in config.hosts}
    data = config.model_dump(by_alias=True)
    data["hosts"] = [by_name[n].model_dump(by_alias=True) for n in names]
    return StackConfig.model_validate(data)


def three_servers() -> StackConfig:
    return reordered("prod-fra", ["fra-gpu-02", "fra-gpu-01", "fra-gpu-03"])


def agent_first() -> StackConfig:
    return reordered("staging", ["stg-gpu-2", "stg-gpu-1"])


def test_the_first_server_is_the_first_host_with_role_server() -> None:
    assert first_server(three_servers()).name == "fra-gpu-02"
    config = agent_first()
    assert config.hosts[0].role == "agent"
    assert first_server(config).name == "stg-gpu-1"


def test_the_first_server_initialises_the_cluster_and_the_others_join_it() -> None:
    config = three_servers()
    first = config.hosts[0]
    roles = {h.name: k3s_role(config, h) for h in config.hosts}
    assert roles == {
        "fra-gpu-02": "server-init",
        "fra-gpu-01": "server-join",
        "fra-gpu-03": "server-join",
    }
    for host in config.hosts[1:]:
        assert k3s_config(config, host)["server"] == api_url(host_address(first))
    assert "server" not in k3s_config(config, first)


def test_every_other_node_waits_for_the_first_servers_k3s_step() -> None:
    for config, first in ((three_servers(), "fra-gpu-02"), (agent_first(), "stg-gpu-1")):
        for host in config.hosts:
            (k3s,) = render_host_steps(config, host, only=("50-k3s",))
            expected = () if host.name == first else ((first, "50-k3s"),)
            assert k3s.waits_for == expected, host.name


def test_the_fleet_builds_the_first_server_first() -> None:
    assert [h.name for h in rollout_order(agent_first())] == ["stg-gpu-1", "stg-gpu-2"]
    assert rollout_order(three_servers())[0].name == "fra-gpu-02"


def test_the_kubeconfig_is_read_from_the_first_server_at_its_address() -> None:
    config = agent_first()
    server = config.hosts[1]
    props = cluster_access_props(K3sClusterSpec(stack=config))
    assert (props["host"], props["address"]) == (server.name, server.address)
    assert api_endpoint(config) == server.address
    assert props["serverUrl"] == api_url(server.address)
