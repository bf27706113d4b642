"""The HostStep dynamic provider's methods, called directly against a real sshd on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from components.config.models import HostSpec, SshDefaults, SshSpec
from components.execution.outcome import StepFailed
from components.plan.host_steps import StepPlan
from components.plan.step_protocol import Mode
from components.providers.host_step import HostStepProvider
from tests.conftest import LocalSshd, step_script


def marker_step(marker: Path) -> StepPlan:
    body = (
        f'apply() {{\n  if [ ! -f {marker} ]; then\n    change "create {marker.name}" touch {marker}\n  fi\n'
        f'  fact marker "$(stat -c %s {marker})"\n}}\n'
        f'teardown() {{\n  if [ -f {marker} ]; then\n    change "remove {marker.name}" rm -f {marker}\n  fi\n}}\n'
    )
    script = step_script(body, "90-marker")
    return StepPlan(host="local", name="90-marker", script=script, has_teardown=True)


def props_for(sshd: LocalSshd, step: StepPlan) -> dict[str, Any]:
    host = HostSpec(
        name="local",
        role="server",
        address="127.0.0.1",
        ssh=SshSpec(
            user=sshd.user,
            port=sshd.port,
            private_key=f"file:{sshd.client_keys['ed25519']}",
            host_key=sshd.host_key_fingerprint,
        ),
        provider="lab",
        datacenter="lab-dc1",
        country="DE",
    )
    settings = SshDefaults(connect_retries=1, retry_backoff_seconds=0)
    return {
        "host": host.name,
        "step": step.name,
        "script": step.script,
        "contentHash": step.content_hash,
        "pins": step.pins,
        "address": host.address,
        "port": host.ssh.port,
        "user": host.ssh.user,
        "privateKey": host.ssh.private_key,
        "hostKey": host.ssh.host_key,
        "baseDir": ".",
        "ssh": settings.model_dump(mode="json"),
        "hasTeardown": step.has_teardown,
        "rebootAllowed": step.reboot_allowed,
        "secretEnv": {},
    }


def test_lifecycle_create_read_diff_update_delete(local_sshd: LocalSshd, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    provider = HostStepProvider()
    props = props_for(local_sshd, marker_step(marker))

    assert not provider.check({}, props).failures
    created = provider.create(props)
    assert created.id == "local/90-marker"
    assert created.outs is not None
    assert created.outs["result"] == "changed"
    assert created.outs["facts"] == {"marker": "0"}
    assert marker.exists()

    refreshed = provider.read(created.id, created.outs)
    assert refreshed.outs is not None
    assert refreshed.outs["inSync"] is True
    assert provider.diff(created.id, refreshed.outs, props).changes is False

    marker.unlink()  # drift: someone removed what the step made
    drifted = provider.read(created.id, created.outs)
    assert drifted.outs is not None
    assert drifted.outs["inSync"] is False
    assert drifted.outs["drift"] == "create marker"
    assert not marker.exists(), "refresh must not repair anything"
    assert provider.diff(created.id, drifted.outs, props).changes is True

    updated = provider.update(created.id, drifted.outs, props)
    assert updated.outs is not None
    assert updated.outs["result"] == "changed"
    assert marker.exists()

    provider.delete(created.id, updated.outs)
    assert not marker.exists()


def test_diff_reruns_on_script_pin_secret_or_target_change(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    provider = HostStepProvider()
    olds = props_for(local_sshd, marker_step(tmp_path / "m"))
    olds["inSync"] = True
    assert provider.diff("x", olds, dict(olds)).changes is False
    for key, value in [
        ("contentHash", "0" * 64),
        ("pins", {"nvidia.driver": "575.57.08"}),
        ("secretEnv", {"K3S_TOKEN": "rotated"}),
        ("hostKey", "SHA256:" + "C" * 43),
        ("port", 2299),
    ]:
        news = {**olds, key: value}
        result = provider.diff("x", olds, news)
        assert result.changes is True, key
        assert not result.replaces
    moved = provider.diff("x", olds, {**olds, "baseDir": "/elsewhere"})
    assert moved.changes is False, "a checkout in another directory is not a change on the host"
    renamed = provider.diff("x", olds, {**olds, "host": "other"})
    assert renamed.replaces == ["host"]


def test_check_reports_missing_inputs() -> None:
    failures = HostStepProvider().check({}, {"host": "x", "port": 70000}).failures
    names = {f.property for f in failures}
    assert {"step", "script", "contentHash", "address", "privateKey", "port"} <= names


def test_real_preflight_runs_on_this_machine(local_sshd: LocalSshd) -> None:
    from components.config import load_stack_file
    from components.plan.host_steps import render_host_steps

    stack = load_stack_file(Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.lab.yaml")
    host = stack.hosts[0].model_copy(update={"nvme": ()})
    (preflight,) = render_host_steps(stack, host, only=("00-preflight",))
    outs = HostStepProvider().create(props_for(local_sshd, preflight)).outs
    assert outs is not None
    assert outs["result"] == "unchanged"
    assert outs["facts"]["os"].startswith(("debian-", "ubuntu-"))
    assert int(outs["facts"]["memory_mib"]) > 0


def test_delete_without_teardown_touches_nothing(local_sshd: LocalSshd, tmp_path: Path) -> None:
    step = marker_step(tmp_path / "m")
    props = props_for(local_sshd, step)
    props["hasTeardown"] = False
    props["port"] = 1  # would fail if it tried to connect
    HostStepProvider().delete("x", props)


@pytest.mark.parametrize("mode", ["apply", "teardown"])
def test_unknown_mode_is_refused(local_sshd: LocalSshd, tmp_path: Path, mode: Mode) -> None:
    from components.execution.outcome import StepRefused
    from components.providers.host_step import run_step_from_props

    props = props_for(local_sshd, marker_step(tmp_path / "m"))
    assert run_step_from_props(props, mode)["result"] in {"changed", "unchanged"}
    with pytest.raises(StepRefused, match="unknown SOVEREIGN_MODE"):
        # the type rules it out; the script must refuse it all the same
        run_step_from_props(props, "destroy-everything")  # type: ignore[arg-type]


def secret_probe_step(log: Path) -> StepPlan:
    """Records which secrets reached it, per mode, and reports the token as a fact."""
    record = (
        '  echo "$SOVEREIGN_MODE" ${K3S_TOKEN:+K3S_TOKEN} ${OTHER_SECRET:+OTHER_SECRET} >>'
        f"{log}\n"
    )
    body = (
        f'apply() {{\n{record}  fact token "${{K3S_TOKEN:-none}}"\n}}\nteardown() {{\n{record}}}\n'
    )
    return StepPlan(
        host="local",
        name="50-k3s",
        script=step_script(body, "50-k3s"),
        secret_env=("K3S_TOKEN",),
        has_teardown=True,
    )


def test_secrets_reach_a_step_only_under_the_names_it_declares_in_every_mode(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    log = tmp_path / "seen"
    provider = HostStepProvider()
    props = props_for(local_sshd, secret_probe_step(log))
    token = "x1"  # short: redaction must not depend on length
    props["secretNames"] = ["K3S_TOKEN"]
    props["secretEnv"] = {"K3S_TOKEN": token, "OTHER_SECRET": "not-for-this-step"}

    created = provider.create(props)
    assert created.outs is not None
    assert created.outs["facts"] == {"token": "[secret]"}, "facts are non-secret outputs"
    read = provider.read(created.id, created.outs)
    assert read.outs is not None
    updated = provider.update(created.id, read.outs, props)
    assert updated.outs is not None
    provider.delete(created.id, updated.outs)
    undeclared = {**props, "secretNames": []}
    provider.create(undeclared)

    seen = [line.split() for line in log.read_text().splitlines()]
    assert seen == [
        ["apply", "K3S_TOKEN"],
        ["check", "K3S_TOKEN"],
        ["apply", "K3S_TOKEN"],
        ["teardown", "K3S_TOKEN"],
        ["apply"],
    ]


def test_state_from_before_secret_names_keeps_its_filtered_secrets() -> None:
    from components.providers.host_step import declared_secrets

    assert declared_secrets({"secretEnv": {"K3S_TOKEN": "t"}}) == {"K3S_TOKEN": "t"}
    assert declared_secrets({"secretEnv": {"K3S_TOKEN": "t"}, "secretNames": []}) == {}
    assert declared_secrets({}) == {}


def test_runtime_inputs_reach_the_script_and_a_change_runs_the_step_again(
    local_sshd: LocalSshd,
) -> None:
    """``env`` (the hosts' addresses, an ordered machine's known once its order returns) is in
    the step's environment in every mode, not in its script; another value means another run."""
    body = 'apply() {\n  fact nodes "${SOVEREIGN_CLUSTER_NODES}"\n}\n'
    step = StepPlan(host="local", name="91-env", script=step_script(body, "91-env"))
    props = {**props_for(local_sshd, step), "env": {"SOVEREIGN_CLUSTER_NODES": "203.0.113.7"}}
    provider = HostStepProvider()
    created = provider.create(props)
    assert created.outs is not None
    assert created.outs["facts"] == {"nodes": "203.0.113.7"}
    moved = {**props, "env": {"SOVEREIGN_CLUSTER_NODES": "203.0.113.8"}}
    assert provider.diff("local/91-env", created.outs, moved).changes
    assert not provider.diff("local/91-env", created.outs, props).changes
    # an ordered machine replaced at the same address runs every step again
    replaced = {**created.outs, "machineId": "fr-par-2/one"}
    assert provider.diff("local/91-env", replaced, {**props, "machineId": "fr-par-2/two"}).changes


@pytest.mark.parametrize(
    "name", ["PATH", "SOVEREIGN_MODE", "LD_PRELOAD", "sovereign_x", "SOVEREIGN_A B"]
)
def test_a_runtime_input_the_step_protocol_does_not_own_is_refused(
    local_sshd: LocalSshd, name: str
) -> None:
    body = "apply() {\n  :\n}\n"
    step = StepPlan(host="local", name="92-env", script=step_script(body, "92-env"))
    props = {**props_for(local_sshd, step), "env": {name: "x"}}
    with pytest.raises(StepFailed, match="runtime input"):
        HostStepProvider().create(props)


def test_no_env_and_an_empty_env_are_the_same_inputs(local_sshd: LocalSshd, tmp_path: Path) -> None:
    props = props_for(local_sshd, marker_step(tmp_path / "m"))
    assert not HostStepProvider().diff("local/90-marker", props, {**props, "env": {}}).changes
