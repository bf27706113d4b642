"""The lab inventory (``<lab dir>/inventory.json``): what ``lab up`` started, for stacks and tests.

``stacks/Pulumi.lab.yaml`` names this file; the config loader takes each host's address, port, user,
private key and pinned host-key fingerprint from it. The format is versioned; keys beyond those the
loader reads (pid, files) serve ``lab status`` and ``lab down``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INVENTORY_VERSION = 1
INVENTORY_FILE = "inventory.json"


class InventoryError(ValueError):
    """The inventory file is missing fields or is of an unknown version."""


@dataclass(frozen=True)
class InventoryHost:
    """One running lab guest as the inventory records it."""

    name: str
    index: int
    address: str
    port: int
    user: str
    private_key: Path
    host_key: str
    host_key_public: str
    nvme: tuple[str, ...]
    pid: int
    host_dir: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "privateKey": str(self.private_key),
            "hostKey": self.host_key,
            "hostKeyPublic": self.host_key_public,
            "nvme": list(self.nvme),
            "pid": self.pid,
            "index": self.index,
            "hostDir": str(self.host_dir),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InventoryHost:
        try:
            return cls(
                name=str(data["name"]),
                index=int(data["index"]),
                address=str(data["address"]),
                port=int(data["port"]),
                user=str(data["user"]),
                private_key=Path(data["privateKey"]),
                host_key=str(data["hostKey"]),
                host_key_public=str(data["hostKeyPublic"]),
                nvme=tuple(str(disk) for disk in data["nvme"]),
                pid=int(data["pid"]),
                host_dir=Path(data["hostDir"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InventoryError(f"inventory host entry {data!r}: {exc!r}") from exc


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[InventoryHost, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"version": INVENTORY_VERSION, "hosts": [host.to_json() for host in self.hosts]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Inventory:
        if data.get("version") != INVENTORY_VERSION:
            raise InventoryError(
                f"inventory version {data.get('version')!r}: expected {INVENTORY_VERSION}"
            )
        return cls(tuple(InventoryHost.from_json(host) for host in data.get("hosts", [])))

    def by_name(self, name: str) -> InventoryHost | None:
        return next((host for host in self.hosts if host.name == name), None)

    def with_host(self, host: InventoryHost) -> Inventory:
        """A copy with ``host`` added, replacing any entry of the same name."""
        others = tuple(existing for existing in self.hosts if existing.name != host.name)
        return Inventory(tuple(sorted((*others, host), key=lambda entry: entry.index)))

    def without(self, names: set[str]) -> Inventory:
        return Inventory(tuple(host for host in self.hosts if host.name not in names))


def inventory_path(lab_dir: Path) -> Path:
    return lab_dir / INVENTORY_FILE


def load_inventory(lab_dir: Path) -> Inventory:
    """The lab's inventory; an empty one when the lab has none."""
    path = inventory_path(lab_dir)
    if not path.exists():
        return Inventory()
    return Inventory.from_json(json.loads(path.read_text()))


def save_inventory(lab_dir: Path, inventory: Inventory) -> None:
    """Write atomically (a reader never sees half a file); an empty inventory removes the file."""
    path = inventory_path(lab_dir)
    if not inventory.hosts:
        path.unlink(missing_ok=True)
        return
    lab_dir.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(inventory.to_json(), indent=2) + "\n")
    staging.replace(path)
