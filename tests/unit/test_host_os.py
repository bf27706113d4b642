"""The supported OS list is obeyed where the host steps act on it: preflight accepts each listed
system and refuses any other naming the list, and the driver steps find NVIDIA's repository for
each listed system under the name NVIDIA publishes it.

The steps' own bash functions run here; only ``/etc/os-release`` is a file written by the test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.config import StackConfig, load_stack_file
from components.plan.host_os import SUPPORTED_OS
from components.plan.host_steps import render_host_steps
from components.plan.step_protocol import EXIT_OK, EXIT_REFUSED, parse_step_output

ROOT = Path(__file__).resolve().parents[2]
# The directories of https://developer.download.nvidia.com/compute/cuda/repos/ for each system,
# as NVIDIA names them (stated here, not derived, so the derivation is checked against them).
NVIDIA_REPOSITORIES = {
    "debian-12": "debian12",
    "ubuntu-22.04": "ubuntu2204",
    "ubuntu-24.04": "ubuntu2404",
}


def gpu_stack() -> StackConfig:
    return load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")


def step_functions(step: str, os_release: Path) -> str:
    """The step's definitions (everything before it dispatches on its mode), reading
    ``os_release`` where the host's ``/etc/os-release`` would be."""
    config = gpu_stack()
    (plan,) = render_host_steps(config, config.hosts[0], only=(step,))
    definitions = plan.script.split('case "$SOVEREIGN_MODE" in')[0]
    assert "/etc/os-release" in definitions
    return definitions.replace("/etc/os-release", str(os_release))


def os_release(tmp_path: Path, os_id: str) -> Path:
    distribution, _, version = os_id.partition("-")
    path = tmp_path / "os-release"
    path.write_text(f'ID={distribution}\nVERSION_ID="{version}"\n')
    return path


def run_bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, check=False, timeout=30
    )


@pytest.mark.parametrize("os_id", SUPPORTED_OS)
def test_preflight_accepts_each_supported_system(tmp_path: Path, os_id: str) -> None:
    done = run_bash(
        step_functions("00-preflight", os_release(tmp_path, os_id)) + "check_os\nfinish\n"
    )
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert parse_step_output(done.stdout).facts["os"] == os_id


@pytest.mark.parametrize("os_id", ["debian-11", "ubuntu-20.04", "rocky-9"])
def test_preflight_refuses_another_system_naming_the_supported_ones(
    tmp_path: Path, os_id: str
) -> None:
    done = run_bash(
        step_functions("00-preflight", os_release(tmp_path, os_id)) + "check_os\nfinish\n"
    )
    assert done.returncode == EXIT_REFUSED, done.stdout + done.stderr
    refused = parse_step_output(done.stdout).refused or ""
    assert refused.startswith(f"unsupported OS {os_id.replace('-', ' ')}; expected ")
    assert refused.endswith("Debian 12, Ubuntu 22.04 or Ubuntu 24.04"), refused


@pytest.mark.parametrize("step", ["20-nvidia-driver", "30-cuda-container-toolkit"])
def test_the_driver_steps_name_nvidias_repository_for_each_supported_system(
    tmp_path: Path, step: str
) -> None:
    assert set(NVIDIA_REPOSITORIES) == set(SUPPORTED_OS)
    for os_id, repository in NVIDIA_REPOSITORIES.items():
        done = run_bash(step_functions(step, os_release(tmp_path, os_id)) + "nvidia_distro\n")
        assert (done.returncode, done.stdout) == (EXIT_OK, f"{repository}\n"), done.stderr
    refused = run_bash(step_functions(step, os_release(tmp_path, "debian-11")) + "nvidia_distro\n")
    assert refused.returncode == EXIT_REFUSED
