"""The host inventory model (components.sources.inventory): it reads back what the lab writes, the
loader fills stack hosts through it, and ``sovereign validate`` refuses a broken inventory naming
the field's path in the file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.config import StackConfigError, load_stack_file
from components.lab.inventory import LabInventory, inventory_path
from components.sources.inventory import (
    INVENTORY_VERSION,
    Inventory,
    inventory_from_document,
)
from tests.conftest import sovereign
from tests.unit.test_config_files import lab_inventory, lab_project

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
FINGERPRINT = "SHA256:+fbNpjwgxE6bDmUPtq8ZNRzo6+gBw5c0jZ3phoOBXOg"


def written_document(project: Path) -> dict[str, Any]:
    """The inventory file ``sovereign lab up`` writes for lab-1 and lab-2, as JSON data."""
    lab_inventory(project)
    document: dict[str, Any] = json.loads(inventory_path(project / ".lab").read_text())
    return document


def byo_entry(name: str, address: str, port: int = 22) -> dict[str, Any]:
    """An entry written for a host that is not a lab guest: connection facts only."""
    return {
        "name": name,
        "address": address,
        "port": port,
        "user": "debian",
        "privateKey": "~/.ssh/id_ed25519",
        "hostKey": FINGERPRINT,
    }


# --- what the lab writes, the model reads ----------------------------------------------------------


def test_the_model_reads_back_what_the_lab_writes(tmp_path: Path) -> None:
    written = lab_inventory(tmp_path)
    document = json.loads(inventory_path(tmp_path / ".lab").read_text())
    inventory = inventory_from_document(document, Inventory)
    assert inventory.document() == document  # every key kept, none added
    assert inventory_from_document(document, LabInventory) == written
    first = inventory.hosts[0]
    assert (first.name, first.port, first.host_key) == ("lab-1", 2301, FINGERPRINT)
    assert first.private_key == tmp_path / ".lab" / "id_ed25519"
    assert first.host_dir == tmp_path / ".lab" / "hosts" / "lab-1"


def test_an_inventory_without_the_lab_bookkeeping_round_trips_without_it() -> None:
    document = {"version": 1, "hosts": [byo_entry("gpu-1", "203.0.113.10")]}
    inventory = inventory_from_document(document, Inventory)
    assert inventory.hosts[0].pid is None
    assert inventory.hosts[0].host_dir is None
    written = inventory.document()
    assert written == {"version": 1, "hosts": [{**byo_entry("gpu-1", "203.0.113.10"), "nvme": []}]}
    assert inventory_from_document(written, Inventory) == inventory


def test_the_loader_fills_hosts_from_an_inventory_written_for_other_hosts(tmp_path: Path) -> None:
    stack = lab_project(tmp_path)
    (tmp_path / ".lab").mkdir()
    document = {"version": INVENTORY_VERSION, "hosts": [byo_entry("lab-2", "192.0.2.7", 2222)]}
    inventory_path(tmp_path / ".lab").write_text(json.dumps(document))
    config = load_stack_file(stack, require_inventory=True)
    lab1, lab2 = config.hosts
    assert (lab2.address, lab2.ssh.port, lab2.ssh.user) == ("192.0.2.7", 2222, "debian")
    assert lab2.ssh.private_key == "file:~/.ssh/id_ed25519"
    assert lab2.ssh.host_key == FINGERPRINT
    assert lab1.ssh.host_key is None  # not in the inventory: left as the stack says


# --- refusals, through `sovereign validate` as a user runs it --------------------------------------


def _set(host: int, key: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        document["hosts"][host][key] = value

    return change


def _drop(host: int, key: str) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        del document["hosts"][host][key]

    return change


REFUSALS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    # name: (change to the written file, the start of the problem `validate` prints)
    "wrong-version": (
        lambda d: d.update(version=2),
        "inventory: version: is 2; expected the number 1",
    ),
    "version-as-text": (
        lambda d: d.update(version="1"),
        "inventory: version: is '1'; expected the number 1",
    ),
    "no-version": (lambda d: d.pop("version"), "inventory: version: required field is missing"),
    "unknown-field": (
        _set(1, "hostKeyType", "ed25519"),
        "inventory: hosts[1].hostKeyType: unknown field",
    ),
    "unknown-top-level-field": (
        lambda d: d.update(host=[]),
        "inventory: host: unknown field; did you mean 'hosts'?",
    ),
    "private-key-as-user": (
        _set(1, "user", PRIVATE_KEY),
        "inventory: hosts[1].user: holds key material",
    ),
    "private-key-inline": (
        _set(1, "privateKey", PRIVATE_KEY),
        "inventory: hosts[1].privateKey: holds key material",
    ),
    "private-key-in-nvme": (
        _set(0, "nvme", ["nvme-QEMU_NVMe_Ctrl_LAB1NVME0", PRIVATE_KEY]),
        "inventory: hosts[0].nvme[1]: holds key material",
    ),
    "port-out-of-range": (
        _set(1, "port", 70000),
        "inventory: hosts[1].port: Input should be less than or equal to 65535",
    ),
    "port-as-text": (
        _set(1, "port", "2302"),
        "inventory: hosts[1].port: expected a number, not a string",
    ),
    "duplicate-names": (
        _set(1, "name", "lab-1"),
        "inventory: hosts[1].name: duplicate host name 'lab-1' (also hosts[0])",
    ),
    "bad-host-key": (
        _set(1, "hostKey", "SHA256:abc"),
        "inventory: hosts[1].hostKey: expected an SSH host-key fingerprint",
    ),
    "missing-address": (
        _drop(1, "address"),
        "inventory: hosts[1].address: required field is missing",
    ),
    "hosts-not-a-list": (lambda d: d.update(hosts={}), "inventory: hosts: expected a list"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_validate_refuses_a_broken_inventory_naming_the_field(tmp_path: Path, case: str) -> None:
    lab_project(tmp_path)
    document = written_document(tmp_path)
    change, expected = REFUSALS[case]
    change(document)
    inventory_path(tmp_path / ".lab").write_text(json.dumps(document))
    result = sovereign("validate", "stacks/Pulumi.lab.yaml", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"stacks/Pulumi.lab.yaml: {expected}") for line in lines), lines
    assert "Traceback" not in result.stderr
    assert "b3BlbnNzaC1rZXktdjE" not in result.stdout + result.stderr


def test_key_material_is_refused_before_anything_else(tmp_path: Path) -> None:
    """A key in the file is the one thing reported: no other check reads, echoes or logs it."""
    lab_project(tmp_path)
    document = written_document(tmp_path)
    document["version"] = 2
    document["hosts"][0]["port"] = "not a port"
    document["hosts"][1]["hostDir"] = PRIVATE_KEY
    inventory_path(tmp_path / ".lab").write_text(json.dumps(document))
    result = sovereign("validate", "stacks/Pulumi.lab.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "stacks/Pulumi.lab.yaml: inventory: hosts[1].hostDir: holds key material; never put key "
        "material in a stack file: give a reference such as file:PATH or env:VARIABLE, or a "
        "Pulumi secret"
    ]


# --- the model on its own --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["name", "address", "user", "privateKey", "hostKey", "hostKeyPublic", "hostDir"]
)
def test_the_model_itself_has_no_room_for_a_private_key(field: str) -> None:
    entry = {**byo_entry("gpu-1", "203.0.113.10"), field: PRIVATE_KEY}
    with pytest.raises(StackConfigError) as info:
        inventory_from_document({"version": 1, "hosts": [entry]}, Inventory)
    (problem,) = info.value.problems
    assert problem.path == "inventory"
    assert problem.message.startswith(f"hosts[0].{field}: ")
    assert "b3BlbnNzaC1rZXktdjE" not in problem.message


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(StackConfigError, match="expected a JSON object"):
        inventory_from_document([], Inventory)
