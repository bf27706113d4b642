"""What ``sovereign verify`` says and writes, run as a user runs it, for a host it cannot reach:
one failure line for the host (not one per layer), and an evidence report that says it did not
pass, names the host's address and pinned key, and the geolocation database it would have used."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import LocalSshd, sovereign
from tests.loopback import free_port
from tests.unit.test_cli_apply import assert_no_library_noise, one_host_stack


def test_an_unreachable_host_fails_once_and_the_report_says_so(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there: refused
    stack = one_host_stack(tmp_path / "project", port, local_sshd)
    report_dir = tmp_path / "report"
    result = sovereign("verify", "--stack-file", str(stack), "--report", str(report_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    fail_lines = [line for line in result.stderr.splitlines() if line.strip().startswith("FAIL")]
    assert len(fail_lines) == 1, result.stderr
    assert "reachable" in fail_lines[0]
    assert "connection refused" in fail_lines[0]
    assert_no_library_noise(result.stderr)

    evidence = json.loads(next(report_dir.glob("*.json")).read_text())
    assert evidence["passed"] is False
    failed = [c for c in evidence["checks"] if c["status"] == "fail"]
    assert [c["id"] for c in failed] == ["host.reachable"]
    skipped = [c for c in evidence["checks"] if c["status"] == "skip"]
    assert skipped, "every other planned check of the host is skipped"
    assert all(c.get("reason") for c in skipped)
    [host] = evidence["hosts"]
    assert (host["address"], host["ssh_port"]) == ("127.0.0.1", port)
    assert host["ssh_host_key"] == local_sshd.host_key_fingerprint
    database = evidence["geoip_database"]
    assert database["name"], database
    assert database["built"], database
    markdown = next(report_dir.glob("*.md")).read_text()
    assert f"127.0.0.1:{port}" in markdown
