"""The K3s step on a real lab host keeps the cluster token out of long-lived places.

The lab cannot reach K3s downloads, so the step runs from an air-gap bundle holding stand-ins
(``fake_k3s/``): an installer that copies every ``K3S_*`` variable of its environment into the
unit's ``.env`` file as the real one does, pinned by sha256 like the real one, and a k3s binary
that runs only when its config names a token file holding a token. The token must end up in
``/etc/rancher/k3s/token`` (0600) and nowhere else, across install, a leftover ``.env`` token from
an older install, and a rotation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.config.models import HostSpec, StackConfig
from components.execution.ssh import REDACTED, HostSession, HostTarget
from components.lab.inventory import LabHost
from components.plan.host_steps import render_host_steps
from components.plan.step_protocol import Mode
from components.rollout import RolloutReport, apply_stack
from tests.lab_stacks import ROOT, lab_host_spec, lab_stack

pytestmark = pytest.mark.integration

FAKE_K3S = Path(__file__).resolve().parent / "fake_k3s"
BUNDLE = "/opt/sovereign-test/k3s-bundle"
ENV_FILE = "/etc/systemd/system/k3s.service.env"
TOKEN_FILE = "/etc/rancher/k3s/token"
INSTALLER = (FAKE_K3S / "install.sh").read_bytes()


def k3s_stack(host: HostSpec, installer_sha256: str) -> StackConfig:
    base = lab_stack()
    k3s = base.k3s.model_copy(
        update={"install": True, "airgap_bundle": BUNDLE, "installer_sha256": installer_sha256}
    )
    return base.model_copy(update={"hosts": (host,), "k3s": k3s})


def on_host(
    session: HostSession,
    script: str,
    *,
    secret_env: dict[str, str] | None = None,
    payloads: dict[str, bytes] | None = None,
) -> str:
    result = session.run_script(script, secret_env=secret_env, payloads=payloads, timeout=120)
    assert result.exit_status == 0, result.stderr_tail
    return result.stdout


def where_token_is(session: HostSession, token: str) -> list[str]:
    """Every file under /etc, /run and /var/lib/rancher that holds ``token``, by path."""
    out = on_host(
        session,
        'grep -rlF -e "$PROBE_TOKEN" /etc /run /var/lib/rancher 2>/dev/null || true\n',
        secret_env={"PROBE_TOKEN": token},
    )
    return sorted(out.split())


@pytest.fixture
def probe(lab_host: LabHost) -> Iterator[HostSession]:
    """One connection for the test's own looks at the host."""
    session = HostSession(HostTarget.from_spec(lab_host_spec(lab_host), ROOT), lab_stack().ssh)
    yield session
    session.close()


def test_k3s_token_lives_only_in_the_token_file(lab_host: LabHost, probe: HostSession) -> None:
    host = lab_host_spec(lab_host)
    config = k3s_stack(host, hashlib.sha256(INSTALLER).hexdigest())
    plans = {host.name: render_host_steps(config, host, only=("50-k3s",))}
    token = "K10" + os.urandom(24).hex() + "::server:" + os.urandom(16).hex()
    on_host(
        probe,
        f'set -e\nmkdir -p {BUNDLE}\ncd "$SOVEREIGN_PAYLOAD_DIR"\n'
        f"install -m 0644 install.sh k3s-airgap-images-amd64.tar {BUNDLE}/\n"
        f"install -m 0755 k3s {BUNDLE}/k3s\n",
        payloads={
            "install.sh": INSTALLER,
            "k3s": (FAKE_K3S / "k3s").read_bytes(),
            "k3s-airgap-images-amd64.tar": b"",
        },
    )
    lines: list[str] = []

    def roll(secret: str, mode: Mode = "apply") -> RolloutReport:
        report = apply_stack(
            config,
            ROOT,
            mode=mode,
            plans=plans,
            secret_env={"K3S_TOKEN": secret},
            on_line=lambda _host, _stream, line: lines.append(line),
        )
        print(f"50-k3s {mode}: {[s.result for s in report.steps]} in {report.seconds:.1f} s")
        return report

    # the installer is pinned by sha256, like the real one: another one is refused before it runs
    other = k3s_stack(host, hashlib.sha256(b"another installer").hexdigest())
    mismatch = apply_stack(
        other,
        ROOT,
        plans={host.name: render_host_steps(other, host, only=("50-k3s",))},
        secret_env={"K3S_TOKEN": token},
    )
    assert [s.result for s in mismatch.steps] == ["failed"]
    assert "installer checksum mismatch" in mismatch.steps[0].error
    assert on_host(probe, "test -e /etc/systemd/system/k3s.service && echo ran || true\n") == ""

    # install: the token goes to the token file only, the installer's .env file never sees it
    first = roll(token)
    assert [s.result for s in first.steps] == ["changed"], first.steps
    assert any("install K3s" in c for c in first.steps[0].changes)
    assert where_token_is(probe, token) == [TOKEN_FILE]
    state = on_host(
        probe,
        f'stat -c "%a %U" {TOKEN_FILE} {ENV_FILE}\nsystemctl is-active k3s\n'
        f'sha256sum {TOKEN_FILE} | cut -d" " -f1\n',
    ).split("\n")
    assert state[:4] == [
        "600 root",
        "600 root",
        "active",
        hashlib.sha256(f"{token}\n".encode()).hexdigest(),
    ]
    assert [s.result for s in roll(token).steps] == ["unchanged"]
    assert [s.result for s in roll(token, "check").steps] == ["unchanged"]

    # control: the stand-in installer, run the way a token-exporting step would run it, does
    # capture the token, so the checks above could have failed
    on_host(
        probe,
        f'export K3S_TOKEN="$LEAK"\nINSTALL_K3S_SKIP_DOWNLOAD=true INSTALL_K3S_EXEC=server '
        f"INSTALL_K3S_SKIP_START=true sh {BUNDLE}/install.sh </dev/null >/dev/null\n",
        secret_env={"LEAK": token},
    )
    assert where_token_is(probe, token) == sorted([ENV_FILE, TOKEN_FILE])

    # such a leftover is drift, and apply removes it
    drift = roll(token, "check")
    assert [s.result for s in drift.steps] == ["drift"]
    assert drift.steps[0].drift.startswith(f"remove the cluster token from {ENV_FILE}")
    assert REDACTED not in drift.steps[0].drift
    assert token not in drift.steps[0].drift
    cleaned = roll(token)
    assert [s.result for s in cleaned.steps] == ["changed"], cleaned.steps
    assert any(f"remove the cluster token from {ENV_FILE}" in c for c in cleaned.steps[0].changes)
    assert where_token_is(probe, token) == [TOKEN_FILE]
    assert [s.result for s in roll(token).steps] == ["unchanged"]

    # rotation: the new token replaces the old one in the token file; no stale copy anywhere
    rotated = "K10" + os.urandom(24).hex() + "::server:" + os.urandom(16).hex()
    after = roll(rotated)
    assert [s.result for s in after.steps] == ["changed"], after.steps
    assert where_token_is(probe, token) == []
    assert where_token_is(probe, rotated) == [TOKEN_FILE]
    assert on_host(probe, "systemctl is-active k3s\n").strip() == "active"

    # nothing the step printed carried either token
    assert lines, "the step's log lines should have been seen"
    for line in lines:
        assert token not in line, line
        assert rotated not in line, line
