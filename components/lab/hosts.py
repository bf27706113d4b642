"""Lab hosts: fresh guests restored from the template, each made into a host of its own.

Starting a host:

1. prepare its directory: a qcow2 overlay on the template's disk, fresh sparse NVMe images (an old
   array or filesystem must not survive into a "fresh" host), and a new ed25519 host key;
2. start QEMU waiting for incoming state and record the host in the inventory at once, so that
   ``lab down`` can clean up even if the rest fails;
3. restore the template's state through QMP, resume, hot-plug the NVMe drives into the root ports;
4. over SSH pinned to the template's host key, run ``provision-clone.sh``: set the clock, hostname
   and machine-id, install the host's own key and the lab's client key, wait for the drives;
5. wait until SSH answers with the host's own pinned key and the lab's client key. (Debian 12's
   sshd loads its host key afresh for each connection, so no restart is needed; this check is what
   proves the new key is in use.)

Steps 3-5 run for all requested hosts in parallel.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from components.lab.image import exclusive_lock
from components.lab.inventory import (
    LabHost,
    LabInventory,
    lab_dir_problem,
    load_inventory,
    save_inventory,
)
from components.lab.processes import (
    belongs_to,
    processes_using,
    start_guest_process,
    stop_process,
)
from components.lab.qemu import (
    GuestFiles,
    NvmeDrive,
    guest_command,
    nvme_hotplug_commands,
    port_forward_command,
    restore_state_command,
)
from components.lab.qmp import QmpClient
from components.lab.settings import (
    GUEST_USER,
    LOOPBACK,
    LabTimeouts,
    host_name,
    nvme_disk_id,
    nvme_serial,
)
from components.lab.ssh import (
    SshTarget,
    fingerprint,
    generate_ed25519_key,
    known_hosts_line,
    public_key_path,
    public_key_without_comment,
    run_ssh_when_reachable,
    wait_for_ssh,
)
from components.lab.template import LabTemplate, create_qcow2_overlay

CLIENT_KEY_NAME = "id_ed25519"
KNOWN_HOSTS_NAME = "known_hosts"
HOSTS_SUBDIR = "hosts"
LOCK_NAME = ".lock"
PROVISION_SCRIPT = Path(__file__).with_name("provision-clone.sh")
# Longest path a unix socket can have on Linux (sun_path is 108 bytes, NUL included).
UNIX_SOCKET_PATH_MAX = 107


class LabError(RuntimeError):
    """A lab host could not be started, or the lab's state is in the way."""


@dataclass(frozen=True)
class HostRequest:
    """One host to start: ``lab-<index>`` on loopback port ``port`` with ``nvme_count`` drives."""

    index: int
    port: int
    nvme_count: int
    nvme_size_bytes: int


@dataclass(frozen=True)
class HostLayout:
    """Where a host's files live inside the lab directory."""

    directory: Path

    @property
    def root_disk(self) -> Path:
        return self.directory / "root.qcow2"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        return self.directory / KNOWN_HOSTS_NAME

    @property
    def template_known_hosts(self) -> Path:
        return self.directory / "template_known_hosts"

    def nvme_image(self, drive_index: int) -> Path:
        return self.directory / f"nvme{drive_index}.raw"


def client_key_path(lab_dir: Path) -> Path:
    return lab_dir / CLIENT_KEY_NAME


def ensure_client_key(lab_dir: Path) -> Path:
    """The lab's client key pair, generated once per lab directory and kept by ``lab down``."""
    key = client_key_path(lab_dir)
    if not key.exists():
        generate_ed25519_key(key, "sovereign-lab")
    return key


def host_layout(lab_dir: Path, name: str) -> HostLayout:
    return HostLayout(lab_dir / HOSTS_SUBDIR / name)


def port_is_free(port: int) -> bool:
    """True when nothing listens on ``127.0.0.1:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def forward_port(host: LabHost, guest_port: int, timeouts: LabTimeouts) -> int:
    """Forward a free loopback port to ``guest_port`` of the running ``host``; returns that port.
    Lets a test reach a service in the guest the way a machine outside the cluster would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        host_port = int(probe.getsockname()[1])
    command, arguments = port_forward_command(host_port, guest_port)
    with guest_monitor(host, timeouts) as qmp:
        # the human monitor answers errors as text, not as a QMP error
        answer = str(qmp.execute(command, arguments)).strip()
    if answer:
        raise LabError(f"{host.name}: forwarding port {host_port} to {guest_port}: {answer}")
    return host_port


def guest_monitor(host: LabHost, timeouts: LabTimeouts) -> QmpClient:
    """A QMP connection to the running ``host``'s QEMU."""
    return QmpClient.connect(
        HostLayout(host.host_dir).qmp_socket,
        timeouts.qmp_socket_s,
        timeouts.qmp_reply_s,
        timeouts.poll_interval_s,
    )


def pause_guest(host: LabHost, timeouts: LabTimeouts) -> None:
    """Stop the guest's CPUs: its network stays connected (QEMU's user-mode network runs on) but
    nothing in the guest answers, as on a host whose kernel hung."""
    with guest_monitor(host, timeouts) as qmp:
        qmp.execute("stop")


def resume_guest(host: LabHost, timeouts: LabTimeouts) -> None:
    """Let a paused guest run on from where it stopped."""
    with guest_monitor(host, timeouts) as qmp:
        qmp.execute("cont")


def create_sparse_image(path: Path, size_bytes: int) -> None:
    """A new, all-zero raw image; any previous file at ``path`` is deleted first."""
    path.unlink(missing_ok=True)
    with path.open("xb") as image:
        image.truncate(size_bytes)


def render_provision_script(
    name: str,
    clock_epoch: float,
    machine_id: str,
    authorized_key: str,
    host_private_key: str,
    host_public_key: str,
    nvme_links: list[str],
    nvme_timeout_s: float,
    poll_interval_s: float,
) -> str:
    """``provision-clone.sh`` with its inputs prepended as shell-quoted assignments."""
    values = {
        "host_name": name,
        "clock_epoch": f"{clock_epoch:.3f}",
        "machine_id": machine_id,
        "authorized_key": authorized_key,
        "host_private_key": host_private_key.strip(),
        "host_public_key": host_public_key,
        "nvme_links": " ".join(nvme_links),
        "nvme_timeout_s": str(max(1, round(nvme_timeout_s))),
        "poll_interval_s": str(poll_interval_s),
    }
    header = "".join(f"{key}={shlex.quote(value)}\n" for key, value in values.items())
    return header + PROVISION_SCRIPT.read_text()


def _nvme_drives(request: HostRequest, layout: HostLayout) -> list[NvmeDrive]:
    return [
        NvmeDrive(j, nvme_serial(request.index, j), layout.nvme_image(j))
        for j in range(request.nvme_count)
    ]


def _guest_files(template: LabTemplate, layout: HostLayout) -> GuestFiles:
    return GuestFiles(
        kernel=template.image.kernel,
        initrd=template.image.initrd,
        root_disk=layout.root_disk,
        qmp_socket=layout.qmp_socket,
        console_log=layout.console_log,
    )


def _prepare_and_start(
    lab_dir: Path,
    template: LabTemplate,
    request: HostRequest,
    client_key: Path,
    die_with_parent: bool,
) -> LabHost:
    name = host_name(request.index)
    layout = host_layout(lab_dir, name)
    if len(str(layout.qmp_socket)) > UNIX_SOCKET_PATH_MAX:
        raise LabError(f"lab directory {lab_dir} is too deep for QEMU's monitor socket path")
    if layout.directory.exists():
        shutil.rmtree(layout.directory)
    layout.directory.mkdir(parents=True)
    create_qcow2_overlay(layout.root_disk, template.root_disk)
    for drive in _nvme_drives(request, layout):
        create_sparse_image(drive.image, request.nvme_size_bytes)
    public_key = generate_ed25519_key(layout.host_key, name)
    layout.known_hosts.write_text(known_hosts_line(LOOPBACK, request.port, public_key) + "\n")
    layout.template_known_hosts.write_text(
        known_hosts_line(
            LOOPBACK, request.port, template.image.template_host_key_public.read_text()
        )
        + "\n"
    )
    argv = guest_command(
        name,
        template.shape,
        template.accel,
        _guest_files(template, layout),
        request.port,
        incoming=True,
    )
    pid = start_guest_process(argv, layout.qemu_log, die_with_parent=die_with_parent)
    return LabHost(
        name=name,
        index=request.index,
        address=LOOPBACK,
        port=request.port,
        user=GUEST_USER,
        private_key=client_key,
        host_key=fingerprint(public_key),
        host_key_public=public_key_without_comment(public_key),
        nvme=tuple(nvme_disk_id(request.index, j) for j in range(request.nvme_count)),
        pid=pid,
        host_dir=layout.directory,
    )


def _restore(qmp: QmpClient, template: LabTemplate, timeouts: LabTimeouts) -> None:
    command, arguments = restore_state_command(template.state_file)
    qmp.execute(command, arguments)
    deadline = time.monotonic() + timeouts.restore_s
    while True:
        status = qmp.execute("query-status").get("status")
        if status == "paused":
            qmp.execute("cont")
            return
        if status == "running":
            return
        if status != "inmigrate" or time.monotonic() >= deadline:
            raise LabError(f"restoring the template state ended with the guest {status!r}")
        time.sleep(timeouts.poll_interval_s)


def _bring_up(
    host: LabHost,
    template: LabTemplate,
    request: HostRequest,
    timeouts: LabTimeouts,
) -> None:
    layout = HostLayout(host.host_dir)
    with QmpClient.connect(
        layout.qmp_socket, timeouts.qmp_socket_s, timeouts.qmp_reply_s, timeouts.poll_interval_s
    ) as qmp:
        _restore(qmp, template, timeouts)
        for command, arguments in nvme_hotplug_commands(_nvme_drives(request, layout)):
            qmp.execute(command, arguments)
    client_public_key = public_key_path(host.private_key).read_text().strip()

    def provision_script() -> str:
        return render_provision_script(
            name=host.name,
            clock_epoch=time.time(),
            machine_id=machine_id,
            authorized_key=client_public_key,
            host_private_key=layout.host_key.read_text(),
            host_public_key=host.host_key_public,
            nvme_links=list(host.nvme),
            nvme_timeout_s=timeouts.nvme_appear_s,
            poll_interval_s=timeouts.poll_interval_s,
        )

    machine_id = uuid.uuid4().hex
    as_template = SshTarget(
        host.address,
        host.port,
        host.user,
        template.image.bootstrap_key,
        layout.template_known_hosts,
    )
    deadline = time.monotonic() + timeouts.host_ready_s
    provisioned = run_ssh_when_reachable(
        as_template,
        "bash -s",
        timeout_s=timeouts.host_ready_s,
        connect_timeout_s=timeouts.ssh_connect_s,
        command_timeout_s=timeouts.ssh_command_s,
        poll_interval_s=timeouts.poll_interval_s,
        stdin_text=provision_script,
    )
    if provisioned.returncode != 0:
        raise LabError(
            f"{host.name}: provisioning failed ({provisioned.returncode}): "
            f"{provisioned.stderr.strip()}"
        )
    as_itself = SshTarget(host.address, host.port, host.user, host.private_key, layout.known_hosts)
    wait_for_ssh(
        as_itself,
        timeout_s=max(deadline - time.monotonic(), timeouts.ssh_connect_s),
        connect_timeout_s=timeouts.ssh_connect_s,
        poll_interval_s=timeouts.poll_interval_s,
    )


def write_known_hosts(lab_dir: Path, inventory: LabInventory) -> None:
    """``<lab dir>/known_hosts`` with every host's pinned key, for ``ssh -o UserKnownHostsFile=``."""
    path = lab_dir / KNOWN_HOSTS_NAME
    if not inventory.hosts:
        path.unlink(missing_ok=True)
        return
    lines = [known_hosts_line(h.address, h.port, h.host_key_public) for h in inventory.hosts]
    path.write_text("\n".join(lines) + "\n")


def _record(lab_dir: Path, inventory: LabInventory) -> None:
    save_inventory(lab_dir, inventory)
    write_known_hosts(lab_dir, inventory)


def start_hosts(
    lab_dir: Path,
    template: LabTemplate,
    requests: list[HostRequest],
    timeouts: LabTimeouts,
    *,
    die_with_parent: bool = False,
) -> list[LabHost]:
    """Start the requested hosts from ``template``; on any failure stop them all and raise.

    ``die_with_parent`` (test fixtures) makes the kernel kill the guests when the calling process
    exits; ``lab up`` leaves it off so that the guests outlive the command.
    """
    lab_dir = lab_dir.absolute()
    unusable = lab_dir_problem(lab_dir)
    if unusable:
        raise LabError(unusable)
    lab_dir.mkdir(parents=True, exist_ok=True)
    client_key = ensure_client_key(lab_dir)
    started: list[LabHost] = []
    with exclusive_lock(lab_dir / LOCK_NAME):
        inventory = load_inventory(lab_dir)
        for request in requests:
            name = host_name(request.index)
            if inventory.by_name(name) is not None:
                raise LabError(f"{name} is already in {lab_dir}; run `sovereign lab down` first")
            if not port_is_free(request.port):
                raise LabError(f"port {LOOPBACK}:{request.port} for {name} is in use")
        try:
            for request in requests:
                host = _prepare_and_start(lab_dir, template, request, client_key, die_with_parent)
                started.append(host)
                inventory = inventory.with_host(host)
                _record(lab_dir, inventory)
        except BaseException:
            # Every requested name was checked free above, so all their files are ours to remove.
            _stop_recorded(lab_dir, {host_name(request.index) for request in requests}, timeouts)
            raise
    try:
        _bring_up_all(started, requests, template, timeouts)
    except BaseException:
        stop_hosts(lab_dir, {host.name for host in started}, timeouts)
        raise
    return started


def _bring_up_all(
    started: list[LabHost],
    requests: list[HostRequest],
    template: LabTemplate,
    timeouts: LabTimeouts,
) -> None:
    """Restore and provision the started guests in parallel; one error names every failed host."""
    with ThreadPoolExecutor(max_workers=max(1, len(requests))) as pool:
        futures = [
            pool.submit(_bring_up, host, template, request, timeouts)
            for host, request in zip(started, requests, strict=True)
        ]
        errors = [future.exception() for future in futures]
    failures = [(host, error) for host, error in zip(started, errors, strict=True) if error]
    if failures:
        details = "\n".join(
            f"{host.name}: {error}\n{host_log_tails(host)}" for host, error in failures
        )
        raise LabError(f"{len(failures)} lab host(s) failed to start: {details}")


def _stop_recorded(lab_dir: Path, names: set[str], timeouts: LabTimeouts) -> None:
    """Stop and delete the named hosts and drop them from the inventory (lock held by caller)."""
    inventory = load_inventory(lab_dir)
    for name in sorted(names):
        layout = host_layout(lab_dir, name)
        entry = inventory.by_name(name)
        pids = {entry.pid} if entry else set()
        pids.update(processes_using(layout.directory) if layout.directory.exists() else [])
        for pid in sorted(pids):
            stop_process(pid, layout.directory, timeouts.process_exit_s, timeouts.poll_interval_s)
        shutil.rmtree(layout.directory, ignore_errors=True)
    _record(lab_dir, inventory.without(names))


def stop_hosts(lab_dir: Path, names: set[str] | None, timeouts: LabTimeouts) -> list[str]:
    """Stop the named hosts (all when ``names`` is None) and delete their files; return the names.

    Stopping all also sweeps guests whose files are in this lab directory but which are missing
    from the inventory (an interrupted ``lab up``), so nothing is left running.
    """
    lab_dir = lab_dir.absolute()
    if not lab_dir.exists():
        return []
    with exclusive_lock(lab_dir / LOCK_NAME):
        inventory = load_inventory(lab_dir)
        hosts_dir = lab_dir / HOSTS_SUBDIR
        if names is None:
            chosen = {host.name for host in inventory.hosts}
            if hosts_dir.exists():
                chosen |= {entry.name for entry in hosts_dir.iterdir() if entry.is_dir()}
        else:
            chosen = set(names)
        _stop_recorded(lab_dir, chosen, timeouts)
        if names is None and hosts_dir.exists():
            for pid in processes_using(hosts_dir):
                stop_process(pid, hosts_dir, timeouts.process_exit_s, timeouts.poll_interval_s)
            shutil.rmtree(hosts_dir, ignore_errors=True)
    return sorted(chosen)


def host_log_tails(host: LabHost) -> str:
    """The tail of a host's console and QEMU logs, for error messages."""
    layout = HostLayout(host.host_dir)
    parts = []
    for log in (layout.qemu_log, layout.console_log):
        if log.exists():
            parts.append(f"--- {log.name} ---\n{log.read_text(errors='replace')[-1500:]}")
    return "\n".join(parts)


def host_requests(
    count: int, nvme_count: int, nvme_size_bytes: int, base_port: int, first_index: int = 1
) -> list[HostRequest]:
    """``count`` hosts numbered from ``first_index``, host ``i`` on port ``base_port + i``."""
    return [
        HostRequest(index, base_port + index, nvme_count, nvme_size_bytes)
        for index in range(first_index, first_index + count)
    ]


def host_statuses(lab_dir: Path) -> list[tuple[LabHost, bool]]:
    """Each inventory host with whether its guest process is still running."""
    return [(host, belongs_to(host.pid, host.host_dir)) for host in load_inventory(lab_dir).hosts]
