"""The lab's promises, checked against real QEMU guests: pinned SSH, NVMe by id, reboots, teardown."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pytest

from components.lab.hosts import HostRequest, start_hosts, stop_hosts
from components.lab.inventory import LabHost, load_inventory
from components.lab.processes import is_running
from components.lab.settings import LabTimeouts
from components.lab.ssh import fingerprint
from components.lab.template import LabTemplate

pytestmark = pytest.mark.integration

LabHostsFactory = Callable[..., list[LabHost]]
TIMEOUTS = LabTimeouts()
REBOOT_TIMEOUT_S = 180.0
REBOOT_POLL_S = 1.0
CLOCK_TOLERANCE_S = 5.0
SSH_CONNECT_TIMEOUT_S = 10.0
SSH_COMMAND_TIMEOUT_S = 120.0


def connect(host: LabHost, pinned_public_key: str | None = None) -> paramiko.SSHClient:
    """SSH to a lab host accepting only ``pinned_public_key`` (default: the inventory's key)."""
    key_type, blob = (pinned_public_key or host.host_key_public).split()[:2]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(
        f"[{host.address}]:{host.port}", key_type, paramiko.Ed25519Key(data=base64.b64decode(blob))
    )
    try:
        client.connect(
            host.address,
            port=host.port,
            username=host.user,
            key_filename=str(host.private_key),
            look_for_keys=False,
            allow_agent=False,
            timeout=SSH_CONNECT_TIMEOUT_S,
            banner_timeout=SSH_CONNECT_TIMEOUT_S,
            auth_timeout=SSH_CONNECT_TIMEOUT_S,
        )
    except BaseException:
        client.close()
        raise
    return client


def run(host: LabHost, command: str, timeout_s: float = SSH_COMMAND_TIMEOUT_S) -> tuple[int, str]:
    """Exit status and stdout of a shell command run over pinned SSH."""
    with connect(host) as client:
        _, stdout, _ = client.exec_command(command, timeout=timeout_s)
        output = stdout.read().decode()
        return stdout.channel.recv_exit_status(), output


def check(host: LabHost, command: str) -> str:
    """Stdout of a command that must succeed."""
    status, output = run(host, command)
    assert status == 0, f"{host.name}: {command!r} exited {status}"
    return output


def _port_is_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_ssh_with_the_pinned_host_key_works(lab_host: LabHost) -> None:
    with connect(lab_host) as client:
        transport = client.get_transport()
        assert transport is not None
        presented = transport.get_remote_server_key()
        _, stdout, _ = client.exec_command("hostname")
        assert stdout.read().decode().strip() == lab_host.name
    assert fingerprint(f"{presented.get_name()} {presented.get_base64()}") == lab_host.host_key


def test_a_wrong_pinned_host_key_is_refused(lab_host: LabHost, lab_template: LabTemplate) -> None:
    # The template's key is the one every clone woke up with: a clone must no longer present it.
    template_key = lab_template.image.template_host_key_public.read_text()
    with pytest.raises(paramiko.BadHostKeyException):
        connect(lab_host, pinned_public_key=template_key)


def test_an_unknown_host_is_refused(lab_host: LabHost) -> None:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(
            lab_host.address,
            port=lab_host.port,
            username=lab_host.user,
            key_filename=str(lab_host.private_key),
            look_for_keys=False,
            allow_agent=False,
        )
    client.close()


def test_each_host_has_its_own_identity(lab_hosts: LabHostsFactory) -> None:
    first, second = lab_hosts(2)
    assert first.host_key != second.host_key
    assert first.port != second.port
    machine_ids = {check(host, "cat /etc/machine-id").strip() for host in (first, second)}
    assert len(machine_ids) == 2


def test_nvme_drives_are_there_by_id(lab_host: LabHost) -> None:
    assert lab_host.nvme == (
        f"nvme-QEMU_NVMe_Ctrl_LAB{lab_host.name.removeprefix('lab-')}NVME0",
        f"nvme-QEMU_NVMe_Ctrl_LAB{lab_host.name.removeprefix('lab-')}NVME1",
    )
    devices = []
    for disk_id in lab_host.nvme:
        device = check(lab_host, f"readlink -f /dev/disk/by-id/{disk_id}").strip()
        size = int(check(lab_host, f"blockdev --getsize64 {device}"))
        assert device.startswith("/dev/nvme"), device
        assert size == 2 << 30
        devices.append(device)
    assert len(set(devices)) == 2


def test_the_clock_is_current(lab_host: LabHost) -> None:
    guest_now = float(check(lab_host, "date +%s.%N"))
    assert abs(guest_now - time.time()) < CLOCK_TOLERANCE_S


def test_fresh_hosts_get_blank_nvme_drives(lab_hosts: LabHostsFactory) -> None:
    (host,) = lab_hosts(1)
    device = f"/dev/disk/by-id/{host.nvme[0]}"
    check(host, f"mkfs.xfs -q -f {device} && blkid -o value -s TYPE {device}")
    stop_hosts(host.host_dir.parents[1], {host.name}, TIMEOUTS)
    (fresh,) = lab_hosts(1)
    assert fresh.name == host.name
    status, output = run(fresh, f"blkid -p {device}")
    assert status == 2, output  # blkid's "nothing found"


def test_a_guest_survives_a_reboot(lab_host: LabHost) -> None:
    boot_id = check(lab_host, "cat /proc/sys/kernel/random/boot_id").strip()
    run(lab_host, "systemctl reboot", timeout_s=30)
    deadline = time.monotonic() + REBOOT_TIMEOUT_S
    while True:
        time.sleep(REBOOT_POLL_S)
        try:
            new_boot_id = check(lab_host, "cat /proc/sys/kernel/random/boot_id").strip()
        except (OSError, paramiko.SSHException):
            new_boot_id = boot_id
        if new_boot_id != boot_id:
            break
        assert time.monotonic() < deadline, "the guest did not come back from its reboot"
    # Same pinned key (connect() refuses any other), same name, drives still there, clock current.
    assert check(lab_host, "hostname").strip() == lab_host.name
    for disk_id in lab_host.nvme:
        check(lab_host, f"test -b /dev/disk/by-id/{disk_id}")
    assert abs(float(check(lab_host, "date +%s")) - time.time()) < CLOCK_TOLERANCE_S + 1


def test_teardown_leaves_nothing_running(
    lab_template: LabTemplate, lab_port_base: int, tmp_path: Path
) -> None:
    lab_dir = tmp_path / "lab"
    port = lab_port_base + 90
    (host,) = start_hosts(
        lab_dir, lab_template, [HostRequest(90, port, 2, 1 << 30)], TIMEOUTS, die_with_parent=True
    )
    overlay = host.host_dir / "root.qcow2"
    assert is_running(host.pid)
    assert overlay.exists()
    assert not _port_is_closed(port)

    stop_hosts(lab_dir, None, TIMEOUTS)

    assert not is_running(host.pid)
    assert not overlay.exists()
    assert not host.host_dir.exists()
    assert _port_is_closed(port)
    assert not (lab_dir / "inventory.json").exists()
    assert (lab_dir / "id_ed25519").exists()  # the client key outlives `lab down`


def test_the_command_line_runs_a_lab(
    lab_template: LabTemplate, lab_port_base: int, tmp_path: Path
) -> None:
    lab_dir = tmp_path / "cli-lab"
    base_port = lab_port_base + 80
    sovereign = [sys.executable, "-m", "components", "lab"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*sovereign, *args, "--lab-dir", str(lab_dir)],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )

    try:
        up = run(
            "up", "--hosts", "1", "--nvme", "1", "--nvme-size", "1G", "--base-port", str(base_port)
        )
        assert up.returncode == 0, up.stderr
        document = json.loads((lab_dir / "inventory.json").read_text())
        assert document["version"] == 1
        (entry,) = document["hosts"]
        assert {
            "name",
            "address",
            "port",
            "user",
            "privateKey",
            "hostKey",
            "hostKeyPublic",
            "nvme",
            "pid",
        } <= entry.keys()
        assert entry["name"] == "lab-1"
        assert entry["port"] == base_port + 1
        assert entry["privateKey"] == str(lab_dir / "id_ed25519")
        assert entry["nvme"] == ["nvme-QEMU_NVMe_Ctrl_LAB1NVME0"]
        assert entry["hostKey"].startswith("SHA256:")
        assert len(entry["hostKey"]) == len("SHA256:") + 43
        assert check(load_inventory(lab_dir).hosts[0], "hostname").strip() == "lab-1"

        status = run("status")
        assert status.returncode == 0
        assert "lab-1" in status.stdout
        assert "running" in status.stdout
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert not is_running(entry["pid"])
    assert not (lab_dir / "inventory.json").exists()
    assert _port_is_closed(base_port + 1)


def test_guests_reach_debian_repos_through_nat(lab_host: LabHost) -> None:
    mirror = check(lab_host, "awk '$1 == \"deb\" {print $2; exit}' /etc/apt/sources.list").strip()
    status = check(
        lab_host,
        f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 30 {mirror}/dists/bookworm/Release",
    )
    assert status == "200"
