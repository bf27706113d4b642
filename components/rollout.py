"""``sovereign apply``: run a stack's host steps without the Pulumi engine.

The same steps, scripts and executor that the ``HostStep`` provider uses under ``pulumi up``:
hosts in parallel (up to ``ssh.maxParallelHosts``), each host's steps strictly in order, a step
that waits for another host's step (a joining K3s node) blocked until that one has finished.
Useful for trials on lab hosts, for benchmarks, and for ``--check`` drift reports.

Steps the plan leaves out for a host (the NVIDIA driver on a host without GPUs, K3s on a stack that
does not install it) are reported with the reason, so that a missing step is never a surprise.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components.config.loader import encrypted_keys
from components.config.models import HostSpec, StackConfig
from components.execution.outcome import StepError
from components.execution.ssh import (
    HostSession,
    HostTarget,
    LineSink,
    SessionPool,
    on_hosts,
    run_step,
)
from components.plan.host_steps import STEP_BUILDERS, StepPlan, render_host_steps
from components.plan.step_protocol import Mode

TOKEN_ENV = "SOVEREIGN_K3S_TOKEN"  # noqa: S105 - a variable name, not a value


@dataclass(frozen=True)
class StepReport:
    host: str
    step: str
    result: str  # changed | unchanged | drift | failed | skipped
    seconds: float
    changes: tuple[str, ...] = ()
    facts: dict[str, str] = field(default_factory=dict)
    error: str = ""
    drift: str = ""  # check mode: what an apply would change


@dataclass(frozen=True)
class NotApplicable:
    """A step the plan leaves out for a host, and why."""

    host: str
    step: str
    reason: str


@dataclass
class RolloutReport:
    mode: Mode
    steps: list[StepReport] = field(default_factory=list)
    seconds: float = 0.0
    not_applicable: list[NotApplicable] = field(default_factory=list)

    @property
    def failed(self) -> list[StepReport]:
        return [s for s in self.steps if s.result == "failed"]

    @property
    def changed(self) -> list[StepReport]:
        return [s for s in self.steps if s.result in ("changed", "drift")]

    @property
    def drifted(self) -> list[StepReport]:
        """Check mode: the steps an apply would change, each with its first difference."""
        return [s for s in self.steps if s.result == "drift"]


def _reason_left_out(config: StackConfig, index: int, step: str) -> str:
    """Why the plan leaves ``step`` out for ``config.hosts[index]``, naming the setting."""
    host = f"hosts[{index}]"
    no_gpus = f"no GPUs ({host}.gpu.count is 0)"
    reasons = {
        "20-nvidia-driver": no_gpus,
        "30-cuda-container-toolkit": no_gpus,
        "40-nvme-cache": f"no NVMe drives ({host}.nvme is empty)",
        "50-k3s": "the stack does not install K3s (k3s.install is false)",
    }
    return reasons.get(step, f"its condition does not hold for {config.hosts[index].name}")


def not_applicable_steps(config: StackConfig, hosts: Sequence[HostSpec]) -> list[NotApplicable]:
    """The steps of the plan that do not apply to each of ``hosts``, in run order, with reasons."""
    index = {h.name: i for i, h in enumerate(config.hosts)}
    left_out = []
    for host in hosts:
        for builder in STEP_BUILDERS:
            if not builder.applies(config, host):
                step = builder.template.removesuffix(".sh.j2")
                reason = _reason_left_out(config, index[host.name], step)
                left_out.append(NotApplicable(host.name, step, reason))
    return left_out


def secret_env_for(config: StackConfig, stack_file: Path | None) -> dict[str, str]:
    """Secrets for steps when running without Pulumi (which would decrypt them for us)."""
    if not config.k3s.install:
        return {}
    if TOKEN_ENV in os.environ:
        return {"K3S_TOKEN": os.environ[TOKEN_ENV]}
    if config.k3s_token is None:
        return {}
    if stack_file is not None and "k3sToken" in encrypted_keys(stack_file):
        raise StepError(
            f"k3sToken is encrypted for Pulumi in {stack_file}; export {TOKEN_ENV} to run "
            "steps without the Pulumi CLI"
        )
    return {"K3S_TOKEN": config.k3s_token.get_secret_value()}


class _Barrier:
    """Which (host, step) pairs have finished, for steps that wait on another host."""

    def __init__(self) -> None:
        self._done: dict[tuple[str, str], bool] = {}
        self._cond = threading.Condition()

    def finish(self, key: tuple[str, str], ok: bool) -> None:
        with self._cond:
            self._done[key] = ok
            self._cond.notify_all()

    def wait(self, keys: Sequence[tuple[str, str]]) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: all(k in self._done for k in keys))
            return all(self._done[k] for k in keys)


def _run_one(
    session: HostSession,
    host: str,
    step: StepPlan,
    mode: Mode,
    secret_env: dict[str, str],
    sink: LineSink | None,
) -> StepReport:
    started = time.monotonic()
    try:
        outcome = run_step(
            session,
            step.name,
            step.script,
            mode=mode,
            secret_env={k: v for k, v in secret_env.items() if k in step.secret_env},
            payloads=step.payloads,
            reboot_allowed=step.reboot_allowed,
            on_line=sink,
            env=step.env,
        )
    except StepError as exc:
        return StepReport(host, step.name, "failed", time.monotonic() - started, error=str(exc))
    return StepReport(
        host,
        step.name,
        outcome.result,
        time.monotonic() - started,
        outcome.changes,
        dict(outcome.facts),
        drift=outcome.drift or "",
    )


def apply_stack(
    config: StackConfig,
    project_dir: Path,
    *,
    mode: Mode = "apply",
    hosts: Sequence[str] | None = None,
    secret_env: dict[str, str] | None = None,
    on_line: Callable[[str, str, str], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    plans: dict[str, list[StepPlan]] | None = None,
) -> RolloutReport:
    """Run every step of every selected host; a failed host stops, the others go on.

    ``plans`` replaces the rendered steps (per host name), for running a subset of steps; the
    report then lists no steps as not applicable (the caller chose them).
    """
    selected = [h for h in config.hosts if hosts is None or h.name in hosts]
    unknown = set(hosts or ()) - {h.name for h in config.hosts}
    if unknown:
        raise ValueError(f"no such host(s) in the stack: {', '.join(sorted(unknown))}")
    report = RolloutReport(mode)
    if plans is None:
        plans = {h.name: render_host_steps(config, h) for h in selected}
        report.not_applicable = not_applicable_steps(config, selected)
    else:
        selected = [h for h in selected if h.name in plans]
    planned = {(h, s.name) for h, steps in plans.items() for s in steps}
    pool = SessionPool(config.ssh)
    barrier = _Barrier()
    lock = threading.Lock()
    started = time.monotonic()

    def record(step: StepReport) -> None:
        with lock:
            report.steps.append(step)
        if on_step is not None:
            on_step(step)

    def run_host(host: HostSpec) -> None:
        session = pool.session(HostTarget.from_spec(host, project_dir))
        steps: list[StepPlan] = plans[host.name]
        if mode == "teardown":
            steps = [s for s in reversed(steps) if s.has_teardown]
        sink: LineSink | None = None
        if on_line is not None:
            line_sink = on_line
            sink = lambda stream, line: line_sink(host.name, stream, line)  # noqa: E731
        failed = False
        for step in steps:
            key = (host.name, step.name)
            waits = [w for w in step.waits_for if w in planned] if mode == "apply" else []
            if failed or (waits and not barrier.wait(waits)):
                record(
                    StepReport(host.name, step.name, "skipped", 0.0, error="an earlier step failed")
                )
                barrier.finish(key, False)
                failed = True
                continue
            result = _run_one(session, host.name, step, mode, secret_env or {}, sink)
            record(result)
            ok = result.result != "failed"
            barrier.finish(key, ok)
            failed = not ok

    try:
        # a host waiting on another must not take the worker that host needs: the first K3s
        # server goes first, and waits only ever point at it
        order = sorted(
            selected, key=lambda h: bool(plans[h.name] and any(s.waits_for for s in plans[h.name]))
        )
        on_hosts(order, run_host, config.ssh.max_parallel_hosts)
    finally:
        pool.close()
    report.seconds = time.monotonic() - started
    return report
