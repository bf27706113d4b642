"""What ``sovereign apply`` and ``sovereign --version`` say, run as a user runs them: against
loopback ports that refuse, that accept and never send an SSH banner, and a real sshd."""

from __future__ import annotations

import base64
import hashlib
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.cli import main
from components.config.models import StackConfig
from components.plan.host_steps import StepPlan
from tests.conftest import LocalSshd, sovereign, step_script
from tests.loopback import free_port
from tests.tcp_ports import AcceptingPort

ROOT = Path(__file__).resolve().parents[2]
LAB_STACK = ROOT / "stacks" / "Pulumi.lab.yaml"
PREFIX = "sovereign-inference:"


def one_host_stack(
    project: Path, port: int, sshd: LocalSshd, *, host_key: str | None = None
) -> Path:
    """The lab stack with one byo host, lab-1, at 127.0.0.1:``port`` (no inventory, no GPUs, no K3s),
    pinned to ``host_key`` (the test sshd's key unless given), with one retry after 1 s."""
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    data: dict[str, Any] = yaml.safe_load(LAB_STACK.read_text())
    config = data["config"]
    del config[f"{PREFIX}inventory"]
    config[f"{PREFIX}ssh"] = {
        "connectTimeoutSeconds": 1,
        "connectRetries": 1,
        "retryBackoffSeconds": 0,
    }
    host = config[f"{PREFIX}hosts"][0]
    host["source"] = "byo"  # a server at a loopback sshd, not a lab guest
    host["ssh"] = {
        "port": port,
        "user": sshd.user,
        "privateKey": f"file:{sshd.client_keys['ed25519']}",
        "hostKey": host_key or sshd.host_key_fingerprint,
    }
    config[f"{PREFIX}hosts"] = [host]
    stack = project / "stacks" / "Pulumi.lab.yaml"
    stack.parent.mkdir(exist_ok=True)
    stack.write_text(yaml.safe_dump(data))
    return stack


def rows(stdout: str, step: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.split()[1:2] == [step]]


def assert_no_library_noise(stderr: str) -> None:
    assert "Traceback" not in stderr
    assert "paramiko" not in stderr
    assert "Exception (client)" not in stderr


def test_apply_check_on_a_refused_port_says_refused_and_announces_the_retry(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    port = free_port()
    stack = one_host_stack(tmp_path / "project", port, local_sshd)
    result = sovereign("apply", "--check", str(stack))
    assert result.returncode == 1, result.stdout + result.stderr
    (row,) = rows(result.stdout, "00-preflight")
    assert "failed" in row
    assert (
        f"unreachable after 2 attempt(s): connection refused: nothing listens on 127.0.0.1:{port}"
        in row
    )
    progress = [line for line in result.stderr.splitlines() if line.startswith("ssh: ")]
    assert len(progress) == 1, result.stderr
    assert "attempt 1 of 2: connection refused" in progress[0]
    assert_no_library_noise(result.stderr)


def test_apply_check_on_a_port_that_never_sends_a_banner_says_so_without_tracebacks(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    with AcceptingPort(close_at_once=False) as port:
        stack = one_host_stack(tmp_path / "project", port.port, local_sshd)
        result = sovereign("apply", "--check", str(stack))
        assert port.accepted == 2, "one retry after the first attempt"
    assert result.returncode == 1, result.stdout + result.stderr
    (row,) = rows(result.stdout, "00-preflight")
    assert f"no SSH banner within 1 s: 127.0.0.1:{port.port} accepts connections" in row
    assert_no_library_noise(result.stderr)


def test_apply_check_against_a_host_with_another_key_says_mismatch_and_does_not_retry(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    digest = hashlib.sha256(b"the key of another host").digest()
    pinned = "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    stack = one_host_stack(tmp_path / "project", local_sshd.port, local_sshd, host_key=pinned)
    result = sovereign("apply", "--check", str(stack))
    assert result.returncode == 1, result.stdout + result.stderr
    (row,) = rows(result.stdout, "00-preflight")
    assert f"host key mismatch: expected {pinned}" in row
    assert local_sshd.host_key_fingerprint in row
    assert not [line for line in result.stderr.splitlines() if line.startswith("ssh: ")]
    assert_no_library_noise(result.stderr)


def test_apply_lists_the_steps_that_do_not_apply_with_their_reasons(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    stack = one_host_stack(tmp_path / "project", free_port(), local_sshd)
    result = sovereign("apply", str(stack))
    lines = result.stdout.splitlines()
    heading = lines.index("not applicable to these hosts:")
    assert lines[heading + 1 : heading + 4] == [
        "  lab-1 20-nvidia-driver: no GPUs (hosts[0].gpu.count is 0)",
        "  lab-1 30-cuda-container-toolkit: no GPUs (hosts[0].gpu.count is 0)",
        "  lab-1 50-k3s: the stack does not install K3s (k3s.install is false)",
    ]
    assert "3 not applicable" in lines[-1]


def drifting_steps(config: StackConfig, host: Any, marker_dir: Path) -> list[StepPlan]:
    """Three steps: two that would each create a file, one that has nothing to do."""
    del config

    def creating(name: str, file: str) -> StepPlan:
        path = marker_dir / file
        body = f'apply() {{\n  [ -f {path} ] || change "create {file}" touch {path}\n}}\n'
        return StepPlan(host=host.name, name=name, script=step_script(body, name))

    idle = StepPlan(host=host.name, name="20-b", script=step_script("apply() {\n  true\n}\n"))
    return [creating("10-a", "a"), idle, creating("30-c", "c")]


def test_apply_check_lists_each_difference_on_its_own_line_without_verbose(
    local_sshd: LocalSshd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack = one_host_stack(tmp_path / "project", local_sshd.port, local_sshd)
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setattr(
        "components.rollout.render_host_steps",
        lambda config, host: drifting_steps(config, host, markers),
    )
    status = main(["apply", "--check", str(stack)])
    out = capsys.readouterr().out
    assert status == 3, out
    lines = out.splitlines()
    heading = lines.index("what an apply would change:")
    assert lines[heading + 1 : heading + 3] == [
        "  lab-1 10-a: create a",
        "  lab-1 30-c: create c",
    ]
    assert lines[heading + 3].startswith("check: 3 step(s), 2 drifted, 0 failed")
    assert not list(markers.iterdir()), "check mode changed the host"


def test_version_is_the_packages_version_from_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = sovereign("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sovereign {declared}\n"
