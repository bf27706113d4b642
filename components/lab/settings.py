"""Where the lab keeps its state, and every timeout and limit the lab waits on, in one place.

Two directories matter:

* the **lab directory** (default ``./.lab``, env ``SOVEREIGN_LAB_DIR``, ``--lab-dir``): what one
  ``sovereign lab up`` made (per-host overlays and NVMe images, sockets, logs, the client key and
  ``inventory.json``); ``sovereign lab down`` removes all of it except the client key pair;
* the **cache directory** (default ``~/.cache/sovereign-lab``, env ``SOVEREIGN_LAB_CACHE``): the
  built image and the booted template, keyed by the hash of the image recipe, shared by every lab.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sovereign_weights.units import GIB, MIB

LAB_DIR_ENV = "SOVEREIGN_LAB_DIR"
CACHE_DIR_ENV = "SOVEREIGN_LAB_CACHE"
DEFAULT_LAB_DIR = Path(".lab")
DEFAULT_BASE_PORT = 2200
LOOPBACK = "127.0.0.1"
GUEST_USER = "root"
HOST_NAME_PREFIX = "lab-"


@dataclass(frozen=True)
class LabTimeouts:
    """Every wait in the lab, in seconds. Nothing else in the package sleeps or retries."""

    image_build_s: float = 1800.0
    template_boot_s: float = 300.0
    template_settle_s: float = 120.0
    snapshot_save_s: float = 300.0
    restore_s: float = 120.0
    qmp_socket_s: float = 30.0
    qmp_reply_s: float = 30.0
    ssh_connect_s: float = 5.0
    ssh_command_s: float = 60.0
    host_ready_s: float = 120.0
    nvme_appear_s: float = 30.0
    process_exit_s: float = 10.0
    poll_interval_s: float = 0.1


@dataclass(frozen=True)
class GuestShape:
    """What the template and every clone restored from it must share (QEMU refuses a mismatch)."""

    memory_mib: int = 1024
    cpus: int = 2
    nvme_ports: int = 8
    kernel_cmdline: str = "root=/dev/vda rw console=ttyS0 quiet"


def resolve_lab_dir(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The lab directory: ``--lab-dir``, else ``$SOVEREIGN_LAB_DIR``, else ``./.lab``; absolute."""
    env = os.environ if environ is None else environ
    chosen = cli_value or env.get(LAB_DIR_ENV) or str(DEFAULT_LAB_DIR)
    return Path(chosen).expanduser().absolute()


def resolve_cache_dir(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The image cache: ``--cache-dir``, else ``$SOVEREIGN_LAB_CACHE``, else the XDG cache."""
    env = os.environ if environ is None else environ
    if cli_value:
        return Path(cli_value).expanduser().absolute()
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV]).expanduser().absolute()
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return (base / "sovereign-lab").absolute()


def host_name(index: int) -> str:
    """``lab-<index>``, counting from 1."""
    return f"{HOST_NAME_PREFIX}{index}"


def nvme_serial(host_index: int, drive_index: int) -> str:
    """The drive's serial as the guest sees it: ``LAB<host>NVME<drive>``, drives from 0."""
    return f"LAB{host_index}NVME{drive_index}"


def nvme_disk_id(host_index: int, drive_index: int) -> str:
    """The drive's name under ``/dev/disk/by-id`` in the guest (udev: model + serial)."""
    return f"nvme-QEMU_NVMe_Ctrl_{nvme_serial(host_index, drive_index)}"


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": MIB, "G": GIB, "T": GIB << 10}


def parse_size(text: str) -> int:
    """Bytes from ``512M``, ``2G``, ``2GiB`` or a plain number; a clear error otherwise."""
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, suffix = cleaned, ""
    if cleaned and cleaned[-1] in _SIZE_SUFFIXES:
        number, suffix = cleaned[:-1], cleaned[-1]
    if not number.isdigit() or int(number) <= 0:
        raise ValueError(f"size {text!r}: expected a positive number with K, M, G or T, e.g. 2G")
    return int(number) * _SIZE_SUFFIXES[suffix]
