"""The lab inventory (``<lab dir>/inventory.json``): what ``lab up`` started, for stacks and tests.

``stacks/Pulumi.lab.yaml`` names this file; the config loader takes each host's address, port, user,
private key and pinned host-key fingerprint from it. The format is the host inventory of
:mod:`components.sources.inventory`; the lab's entries also carry what ``lab status`` and ``lab down``
need (the guest's pid, number, files and public host key), so the lab reads the file with those
fields required.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import Field

from components.config.errors import StackConfigError
from components.config.loader import read_inventory
from components.config.models import PublicKey
from components.sources.inventory import (
    FILE_PATH,
    INVENTORY_FILE,
    INVENTORY_VERSION,
    FilePath,
    Inventory,
)
from components.sources.inventory import InventoryHost as HostEntry

__all__ = [
    "EMPTY_LAB",
    "INVENTORY_FILE",
    "INVENTORY_VERSION",
    "InventoryError",
    "LabHost",
    "LabInventory",
    "inventory_path",
    "lab_dir_problem",
    "load_inventory",
    "save_inventory",
]


class InventoryError(ValueError):
    """The lab's inventory file cannot be used (its problems, each with its field path)."""


class LabHost(HostEntry):
    """One running lab guest as the inventory records it."""

    host_key_public: PublicKey
    pid: int = Field(ge=1)
    index: int = Field(ge=0)
    host_dir: FilePath


class LabInventory(Inventory):
    """The lab's inventory: every host a lab guest, kept in the order of their numbers."""

    hosts: tuple[LabHost, ...] = ()

    def by_name(self, name: str) -> LabHost | None:
        return next((host for host in self.hosts if host.name == name), None)

    def with_host(self, host: LabHost) -> LabInventory:
        """A copy with ``host`` added, replacing any entry of the same name."""
        others = tuple(existing for existing in self.hosts if existing.name != host.name)
        hosts = tuple(sorted((*others, host), key=lambda entry: entry.index))
        return LabInventory(version=self.version, hosts=hosts)

    def without(self, names: set[str]) -> LabInventory:
        hosts = tuple(host for host in self.hosts if host.name not in names)
        return LabInventory(version=self.version, hosts=hosts)


EMPTY_LAB = LabInventory(version=INVENTORY_VERSION)


def inventory_path(lab_dir: Path) -> Path:
    return lab_dir / INVENTORY_FILE


def lab_dir_problem(lab_dir: Path) -> str | None:
    """Why the inventory could not name the lab's files in ``lab_dir`` (its key, its hosts'
    directories), or None."""
    if FILE_PATH.fullmatch(str(lab_dir)):
        return None
    return (
        f"lab directory {str(lab_dir)!r}: the inventory names the lab's key and files by their "
        "paths, which may hold only letters, digits and ._/~+@-; choose another directory"
    )


def load_inventory(lab_dir: Path) -> LabInventory:
    """The lab's inventory; an empty one when the lab has none."""
    path = inventory_path(lab_dir)
    if not path.exists():
        return EMPTY_LAB
    try:
        return read_inventory(path, LabInventory)
    except StackConfigError as exc:
        details = "; ".join(str(problem) for problem in exc.problems)
        raise InventoryError(f"{path}: {details}") from None


def save_inventory(lab_dir: Path, inventory: LabInventory) -> None:
    """Write atomically (a reader never sees half a file); an empty inventory removes the file."""
    path = inventory_path(lab_dir)
    if not inventory.hosts:
        path.unlink(missing_ok=True)
        return
    lab_dir.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(inventory.document(), indent=2) + "\n")
    staging.replace(path)
