"""The commands that reach hosts, on a stack whose hosts are ordered: their addresses and pinned
host keys come from the stack's outputs (``--outputs``), against a real sshd on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, LocalSshd, sovereign

PREFIX = "sovereign-inference:"


def ordered_stack(project: Path, sshd: LocalSshd) -> Path:
    """The Scaleway example stack with the test's key as the stack's key."""
    project.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = yaml.safe_load((ROOT / "stacks" / "Pulumi.scw-par.yaml").read_text())
    for host in data["config"][PREFIX + "hosts"]:
        host["ssh"]["privateKey"] = f"file:{sshd.client_keys['ed25519']}"
        host["ssh"]["publicKey"] = Path(f"{sshd.client_keys['ed25519']}.pub").read_text().strip()
    (project / "stacks").mkdir(exist_ok=True)
    path = project / "stacks" / "Pulumi.scw-par.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def outputs_file(tmp_path: Path, sshd: LocalSshd) -> Path:
    """``pulumi stack output --json`` as the program exports it: the ordered machines' addresses
    and first-contact pins (here both machines are the test's sshd)."""
    hosts = [
        {
            "name": name,
            "role": role,
            "source": "scaleway",
            "address": address,
            "port": sshd.port,
            "user": sshd.user,
            "hostKey": sshd.host_key_fingerprint,
            "country": "FR",
            "datacenter": "fr-par-2",
        }
        for name, role, address in (
            ("scw-gpu-1", "server", "127.0.0.1"),
            ("scw-gpu-2", "agent", "127.0.0.2"),
        )
    ]
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"environment": "scw-par", "hosts": hosts}))
    return path


def test_verify_reaches_ordered_hosts_through_the_stack_outputs(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    stack = ordered_stack(tmp_path / "project", local_sshd)
    report = tmp_path / "report"
    without = sovereign(
        "verify", "--stack-file", str(stack), "--report", str(report), "--hosts", "scw-gpu-1"
    )
    assert without.returncode == 1
    assert "its address and host key are in the stack's outputs" in without.stderr
    assert "Traceback" not in without.stderr

    outputs = outputs_file(tmp_path, local_sshd)
    args = ("--report", str(report), "--hosts", "scw-gpu-1", "--outputs", str(outputs))
    result = sovereign("verify", "--stack-file", str(stack), *args)
    evidence = json.loads(max(report.glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())
    reachable = next(c for c in evidence["checks"] if c["id"] == "host.reachable")
    assert reachable["status"] == "pass", result.stderr
    [host] = evidence["hosts"]
    assert (host["address"], host["ssh_port"]) == ("127.0.0.1", local_sshd.port)
    assert host["ssh_host_key"] == local_sshd.host_key_fingerprint


def test_apply_needs_the_outputs_for_a_stack_with_ordered_hosts(
    local_sshd: LocalSshd, tmp_path: Path, monkeypatch: Any
) -> None:
    stack = ordered_stack(tmp_path / "project", local_sshd)
    monkeypatch.setenv("SOVEREIGN_K3S_TOKEN", "0" * 64)
    refused = sovereign("apply", "--check", str(stack))
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        "sovereign apply: scw-gpu-1 (scaleway), scw-gpu-2 (scaleway): ordered by the program"
    )
    assert "--outputs" in refused.stderr
    outputs = outputs_file(tmp_path, local_sshd)
    checked = sovereign("apply", "--check", str(stack), "--outputs", str(outputs))
    # the steps ran on the machines the outputs name: preflight reports this machine as it is
    assert "scw-gpu-1" in checked.stdout
    assert "00-preflight" in checked.stdout
    assert "ordered by the program" not in checked.stderr


def test_outputs_of_another_stack_or_with_a_broken_value_are_refused(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    stack = ordered_stack(tmp_path / "project", local_sshd)
    outputs = outputs_file(tmp_path, local_sshd)
    data = json.loads(outputs.read_text())
    report = str(tmp_path / "report")
    other = {**data, "environment": "prod-fra"}
    outputs.write_text(json.dumps(other))
    result = sovereign(
        "verify", "--stack-file", str(stack), "--report", report, "--outputs", str(outputs)
    )
    assert result.returncode == 2
    assert "the outputs are environment 'prod-fra''s, not 'scw-par''s" in result.stderr
    data["hosts"][0]["hostKey"] = "SHA256:short"
    outputs.write_text(json.dumps(data))
    result = sovereign("apply", "--check", str(stack), "--outputs", str(outputs))
    assert result.returncode == 2
    assert result.stderr.startswith("sovereign apply: outputs: hosts[0].hostKey: ")
