"""QEMU command lines and QMP commands for lab guests."""

from __future__ import annotations

import json
from pathlib import Path

from components.lab.accel import Accel
from components.lab.qemu import (
    GuestFiles,
    NvmeDrive,
    escape_option_value,
    guest_command,
    nvme_hotplug_commands,
    restore_state_command,
    save_state_commands,
)
from components.lab.settings import GuestShape

FILES = GuestFiles(
    kernel=Path("/cache/image/vmlinuz"),
    initrd=Path("/cache/image/initrd.img"),
    root_disk=Path("/lab/hosts/lab-1/root.qcow2"),
    qmp_socket=Path("/lab/hosts/lab-1/qmp.sock"),
    console_log=Path("/lab/hosts/lab-1/console.log"),
)


def _option_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_ssh_is_forwarded_from_loopback_only() -> None:
    argv = guest_command("lab-1", GuestShape(), Accel.TCG, FILES, 2201, incoming=True)
    assert _option_after(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2201-:22"]


def test_a_clone_waits_for_state_and_the_template_does_not() -> None:
    clone = guest_command("lab-1", GuestShape(), Accel.TCG, FILES, 2201, incoming=True)
    template = guest_command("lab-1", GuestShape(), Accel.TCG, FILES, 2201, incoming=False)
    assert clone[-2:] == ["-incoming", "defer"]
    assert "-incoming" not in template


def test_template_and_clone_have_the_same_machine() -> None:
    """A restore only works when the devices match; only the port and files may differ."""
    other_files = GuestFiles(
        FILES.kernel,
        FILES.initrd,
        Path("/cache/template/disk.qcow2"),
        Path("/cache/template/qmp.sock"),
        Path("/cache/template/console.log"),
    )
    template = guest_command("t", GuestShape(), Accel.TCG, other_files, 40000, incoming=False)
    clone = guest_command("t", GuestShape(), Accel.TCG, FILES, 2201, incoming=True)
    assert _option_after(template, "-device") == _option_after(clone, "-device")
    assert _option_after(template, "-m") == _option_after(clone, "-m")
    assert _option_after(template, "-smp") == _option_after(clone, "-smp")


def test_the_guest_shape_is_applied() -> None:
    shape = GuestShape(memory_mib=2048, cpus=2, nvme_ports=3, kernel_cmdline="root=/dev/vda")
    argv = guest_command("lab-1", shape, Accel.TCG, FILES, 2201, incoming=True)
    assert _option_after(argv, "-m") == ["2048"]
    assert _option_after(argv, "-smp") == ["2"]
    assert _option_after(argv, "-append") == ["root=/dev/vda"]
    ports = [d for d in _option_after(argv, "-device") if d.startswith("pcie-root-port")]
    assert ports == [
        "pcie-root-port,id=nvme-port0,chassis=1",
        "pcie-root-port,id=nvme-port1,chassis=2",
        "pcie-root-port,id=nvme-port2,chassis=3",
    ]
    assert "vmgenid,guid=auto,id=vmgenid0" in _option_after(argv, "-device")


def test_the_root_disk_is_passed_as_json_so_any_path_works() -> None:
    files = GuestFiles(
        FILES.kernel, FILES.initrd, Path("/odd,dir/root.qcow2"), FILES.qmp_socket, FILES.console_log
    )
    argv = guest_command("lab-1", GuestShape(), Accel.TCG, files, 2201, incoming=True)
    (blockdev,) = _option_after(argv, "-blockdev")
    assert json.loads(blockdev)["file"]["filename"] == "/odd,dir/root.qcow2"


def test_commas_in_option_values_are_doubled() -> None:
    assert escape_option_value("/a,b/c") == "/a,,b/c"
    files = GuestFiles(
        FILES.kernel, FILES.initrd, FILES.root_disk, Path("/x,y/qmp.sock"), FILES.console_log
    )
    argv = guest_command("lab-1", GuestShape(), Accel.TCG, files, 2201, incoming=True)
    assert "socket,id=qmp,path=/x,,y/qmp.sock,server=on,wait=off" in _option_after(argv, "-chardev")


def test_kvm_guests_use_the_host_cpu() -> None:
    argv = guest_command("lab-1", GuestShape(), Accel.KVM, FILES, 2201, incoming=True)
    assert _option_after(argv, "-accel") == ["kvm"]
    assert _option_after(argv, "-cpu") == ["host"]


def test_nvme_drives_are_plugged_with_their_serials_into_their_ports() -> None:
    drives = [
        NvmeDrive(0, "LAB2NVME0", Path("/lab/hosts/lab-2/nvme0.raw")),
        NvmeDrive(1, "LAB2NVME1", Path("/lab/hosts/lab-2/nvme1.raw")),
    ]
    commands = nvme_hotplug_commands(drives)
    assert [name for name, _ in commands] == [
        "blockdev-add",
        "device_add",
        "blockdev-add",
        "device_add",
    ]
    assert commands[0][1]["file"]["filename"] == "/lab/hosts/lab-2/nvme0.raw"
    assert commands[1][1] == {
        "driver": "nvme",
        "id": "nvme0",
        "serial": "LAB2NVME0",
        "drive": "nvme0-disk",
        "bus": "nvme-port0",
    }
    assert commands[3][1]["serial"] == "LAB2NVME1"
    assert commands[3][1]["bus"] == "nvme-port1"


def test_state_files_are_shell_quoted_in_migration_uris() -> None:
    save = save_state_commands(Path("/cache/it's here/state.bin"), 1 << 30)
    assert [name for name, _ in save] == ["stop", "migrate-set-parameters", "migrate"]
    assert save[2][1]["uri"] == "exec:cat > '/cache/it'\"'\"'s here/state.bin'"
    assert restore_state_command(Path("/cache/t/state.bin")) == (
        "migrate-incoming",
        {"uri": "exec:cat /cache/t/state.bin"},
    )
