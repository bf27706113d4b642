"""The booted template: one guest booted from the image, saved (RAM and devices) once, cloned many times.

A template is cached next to its image, keyed by everything a restore must match: the guest's shape,
the accelerator and the QEMU version. Creating one boots the image (about 30 s under TCG), waits
until systemd has finished starting up, pauses the guest and writes its state to ``state.bin``. The
guest's root disk at that moment (``disk.qcow2``, an overlay on the image) becomes the read-only
backing file of every clone's own overlay.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from components.lab.accel import Accel, detect_accel
from components.lab.image import LabImage, ensure_image, exclusive_lock
from components.lab.processes import is_running, start_guest_process, stop_process, wait_until
from components.lab.qemu import (
    QEMU_BINARY,
    GuestFiles,
    guest_command,
    save_state_commands,
)
from components.lab.qmp import QmpClient, QmpError
from components.lab.settings import GUEST_USER, LOOPBACK, GuestShape, LabTimeouts
from components.lab.ssh import SshError, SshTarget, known_hosts_line, run_ssh, wait_for_ssh

TEMPLATE_NAME = "lab-template"
# Saving is a local copy of at most the guest's memory; QEMU's default cap would make it take seconds.
SAVE_BANDWIDTH_BYTES = 8 << 30
# Runs in the template right before it is saved: boot has finished and what clones need is on disk.
SETTLE_COMMAND = "systemctl is-system-running --wait >/dev/null; sync"


class TemplateError(RuntimeError):
    """The template could not be booted or saved."""


@dataclass(frozen=True)
class LabTemplate:
    """A saved, booted guest that clones are restored from."""

    directory: Path
    image: LabImage
    shape: GuestShape
    accel: Accel

    @property
    def root_disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.bin"

    def is_complete(self) -> bool:
        return self.root_disk.is_file() and self.state_file.is_file()


def qemu_version() -> str:
    """``qemu-system-x86_64 --version``'s first line: a saved state only loads into the same QEMU."""
    result = subprocess.run([QEMU_BINARY, "--version"], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[0].strip()


def template_key(shape: GuestShape, accel: Accel, version: str) -> str:
    """A short hash of what a clone must match to restore this template."""
    described = json.dumps(
        {"shape": asdict(shape), "accel": accel.value, "qemu": version}, sort_keys=True
    )
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def cached_template(image: LabImage, shape: GuestShape, accel: Accel) -> LabTemplate:
    key = template_key(shape, accel, qemu_version())
    return LabTemplate(image.directory / f"template-{key}", image, shape, accel)


def free_loopback_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def create_qcow2_overlay(path: Path, backing_file: Path) -> None:
    """A copy-on-write disk that reads through to ``backing_file`` and never writes to it."""
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(backing_file),
            str(path),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def ensure_template(
    image: LabImage, shape: GuestShape, accel: Accel, timeouts: LabTimeouts
) -> LabTemplate:
    """Return the cached template for this image and shape, booting and saving it when missing."""
    template = cached_template(image, shape, accel)
    if template.is_complete():
        return template
    with exclusive_lock(image.directory / f".{template.directory.name}.lock"):
        if template.is_complete():
            return template
        staging = Path(tempfile.mkdtemp(prefix=".booting-", dir=image.directory))
        try:
            _boot_and_save(template, staging, timeouts)
            if template.directory.exists():
                shutil.rmtree(template.directory)
            staging.rename(template.directory)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return template


def _boot_and_save(template: LabTemplate, staging: Path, timeouts: LabTimeouts) -> None:
    image = template.image
    files = GuestFiles(
        kernel=image.kernel,
        initrd=image.initrd,
        root_disk=staging / "disk.qcow2",
        qmp_socket=staging / "qmp.sock",
        console_log=staging / "console.log",
    )
    create_qcow2_overlay(files.root_disk, image.root_disk)
    port = free_loopback_port()
    known_hosts = staging / "known_hosts"
    known_hosts.write_text(
        known_hosts_line(LOOPBACK, port, image.template_host_key_public.read_text()) + "\n"
    )
    target = SshTarget(LOOPBACK, port, GUEST_USER, image.bootstrap_key, known_hosts)
    argv = guest_command(TEMPLATE_NAME, template.shape, template.accel, files, port, incoming=False)
    print(f"lab: booting the template ({template.accel.value})", file=sys.stderr)
    started = time.monotonic()
    pid = start_guest_process(argv, staging / "qemu.log", die_with_parent=True)
    try:
        wait_for_ssh(
            target,
            timeout_s=timeouts.template_boot_s,
            connect_timeout_s=timeouts.ssh_connect_s,
            poll_interval_s=timeouts.poll_interval_s,
        )
        settled = run_ssh(
            target,
            SETTLE_COMMAND,
            connect_timeout_s=timeouts.ssh_connect_s,
            command_timeout_s=timeouts.template_settle_s,
        )
        if settled.returncode != 0:
            raise TemplateError(f"template did not settle: {settled.stderr.strip()}")
        print(
            f"lab: template up after {time.monotonic() - started:.1f}s; saving it", file=sys.stderr
        )
        _save_state(files.qmp_socket, staging / "state.bin", timeouts)
        if not wait_until(lambda: not is_running(pid), timeouts.process_exit_s, 0.1):
            raise TemplateError("template QEMU did not exit after saving")
    except (SshError, QmpError) as exc:
        console = files.console_log.read_text(errors="replace")[-2000:]
        raise TemplateError(f"{exc}\n--- template console (tail) ---\n{console}") from exc
    finally:
        stop_process(pid, staging, timeouts.process_exit_s, timeouts.poll_interval_s)
    for leftover in ("qmp.sock", "known_hosts"):
        (staging / leftover).unlink(missing_ok=True)


def _save_state(qmp_socket: Path, state_file: Path, timeouts: LabTimeouts) -> None:
    with QmpClient.connect(
        qmp_socket, timeouts.qmp_socket_s, timeouts.qmp_reply_s, timeouts.poll_interval_s
    ) as qmp:
        for command, arguments in save_state_commands(state_file, SAVE_BANDWIDTH_BYTES):
            qmp.execute(command, arguments)
        deadline = time.monotonic() + timeouts.snapshot_save_s
        while True:
            status = qmp.execute("query-migrate").get("status")
            if status == "completed":
                break
            if status in {"failed", "cancelled"} or time.monotonic() >= deadline:
                raise TemplateError(f"saving the template state ended as {status!r}")
            time.sleep(timeouts.poll_interval_s)
        with contextlib.suppress(QmpError):  # QEMU may close the monitor before it answers
            qmp.execute("quit")


def prepare_template(
    cache_dir: Path,
    recipe_dir: Path,
    shape: GuestShape,
    timeouts: LabTimeouts,
    accel: Accel | None = None,
) -> LabTemplate:
    """The image and the booted template for the current recipe, building what is missing."""
    image = ensure_image(cache_dir, recipe_dir, timeouts.image_build_s)
    return ensure_template(image, shape, accel or detect_accel(), timeouts)
