"""``apply_stack`` ordering, waits and failure handling, over real SSH to loopback "hosts"."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.config.models import StackConfig
from components.plan.host_steps import STEP_BUILDERS, StepPlan, render_host_steps
from components.plan.step_protocol import Mode
from components.rollout import StepReport, apply_stack, not_applicable_steps
from tests.conftest import LocalSshd, step_script

ROOT = Path(__file__).resolve().parents[2]


def three_host_stack(sshd: LocalSshd) -> StackConfig:
    """The staging stack re-pointed at three loopback addresses served by the test sshd."""
    base = load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")
    hosts = []
    for i, name in enumerate(("srv-1", "agent-2", "agent-3")):
        template = base.hosts[min(i, 1)]
        ssh = template.ssh.model_copy(
            update={
                "user": sshd.user,
                "port": sshd.port,
                "private_key": f"file:{sshd.client_keys['ed25519']}",
                "host_key": sshd.host_key_fingerprint,
            }
        )
        hosts.append(
            template.model_copy(update={"name": name, "address": f"127.0.0.{i + 1}", "ssh": ssh})
        )
    return base.model_copy(
        update={"hosts": tuple(hosts), "ssh": base.ssh.model_copy(update={"connect_retries": 0})}
    )


def timed_step(
    host: str, name: str, log: Path, body: str = "", waits: tuple[tuple[str, str], ...] = ()
) -> StepPlan:
    body = (
        "apply() {\n"
        f'  echo "start {host} {name} $(date +%s.%N)" >>{log}\n'
        f"  {body or 'true'}\n"
        f'  echo "end {host} {name} $(date +%s.%N)" >>{log}\n'
        "}\n"
    )
    script = step_script(body, name)
    return StepPlan(host=host, name=name, script=script, waits_for=waits)


def events(log: Path) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in log.read_text().splitlines():
        kind, host, step, stamp = line.split()
        out[(kind, host, step)] = float(stamp)
    return out


def meet_all(rendezvous: Path, hosts: tuple[str, ...], host: str) -> str:
    """Shell that marks ``host`` as started in ``rendezvous`` and waits (at most 30 s) until every
    host has: it finishes only when all of them run at the same time."""
    return (
        f"touch {rendezvous}/{host}; n=0; "
        f"until [ $(ls {rendezvous} | wc -l) -ge {len(hosts)} ]; do "
        f'n=$((n + 1)); [ "$n" -le 600 ] || {{ echo "alone after 30 s" >&2; exit 9; }}; sleep 0.05; '
        "done"
    )


def test_hosts_run_in_parallel_steps_in_order_and_joins_wait(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    config = three_host_stack(local_sshd)
    log = tmp_path / "events"
    rendezvous = tmp_path / "started"
    rendezvous.mkdir()
    hosts = ("srv-1", "agent-2", "agent-3")
    plans = {
        "srv-1": [
            timed_step("srv-1", "10-a", log, meet_all(rendezvous, hosts, "srv-1")),
            timed_step("srv-1", "50-k3s", log, "sleep 1"),
        ],
        **{
            h: [
                timed_step(h, "10-a", log, meet_all(rendezvous, hosts, h)),
                timed_step(h, "50-k3s", log, waits=(("srv-1", "50-k3s"),)),
            ]
            for h in ("agent-2", "agent-3")
        },
    }
    seen: list[StepReport] = []
    report = apply_stack(config, ROOT, plans=plans, on_step=seen.append)
    # every first step waited for the others to start: none could finish in a serial run
    assert not report.failed, [s.error for s in report.failed]
    assert len(seen) == 6
    e = events(log)
    for host in hosts:
        assert e[("end", host, "10-a")] <= e[("start", host, "50-k3s")]
    for agent in ("agent-2", "agent-3"):
        assert e[("end", "srv-1", "50-k3s")] <= e[("start", agent, "50-k3s")]


def test_a_failed_step_stops_its_host_and_its_waiters_only(
    local_sshd: LocalSshd, tmp_path: Path
) -> None:
    config = three_host_stack(local_sshd)
    log = tmp_path / "events"
    plans = {
        "srv-1": [
            timed_step("srv-1", "10-a", log, 'echo "disk on fire" >&2; exit 9'),
            timed_step("srv-1", "50-k3s", log),
        ],
        "agent-2": [
            timed_step("agent-2", "10-a", log),
            timed_step("agent-2", "50-k3s", log, waits=(("srv-1", "50-k3s"),)),
        ],
        "agent-3": [timed_step("agent-3", "10-a", log), timed_step("agent-3", "20-b", log)],
    }
    report = apply_stack(config, ROOT, plans=plans)
    results = {(s.host, s.step): s for s in report.steps}
    assert results[("srv-1", "10-a")].result == "failed"
    assert "disk on fire" in results[("srv-1", "10-a")].error
    assert results[("srv-1", "50-k3s")].result == "skipped"
    assert results[("agent-2", "10-a")].result in {"changed", "unchanged"}
    assert results[("agent-2", "50-k3s")].result == "skipped"
    assert results[("agent-3", "20-b")].result in {"changed", "unchanged"}


def test_concurrency_limit_is_respected(local_sshd: LocalSshd, tmp_path: Path) -> None:
    config = three_host_stack(local_sshd)
    config = config.model_copy(
        update={"ssh": config.ssh.model_copy(update={"max_parallel_hosts": 1})}
    )
    log = tmp_path / "events"
    plans = {h.name: [timed_step(h.name, "10-a", log, "sleep 0.3")] for h in config.hosts}
    apply_stack(config, ROOT, plans=plans)
    e = events(log)
    spans = sorted((e[("start", h, "10-a")], e[("end", h, "10-a")]) for h in plans)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, "one host at a time"


def test_unknown_host_is_refused(local_sshd: LocalSshd) -> None:
    with pytest.raises(ValueError, match="no such host"):
        apply_stack(three_host_stack(local_sshd), ROOT, hosts=["nope"])


def secret_probe_step(host: str, name: str, log: Path, declares: tuple[str, ...]) -> StepPlan:
    """A step that records, per mode, which secret variables reached it."""
    # unquoted: a variable that is not set leaves no word
    record = (
        f'  echo "{host} {name} $SOVEREIGN_MODE" '
        "${K3S_TOKEN:+K3S_TOKEN} ${OTHER_SECRET:+OTHER_SECRET} >>" + str(log) + "\n"
    )
    body = f"apply() {{\n{record}}}\nteardown() {{\n{record}}}\n"
    return StepPlan(
        host=host,
        name=name,
        script=step_script(body, name),
        secret_env=declares,
        has_teardown=True,
    )


@pytest.mark.parametrize("mode", ["apply", "check", "teardown"])
def test_secrets_reach_only_the_steps_that_declare_them(
    local_sshd: LocalSshd, tmp_path: Path, mode: Mode
) -> None:
    config = three_host_stack(local_sshd)
    log = tmp_path / "seen"
    plans = {
        h.name: [
            secret_probe_step(h.name, "10-base", log, ()),
            secret_probe_step(h.name, "50-k3s", log, ("K3S_TOKEN",)),
            secret_probe_step(h.name, "60-other", log, ("OTHER_SECRET",)),
        ]
        for h in config.hosts
    }
    secrets = {"K3S_TOKEN": "tok-" + "a" * 40, "OTHER_SECRET": "b"}
    report = apply_stack(config, ROOT, mode=mode, plans=plans, secret_env=secrets)
    assert not report.failed, report.failed
    seen = {}
    for line in log.read_text().splitlines():
        host, step, ran_in, *names = line.split()
        seen[(host, step, ran_in)] = names
    expected: dict[tuple[str, str, str], list[str]] = {}
    for host in ("srv-1", "agent-2", "agent-3"):
        expected[(host, "10-base", mode)] = []
        expected[(host, "50-k3s", mode)] = ["K3S_TOKEN"]
        expected[(host, "60-other", mode)] = ["OTHER_SECRET"]
    assert seen == expected


SHIPPED_STACKS = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))


@pytest.mark.parametrize("stack", SHIPPED_STACKS, ids=lambda p: p.name)
def test_every_step_is_either_planned_or_not_applicable_with_a_reason_naming_its_setting(
    stack: Path,
) -> None:
    # an ordered host's address is known after its order: the placeholder stands for it
    config = load_stack_file(stack).with_pending_addresses()
    all_steps = [b.template.removesuffix(".sh.j2") for b in STEP_BUILDERS]
    for host in config.hosts:
        planned = [s.name for s in render_host_steps(config, host)]
        left_out = not_applicable_steps(config, [host])
        assert sorted(planned + [n.step for n in left_out]) == sorted(all_steps), host.name
        for entry in left_out:
            assert "condition does not hold" not in entry.reason, entry


def test_a_host_without_gpus_or_drives_in_a_stack_without_k3s_is_told_why_each_step_is_left_out() -> (
    None
):
    base = load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")
    bare = base.hosts[1].model_copy(
        update={"gpu": base.hosts[1].gpu.model_copy(update={"count": 0}), "nvme": ()}
    )
    config = base.model_copy(
        update={
            "hosts": (base.hosts[0], bare),
            "k3s": base.k3s.model_copy(update={"install": False}),
        }
    )
    left_out = {(n.host, n.step): n.reason for n in not_applicable_steps(config, config.hosts)}
    assert left_out == {
        (bare.name, "20-nvidia-driver"): "no GPUs (hosts[1].gpu.count is 0)",
        (bare.name, "30-cuda-container-toolkit"): "no GPUs (hosts[1].gpu.count is 0)",
        (bare.name, "40-nvme-cache"): "no NVMe drives (hosts[1].nvme is empty)",
        (base.hosts[0].name, "50-k3s"): "the stack does not install K3s (k3s.install is false)",
        (bare.name, "50-k3s"): "the stack does not install K3s (k3s.install is false)",
    }
