"""The script that turns a restored clone into a host of its own, as the lab renders it."""

from __future__ import annotations

import subprocess

from components.lab.hosts import PROVISION_SCRIPT, render_provision_script

PRIVATE_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
-----END OPENSSH PRIVATE KEY-----
"""


def _render() -> str:
    return render_provision_script(
        name="lab-3",
        clock_epoch=1795806878.25,
        machine_id="0123456789abcdef0123456789abcdef",
        authorized_key="ssh-ed25519 AAAAC3Nza lab's key",
        host_private_key=PRIVATE_KEY,
        host_public_key="ssh-ed25519 AAAAC3Nzb",
        nvme_links=["nvme-QEMU_NVMe_Ctrl_LAB3NVME0", "nvme-QEMU_NVMe_Ctrl_LAB3NVME1"],
        nvme_timeout_s=30,
        poll_interval_s=0.1,
    )


def _header(script: str) -> str:
    return script.removesuffix(PROVISION_SCRIPT.read_text())


def test_values_survive_shell_quoting_exactly() -> None:
    """Every value, quotes and newlines included, reaches the script as it was given."""
    shown = subprocess.run(
        [
            "bash",
            "-c",
            _header(_render())
            + 'printf "%s|" "$host_name" "$clock_epoch" "$authorized_key" "$nvme_links"'
            + ' "$nvme_timeout_s"; printf "%s" "$host_private_key"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == (
        "lab-3|1795806878.250|ssh-ed25519 AAAAC3Nza lab's key|"
        "nvme-QEMU_NVMe_Ctrl_LAB3NVME0 nvme-QEMU_NVMe_Ctrl_LAB3NVME1|30|" + PRIVATE_KEY.strip()
    )


def test_the_rendered_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n"], input=_render(), text=True, check=True)


def test_the_script_body_is_sent_unchanged_after_the_header() -> None:
    assert _render().endswith(PROVISION_SCRIPT.read_text())
    assert _header(_render()).count("\n") == 9 + PRIVATE_KEY.strip().count("\n")
