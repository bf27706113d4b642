"""The lab inventory file: exact keys, round trip, versioning, the lab's required bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.cli import main
from components.lab.inventory import (
    EMPTY_LAB,
    INVENTORY_VERSION,
    InventoryError,
    LabHost,
    LabInventory,
    inventory_path,
    load_inventory,
    save_inventory,
)


def lab_host(index: int, lab_dir: Path, first_port: int = 2200) -> LabHost:
    """Lab host ``lab-INDEX`` as ``sovereign lab up`` records it (SSH on ``first_port + index``)."""
    return LabHost(
        name=f"lab-{index}",
        index=index,
        address="127.0.0.1",
        port=first_port + index,
        user="root",
        private_key=lab_dir / "id_ed25519",
        host_key="SHA256:+fbNpjwgxE6bDmUPtq8ZNRzo6+gBw5c0jZ3phoOBXOg",
        host_key_public="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiWrWq1eHxPZVedWeZkBJhNmsJDeF3e1P43ijtEuHyZ",
        nvme=(f"nvme-QEMU_NVMe_Ctrl_LAB{index}NVME0", f"nvme-QEMU_NVMe_Ctrl_LAB{index}NVME1"),
        pid=4000 + index,
        host_dir=lab_dir / "hosts" / f"lab-{index}",
    )


def lab_inventory(*hosts: LabHost) -> LabInventory:
    return LabInventory(version=INVENTORY_VERSION, hosts=hosts)


def test_round_trip_through_the_file(tmp_path: Path) -> None:
    inventory = lab_inventory(lab_host(1, tmp_path), lab_host(2, tmp_path))
    save_inventory(tmp_path, inventory)
    assert load_inventory(tmp_path) == inventory


def test_the_file_has_the_documented_keys(tmp_path: Path) -> None:
    save_inventory(tmp_path, lab_inventory(lab_host(1, tmp_path)))
    document = json.loads(inventory_path(tmp_path).read_text())
    assert document["version"] == 1
    (entry,) = document["hosts"]
    assert entry == {
        "name": "lab-1",
        "address": "127.0.0.1",
        "port": 2201,
        "user": "root",
        "privateKey": str(tmp_path / "id_ed25519"),
        "hostKey": "SHA256:+fbNpjwgxE6bDmUPtq8ZNRzo6+gBw5c0jZ3phoOBXOg",
        "hostKeyPublic": (
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiWrWq1eHxPZVedWeZkBJhNmsJDeF3e1P43ijtEuHyZ"
        ),
        "nvme": ["nvme-QEMU_NVMe_Ctrl_LAB1NVME0", "nvme-QEMU_NVMe_Ctrl_LAB1NVME1"],
        "pid": 4001,
        "index": 1,
        "hostDir": str(tmp_path / "hosts" / "lab-1"),
    }


def test_no_file_means_an_empty_lab(tmp_path: Path) -> None:
    assert load_inventory(tmp_path) == EMPTY_LAB


def test_saving_an_empty_inventory_removes_the_file(tmp_path: Path) -> None:
    save_inventory(tmp_path, lab_inventory(lab_host(1, tmp_path)))
    save_inventory(tmp_path, EMPTY_LAB)
    assert not inventory_path(tmp_path).exists()


def test_an_unknown_version_is_refused(tmp_path: Path) -> None:
    inventory_path(tmp_path).write_text(json.dumps({"version": 2, "hosts": []}))
    with pytest.raises(InventoryError, match="version: is 2; expected the number 1"):
        load_inventory(tmp_path)


def test_a_host_missing_a_field_is_refused(tmp_path: Path) -> None:
    entry = lab_inventory(lab_host(1, tmp_path)).document()["hosts"][0]
    del entry["hostKey"]
    inventory_path(tmp_path).write_text(json.dumps({"version": 1, "hosts": [entry]}))
    with pytest.raises(InventoryError, match=r"hosts\[0\]\.hostKey: required field is missing"):
        load_inventory(tmp_path)


@pytest.mark.parametrize("field", ["pid", "index", "hostDir", "hostKeyPublic"])
def test_the_lab_refuses_an_entry_without_its_bookkeeping(tmp_path: Path, field: str) -> None:
    """An inventory written for other hosts lacks these; ``lab status`` and ``lab down`` need them."""
    entry = lab_inventory(lab_host(1, tmp_path)).document()["hosts"][0]
    del entry[field]
    inventory_path(tmp_path).write_text(json.dumps({"version": 1, "hosts": [entry]}))
    with pytest.raises(InventoryError, match=rf"hosts\[0\]\.{field}: required field is missing"):
        load_inventory(tmp_path)


def test_hosts_stay_ordered_by_index_and_replace_by_name(tmp_path: Path) -> None:
    inventory = EMPTY_LAB.with_host(lab_host(3, tmp_path)).with_host(lab_host(1, tmp_path))
    assert [host.name for host in inventory.hosts] == ["lab-1", "lab-3"]
    assert len(inventory.with_host(lab_host(1, tmp_path)).hosts) == 2
    assert [host.name for host in inventory.without({"lab-1"}).hosts] == ["lab-3"]


def test_lab_up_refuses_a_lab_directory_the_inventory_cannot_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key's path goes into the stack as file:PATH; refused before minutes of image building."""
    lab_dir = tmp_path / "my lab"
    status = main(["lab", "up", "--hosts", "1", "--nvme", "0", "--lab-dir", str(lab_dir)])
    assert status == 2
    assert "lab up: lab directory" in capsys.readouterr().err
    assert not lab_dir.exists()
