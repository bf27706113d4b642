"""Machine sources under Pulumi mocks: what each source orders, and how the order feeds host setup.

The program (``__main__.py``) runs on the example stacks and on variants of them; the mocks answer
as each provider's contract says (``tests/provider_mocks.py``). Checked per source: the ordered
machine's type carries the host's ``gpu``; the stack's SSH key is registered and the machine is
installed with it; the steps reach the machine at the address its order returned, with the host key
pinned on first contact (or the stack's pin); a destroy runs every teardown step before the machine
is released; a place outside the residency policy orders nothing.
"""

from __future__ import annotations

import copy
import graphlib
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.config import catalog, load_stack_file
from components.config.catalog import MachineType, machine_type, os_image
from components.config.errors import StackConfigError
from components.plan.host_steps import render_host_steps
from components.sources.connection import OrderContext
from components.sources.ordering import connect_host
from tests import provider_mocks as pm
from tests.unit.test_program_mocks import (
    HOST_STEP_TYPE,
    ROOT,
    ProgramRun,
    Registration,
    run_mocked,
    run_program,
)

SCW_STACK = ROOT / "stacks" / "Pulumi.scw-par.yaml"
OVH_STACK = ROOT / "stacks" / "Pulumi.ovh-gra.yaml"
BYO_STACK = ROOT / "stacks" / "Pulumi.staging.yaml"
PREFIX = "sovereign-inference:"


def stack_data(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def write_stack(tmp_path: Path, env: str, data: dict[str, Any]) -> Path:
    data = copy.deepcopy(data)
    data["config"][PREFIX + "environment"] = env
    path = tmp_path / f"Pulumi.{env}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def hosts_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    hosts: list[dict[str, Any]] = data["config"][PREFIX + "hosts"]
    return hosts


def only(run: ProgramRun, typ: str, name: str | None = None) -> Registration:
    found = [r for r in run.of_type(typ) if name is None or r.name == name]
    assert len(found) == 1, f"{typ} {name}: {[r.name for r in found]}"
    return found[0]


def steps_of(run: ProgramRun, host: str) -> list[Registration]:
    return [r for r in run.of_type(HOST_STEP_TYPE) if r.raw_inputs["host"] == host]


@pytest.fixture(scope="module")
def scw_run() -> ProgramRun:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_program(SCW_STACK, monkeypatch)


@pytest.fixture(scope="module")
def ovh_run() -> ProgramRun:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_program(OVH_STACK, monkeypatch)


# --- Scaleway -------------------------------------------------------------------------------


def test_scaleway_instances_are_the_types_that_carry_the_hosts_gpus(scw_run: ProgramRun) -> None:
    stack = load_stack_file(SCW_STACK)
    for host in stack.hosts:
        assert host.scaleway is not None
        server = only(scw_run, pm.SCW_SERVER, f"{host.name}-server").raw_inputs
        ordered = machine_type("scaleway", "instance", server["type"])
        assert ordered is not None
        assert (ordered.gpu_model, ordered.gpu_count) == (host.gpu.model, host.gpu.count)
        image = os_image("scaleway", "instance", host.scaleway.os)
        assert image is not None
        assert server["image"] == image.name
        assert server["zone"] == host.scaleway.zone == host.datacenter


def test_scaleway_registers_the_stacks_key_once_before_any_instance(scw_run: ProgramRun) -> None:
    public_key = hosts_of(stack_data(SCW_STACK))[0]["ssh"]["publicKey"]
    key = only(scw_run, pm.SCW_SSH_KEY)  # both hosts use one key: registered once
    assert key.raw_inputs["publicKey"] == public_key
    for server in scw_run.of_type(pm.SCW_SERVER):
        # Scaleway installs the project's registered keys when an Instance boots
        assert key.urn in server.dependencies, f"{server.name} may boot before the key exists"


def test_scaleway_steps_reach_the_ordered_address_with_the_first_contact_pin(
    scw_run: ProgramRun,
) -> None:
    for host in ("scw-gpu-1", "scw-gpu-2"):
        ip = only(scw_run, pm.SCW_IP, f"{host}-ip")
        server = only(scw_run, pm.SCW_SERVER, f"{host}-server")
        # the Instance takes the IP resource's id: the address is that IP's
        assert server.raw_inputs["ipId"].startswith(ip.raw_inputs["zone"] + "/")
        address = pm.ipv4_for(f"{host}-ip", "51.159")
        pin = only(scw_run, pm.HOST_KEY_PIN, f"{host}-host-key")
        assert pin.raw_inputs["address"] == address
        assert server.urn in pin.dependencies, "the pin is taken before the machine exists"
        steps = steps_of(scw_run, host)
        assert steps
        server_id = pm.new_resource(server.type, server.name, server.raw_inputs)
        assert server_id is not None
        # another server at this address (a replacement) is pinned again, and set up again
        assert pin.raw_inputs["machineId"] == server_id[0]
        for step in steps:
            assert step.raw_inputs["address"] == address
            assert step.raw_inputs["hostKey"] == pm.host_key_for(address)
            assert step.raw_inputs["machineId"] == server_id[0]
            assert pin.urn in step.dependencies
    exported = {h["name"]: h for h in scw_run.stack_outputs["hosts"]}
    assert exported["scw-gpu-1"]["address"] == pm.ipv4_for("scw-gpu-1-ip", "51.159")
    assert exported["scw-gpu-1"]["hostKey"] == pm.host_key_for(exported["scw-gpu-1"]["address"])
    assert exported["scw-gpu-1"]["source"] == "scaleway"


def test_elastic_metal_is_ordered_by_offer_and_os_with_the_key_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = stack_data(SCW_STACK)
    agent = hosts_of(data)[1]
    agent["scaleway"] = {
        "kind": "elastic-metal",
        "type": "EM-T220E-L40S",
        "zone": "fr-par-2",
        "os": "ubuntu-22.04",
    }
    agent["gpu"] = {"model": "L40S-48GB", "count": 2}
    run = run_program(write_stack(tmp_path, "scw-metal", data), monkeypatch)
    metal = only(run, pm.SCW_METAL, "scw-gpu-2-server").raw_inputs
    offer = pm.call(pm.SCW_GET_OFFER, {"name": "EM-T220E-L40S", "zone": "fr-par-2"})
    system = pm.call(
        pm.SCW_GET_OS,
        {"name": "Ubuntu", "version": "22.04 LTS (Jammy Jellyfish)", "zone": "fr-par-2"},
    )
    assert offer is not None
    assert system is not None
    assert metal["offer"] == offer["offerId"]
    assert metal["os"] == system["osId"]
    key = only(run, pm.SCW_SSH_KEY)
    assert metal["sshKeyIds"] == [pm.new_resource(key.type, key.name, key.raw_inputs)[0]]  # type: ignore[index]
    address = pm.ipv4_for("scw-gpu-2-server", "51.159")
    assert {s.raw_inputs["address"] for s in steps_of(run, "scw-gpu-2")} == {address}


# --- OVHcloud -------------------------------------------------------------------------------


def test_ovh_instance_takes_flavour_and_image_ids_from_the_regions_lists(
    ovh_run: ProgramRun,
) -> None:
    instance = only(ovh_run, pm.OVH_INSTANCE, "ovh-gpu-1-server").raw_inputs
    flavors = pm.call(
        pm.OVH_GET_FLAVORS, {"serviceName": instance["serviceName"], "region": "GRA11"}
    )
    images = pm.call(pm.OVH_GET_IMAGES, {"serviceName": instance["serviceName"], "region": "GRA11"})
    assert flavors is not None
    assert images is not None
    by_name = {f["name"]: f["id"] for f in flavors["flavors"]}
    image_ids = {i["name"]: i["id"] for i in images["images"]}
    assert instance["flavor"]["flavorId"] == by_name["l40s-90"]
    ordered = machine_type("ovh", "cloud-instance", "l40s-90")
    assert ordered is not None
    assert (ordered.gpu_model, ordered.gpu_count) == ("L40S-48GB", 1)
    assert instance["bootFrom"]["imageId"] == image_ids["Ubuntu 22.04"]
    assert instance["region"] == "GRA11"
    assert instance["billingPeriod"] == "hourly"
    assert instance["network"]["public"] is True


def test_ovh_registers_the_key_and_installs_the_instance_with_it(ovh_run: ProgramRun) -> None:
    public_key = hosts_of(stack_data(OVH_STACK))[0]["ssh"]["publicKey"]
    key = only(ovh_run, pm.OVH_SSH_KEY)
    assert key.raw_inputs["publicKey"] == public_key
    instance = only(ovh_run, pm.OVH_INSTANCE, "ovh-gpu-1-server")
    assert instance.raw_inputs["sshKey"]["name"] == key.raw_inputs["name"]
    assert key.urn in instance.dependencies


def test_ovh_steps_reach_the_instances_ipv4_address(ovh_run: ProgramRun) -> None:
    address = pm.ipv4_for("ovh-gpu-1-server", "57.128")  # the API lists an IPv6 one first
    for step in steps_of(ovh_run, "ovh-gpu-1"):
        assert step.raw_inputs["address"] == address
        assert step.raw_inputs["hostKey"] == pm.host_key_for(address)


def test_a_rented_dedicated_server_is_reinstalled_with_the_os_and_key(ovh_run: ProgramRun) -> None:
    host = hosts_of(stack_data(OVH_STACK))[1]
    task = only(ovh_run, pm.OVH_REINSTALL, "ovh-gpu-2-install")
    image = os_image("ovh", "dedicated", host["ovh"]["os"])
    assert image is not None
    assert task.raw_inputs["os"] == image.name
    assert task.raw_inputs["serviceName"] == host["ovh"]["serviceName"]
    assert task.raw_inputs["customizations"]["sshKey"] == host["ssh"]["publicKey"]
    assert not list(ovh_run.of_type(pm.OVH_DEDICATED)), "a rented server is not ordered"
    address = pm.OVH_RENTED[host["ovh"]["serviceName"]][0]
    for step in steps_of(ovh_run, "ovh-gpu-2"):
        assert step.raw_inputs["address"] == address
        assert task.urn in step.dependencies, f"{step.name} may run before the reinstall"


def test_a_new_dedicated_server_needs_its_plan_in_the_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = stack_data(OVH_STACK)
    agent = hosts_of(data)[1]
    agent["ovh"] = {
        "kind": "dedicated",
        "plan": "24sk-gpu-l40s",
        "subsidiary": "FR",
        "os": "debian-12",
    }
    with pytest.raises(StackConfigError) as info:
        run_program(write_stack(tmp_path, "ovh-order", data), monkeypatch)
    # no plan code with a known GPU fit-out is in the catalog: nothing is ordered on a guess
    assert "hosts[1].ovh.plan: the catalog lists no ovh dedicated type" in str(info.value)


def test_a_new_dedicated_server_is_ordered_in_the_hosts_datacenter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a plan the catalog knows (entered here), the server is ordered with the plan in the
    host's datacenter, installed with the stack's OS and key, and set up at the address it gets."""
    plan = MachineType("ovh", "dedicated", "24sk-gpu-l40s", "L40S-48GB", 2, "test entry")
    monkeypatch.setitem(catalog.MACHINE_TYPES, ("ovh", "dedicated"), (plan,))
    data = stack_data(OVH_STACK)
    agent = hosts_of(data)[1]
    agent["ovh"] = {"kind": "dedicated", "plan": plan.name, "subsidiary": "FR", "os": "debian-12"}
    run = run_program(write_stack(tmp_path, "ovh-order", data), monkeypatch)
    server = only(run, pm.OVH_DEDICATED, "ovh-gpu-2-server").raw_inputs
    (ordered,) = server["plans"]
    assert ordered["planCode"] == plan.name
    assert {"label": "dedicated_datacenter", "value": "gra3"} in ordered["configurations"]
    assert server["ovhSubsidiary"] == "FR"
    assert server["os"] == "debian12_64"
    assert server["customizations"]["sshKey"] == agent["ssh"]["publicKey"]
    assert not run.of_type(pm.OVH_REINSTALL)
    address = pm.ipv4_for("ovh-gpu-2-server", "51.91")
    assert {s.raw_inputs["address"] for s in steps_of(run, "ovh-gpu-2")} == {address}


# --- every source ---------------------------------------------------------------------------


def mixed_stack() -> dict[str, Any]:
    """One K3s server ordered from Scaleway, an agent from OVHcloud and a byo agent."""
    data = stack_data(SCW_STACK)
    scw = hosts_of(data)[0]
    ovh_host = copy.deepcopy(hosts_of(stack_data(OVH_STACK))[0])
    ovh_host["role"] = "agent"
    byo = copy.deepcopy(hosts_of(stack_data(BYO_STACK))[1])
    data["config"][PREFIX + "hosts"] = [scw, ovh_host, byo]
    return data


def test_a_stack_mixes_byo_scaleway_and_ovh_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_stack(tmp_path, "mixed", mixed_stack())
    run = run_program(path, monkeypatch)
    stack = pm.as_ordered(load_stack_file(path))
    by_name = {h.name: h for h in stack.hosts}
    assert by_name["stg-gpu-2"].source == "byo"
    # what render shows: the scripts as they run, the ordered addresses not known yet
    reviewed = load_stack_file(path).with_pending_addresses()
    for name, host in by_name.items():
        steps = steps_of(run, name)
        expected = {s.name: s for s in render_host_steps(stack, host)}
        planned = {s.name: s for s in render_host_steps(reviewed, reviewed.hosts[0])}
        assert [s.raw_inputs["step"] for s in steps] == list(expected)
        for step in steps:
            plan = expected[step.raw_inputs["step"]]
            assert step.raw_inputs["address"] == host.address
            assert step.raw_inputs["hostKey"] == host.ssh.host_key
            # no script carries an address: the one reviewed is the one that runs
            assert step.raw_inputs["contentHash"] == plan.content_hash
            if name == reviewed.hosts[0].name:
                assert step.raw_inputs["script"] == planned[plan.name].script
            # the addresses reach the step at run time, the ordered ones from their orders:
            # the byo host's firewall admits the ordered machines, the agents join the
            # ordered server at its address
            assert step.raw_inputs.get("env", {}) == plan.env
    assert not [r for r in run.of_type(pm.HOST_KEY_PIN) if r.name.startswith("stg-")]
    k3s_join = next(s for s in steps_of(run, "stg-gpu-2") if s.raw_inputs["step"] == "50-k3s")
    server = f"server: https://{by_name['scw-gpu-1'].address}:6443"
    assert server in k3s_join.raw_inputs["env"]["SOVEREIGN_K3S_ADDRESSES"]
    assert by_name["scw-gpu-1"].address not in k3s_join.raw_inputs["script"]
    firewall = next(s for s in steps_of(run, "stg-gpu-2") if s.raw_inputs["step"] == "60-firewall")
    nodes = firewall.raw_inputs["env"]["SOVEREIGN_CLUSTER_NODES"].split()
    assert {by_name["scw-gpu-1"].address, by_name["ovh-gpu-1"].address} <= set(nodes)


def destroy_order(run: ProgramRun) -> list[str]:
    """The URNs in the order ``pulumi destroy`` deletes them: a resource goes only once every
    resource that depends on it, or is its child, has gone (the engine's rule)."""
    dependents: dict[str, set[str]] = {r.urn: set() for r in run.registrations}
    for reg in run.registrations:
        for needed in [*reg.dependencies, reg.parent]:
            if needed in dependents:
                dependents[needed].add(reg.urn)
    return list(graphlib.TopologicalSorter(dependents).static_order())


def test_destroy_runs_every_teardown_step_before_the_machine_is_released(
    scw_run: ProgramRun, ovh_run: ProgramRun
) -> None:
    for run, releases in (
        (scw_run, {"scw-gpu-1": "scw-gpu-1-server", "scw-gpu-2": "scw-gpu-2-server"}),
        (ovh_run, {"ovh-gpu-1": "ovh-gpu-1-server", "ovh-gpu-2": "ovh-gpu-2-install"}),
    ):
        order = destroy_order(run)
        position = {urn: i for i, urn in enumerate(order)}
        for host, release in releases.items():
            machine = next(r for r in run.registrations if r.name == release)
            steps = steps_of(run, host)
            with_teardown = [s for s in steps if s.raw_inputs.get("hasTeardown")]
            assert with_teardown, f"{host} has no step with a teardown to order"
            for step in steps:
                assert position[step.urn] < position[machine.urn], (
                    f"{step.name} would run its teardown after {release} is released"
                )


def test_a_place_outside_the_policy_orders_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = stack_data(OVH_STACK)
    hosts_of(data)[0]["ovh"]["region"] = "US-EAST-VA-1"
    path = write_stack(tmp_path, "ovh-us", data)
    with pytest.raises(StackConfigError) as info:
        run_program(path, monkeypatch)
    message = str(info.value)
    assert "hosts[0].ovh.region" in message
    assert "GRA11" in message.upper(), "the allowed places are not named"


@pytest.mark.parametrize(
    ("stack_file", "section", "field", "place"),
    [
        (SCW_STACK, "scaleway", "zone", "us-east-1"),
        (OVH_STACK, "ovh", "region", "US-EAST-VA-1"),
    ],
    ids=["scaleway", "ovh"],
)
def test_the_program_refuses_a_place_the_config_was_bypassed_for(
    monkeypatch: pytest.MonkeyPatch, stack_file: Path, section: str, field: str, place: str
) -> None:
    """A team's own program that builds hosts without the config boundary orders nothing
    outside the policy either."""
    stack = load_stack_file(stack_file)
    order = getattr(stack.hosts[0], section)
    assert order is not None
    moved = stack.hosts[0].model_copy(
        update={
            section: order.model_copy(update={field: place}),
            "datacenter": place.lower(),
        }
    )

    def body() -> None:
        refusal = rf"hosts\[0\]\.{section}\.{field}.*nothing was ordered"
        with pytest.raises(ValueError, match=refusal):
            connect_host(moved, OrderContext(stack, str(ROOT)))

    run = run_mocked(body, {}, [], "bypass", monkeypatch)
    assert [r.type for r in run.registrations if r.type != "pulumi:pulumi:Stack"] == []


def test_first_contact_is_announced_with_how_to_pin_it(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(pulumi.log, "info", lambda message, *_a, **_k: said.append(message))
    run_program(SCW_STACK, monkeypatch)
    for index, host in enumerate(("scw-gpu-1", "scw-gpu-2")):
        key = pm.host_key_for(pm.ipv4_for(f"{host}-ip", "51.159"))
        lines = [line for line in said if line.startswith(f"{host}: host key")]
        assert lines == [
            f"{host}: host key {key} pinned on first contact (stack output hosts); to pin it in "
            f"the stack set hosts[{index}].ssh.hostKey: {key}"
        ]


def test_a_host_key_pinned_in_the_stack_is_used_and_nothing_is_pinned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = stack_data(SCW_STACK)
    pinned = "SHA256:" + "A" * 43
    hosts_of(data)[0]["ssh"]["hostKey"] = pinned
    run = run_program(write_stack(tmp_path, "scw-pinned", data), monkeypatch)
    assert [r.name for r in run.of_type(pm.HOST_KEY_PIN)] == ["scw-gpu-2-host-key"]
    assert {s.raw_inputs["hostKey"] for s in steps_of(run, "scw-gpu-1")} == {pinned}


@pytest.mark.parametrize(
    ("service", "datacenter", "expected"),
    [
        ("ns3141592.ip-51-91-12.eu", "rbx8", "the stack says datacenter rbx8 but OVHcloud places"),
        ("ns2718281.ip-15-235-1.net", "gra3", "in 'bhs7' (CA), outside the residency policy"),
    ],
    ids=["elsewhere", "outside-the-eu"],
)
def test_a_rented_server_is_held_to_where_its_record_says_before_any_reinstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str, datacenter: str, expected: str
) -> None:
    data = stack_data(OVH_STACK)
    agent = hosts_of(data)[1]
    agent["ovh"]["serviceName"] = service
    agent["datacenter"] = datacenter
    with pytest.raises(Exception, match="nothing was installed on it") as info:
        run_program(write_stack(tmp_path, "ovh-rented", data), monkeypatch)
    assert expected in str(info.value)
