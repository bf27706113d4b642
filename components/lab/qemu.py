"""QEMU command lines and QMP commands for lab guests, as plain data (nothing here runs QEMU).

Every guest, template or clone, is the same q35 machine: a virtio root disk, one virtio NIC behind
user-mode NAT with the guest's port 22 forwarded to loopback, a virtio RNG, a VM generation ID (so a
restored clone's kernel reseeds its random number generator), and empty PCIe root ports that the NVMe
drives are hot-plugged into after a restore. QEMU 7.2 cannot migrate NVMe controllers, so the template
is saved without them; clones get fresh drives plugged into the same ports.

Disks use ``cache=unsafe``/``no-flush``: lab disks are disposable, and guest flushes would otherwise
cost a host fsync each under emulation.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.lab.accel import Accel, accel_args
from components.lab.settings import LOOPBACK, GuestShape

QEMU_BINARY = "qemu-system-x86_64"
ROOT_NODE = "root"
SSH_GUEST_PORT = 22
# the guest's user-mode network; ports forwarded at run time name it
NETDEV_ID = "net0"


@dataclass(frozen=True)
class GuestFiles:
    """The host-side files one guest runs from."""

    kernel: Path
    initrd: Path
    root_disk: Path
    qmp_socket: Path
    console_log: Path


@dataclass(frozen=True)
class NvmeDrive:
    """One emulated NVMe drive: its backing file, its serial, and the root port it plugs into."""

    index: int
    serial: str
    image: Path

    @property
    def node_name(self) -> str:
        return f"nvme{self.index}-disk"

    @property
    def device_id(self) -> str:
        return f"nvme{self.index}"

    @property
    def port_id(self) -> str:
        return nvme_port_id(self.index)


def nvme_port_id(index: int) -> str:
    return f"nvme-port{index}"


def escape_option_value(value: str) -> str:
    """QEMU's option syntax splits on commas; a literal comma is written twice."""
    return value.replace(",", ",,")


def guest_command(
    name: str,
    shape: GuestShape,
    accel: Accel,
    files: GuestFiles,
    ssh_port: int,
    *,
    incoming: bool,
) -> list[str]:
    """The full QEMU argv for a guest. ``incoming`` waits for a saved state (``-incoming defer``)."""
    root_blockdev = {
        "driver": "qcow2",
        "node-name": ROOT_NODE,
        "cache": {"no-flush": True},
        "file": {"driver": "file", "filename": str(files.root_disk)},
    }
    argv = [
        QEMU_BINARY,
        "-name",
        escape_option_value(name),
        "-machine",
        "q35",
        *accel_args(accel),
        "-m",
        str(shape.memory_mib),
        "-smp",
        str(shape.cpus),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-rtc",
        "base=utc",
        "-kernel",
        str(files.kernel),
        "-initrd",
        str(files.initrd),
        "-append",
        shape.kernel_cmdline,
        "-blockdev",
        json.dumps(root_blockdev),
        "-device",
        f"virtio-blk-pci,drive={ROOT_NODE},id=root-disk",
        "-netdev",
        f"user,id={NETDEV_ID},hostfwd=tcp:{LOOPBACK}:{ssh_port}-:{SSH_GUEST_PORT}",
        "-device",
        f"virtio-net-pci,netdev={NETDEV_ID},id=nic0",
        "-device",
        "virtio-rng-pci,id=rng0",
        "-device",
        "vmgenid,guid=auto,id=vmgenid0",
    ]
    for index in range(shape.nvme_ports):
        argv += ["-device", f"pcie-root-port,id={nvme_port_id(index)},chassis={index + 1}"]
    argv += [
        "-chardev",
        f"file,id=console,path={escape_option_value(str(files.console_log))}",
        "-serial",
        "chardev:console",
        "-chardev",
        f"socket,id=qmp,path={escape_option_value(str(files.qmp_socket))},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
    ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


QmpCommand = tuple[str, dict[str, Any]]


def save_state_commands(state_file: Path, max_bandwidth_bytes: int) -> list[QmpCommand]:
    """Pause the guest and write its RAM and device state to ``state_file``."""
    return [
        ("stop", {}),
        ("migrate-set-parameters", {"max-bandwidth": max_bandwidth_bytes}),
        ("migrate", {"uri": f"exec:cat > {shlex.quote(str(state_file))}"}),
    ]


def restore_state_command(state_file: Path) -> QmpCommand:
    """Load a state written by :func:`save_state_commands` into a guest started ``incoming``."""
    return ("migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(state_file))}"})


def port_forward_command(host_port: int, guest_port: int) -> QmpCommand:
    """Forward ``LOOPBACK:host_port`` to the guest's TCP ``guest_port`` on a running guest. QMP has
    no command of its own for this; the human monitor's ``hostfwd_add`` is the way. Connections
    arrive in the guest from the user-mode network's gateway (10.0.2.2)."""
    line = f"hostfwd_add {NETDEV_ID} tcp:{LOOPBACK}:{host_port}-:{guest_port}"
    return ("human-monitor-command", {"command-line": line})


def nvme_hotplug_commands(drives: list[NvmeDrive]) -> list[QmpCommand]:
    """Attach each drive's raw image and plug an NVMe controller with its serial into its port."""
    commands: list[QmpCommand] = []
    for drive in drives:
        commands.append(
            (
                "blockdev-add",
                {
                    "driver": "raw",
                    "node-name": drive.node_name,
                    "discard": "unmap",
                    "cache": {"no-flush": True},
                    "file": {"driver": "file", "filename": str(drive.image)},
                },
            )
        )
        commands.append(
            (
                "device_add",
                {
                    "driver": "nvme",
                    "id": drive.device_id,
                    "serial": drive.serial,
                    "drive": drive.node_name,
                    "bus": drive.port_id,
                },
            )
        )
    return commands
