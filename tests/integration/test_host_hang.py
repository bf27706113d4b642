"""A lab host that stops answering in the middle of a rollout step (its guest paused through
QMP, as a hung kernel would leave it): the rollout reports it within the keepalive bound, not at
the step timeout, and converges on a re-run once the host runs again."""

from __future__ import annotations

import time

import pytest

from components.config.models import StackConfig
from components.lab.hosts import pause_guest, resume_guest
from components.lab.inventory import LabHost
from components.plan.host_steps import StepPlan
from components.rollout import StepReport, apply_stack
from tests.conftest import step_script
from tests.integration.conftest import TIMEOUTS
from tests.lab_stacks import ROOT, stack_for

pytestmark = pytest.mark.integration

KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_MISSED_REPLIES = 3
STEP_NAME = "99-slow-work"
DONE_MARKER = "/var/lib/sovereign-test/slow-work-done"
# the step announces itself, then works long enough to be paused in the middle of it
SLOW_STEP = step_script(
    "apply() {\n"
    f"  if [ ! -f {DONE_MARKER} ]; then\n"
    '    echo "slow work started"\n'
    "    sleep 10\n"
    f'    change "finish the slow work" install -D /dev/null {DONE_MARKER}\n'
    "  fi\n"
    "}\n",
    step_name=STEP_NAME,
)


def stack_with_fast_keepalive(host: LabHost) -> StackConfig:
    config = stack_for([host])
    ssh = config.ssh.model_copy(
        update={
            "keepalive_interval_seconds": KEEPALIVE_INTERVAL_S,
            "keepalive_missed_replies": KEEPALIVE_MISSED_REPLIES,
        }
    )
    return config.model_copy(update={"ssh": ssh})


def test_a_host_paused_mid_step_is_reported_within_the_keepalive_bound_and_converges_after_it_resumes(
    lab_host: LabHost,
) -> None:
    config = stack_with_fast_keepalive(lab_host)
    plans = {lab_host.name: [StepPlan(host=lab_host.name, name=STEP_NAME, script=SLOW_STEP)]}
    paused_at: list[float] = []
    reported_at: list[float] = []

    def pause_when_started(_host: str, _stream: str, line: str) -> None:
        if line == "slow work started" and not paused_at:
            pause_guest(lab_host, TIMEOUTS)
            paused_at.append(time.monotonic())

    def note_report(_step: StepReport) -> None:
        reported_at.append(time.monotonic())

    try:
        hung = apply_stack(
            config, ROOT, plans=plans, on_line=pause_when_started, on_step=note_report
        )
    finally:
        if paused_at:
            resume_guest(lab_host, TIMEOUTS)
    assert paused_at, "the step never started"
    [step] = hung.steps
    assert step.result == "failed", step
    assert f"host stopped answering during step {STEP_NAME} (apply) after " in step.error
    noticed_after = reported_at[0] - paused_at[0]
    bound = config.ssh.keepalive_bound_seconds
    print(f"reported {noticed_after:.1f} s after the pause (bound {bound} s): {step.error}")
    # the judge acts at the bound after the last answer, which came before the pause
    assert noticed_after < bound + KEEPALIVE_INTERVAL_S + 10
    assert noticed_after < config.ssh.step_timeout_seconds / 10

    # the host runs on from where it stopped; a re-run converges whether or not the interrupted
    # run finished its work in the meantime
    rerun = apply_stack(config, ROOT, plans=plans)
    assert [(s.result, s.error) for s in rerun.steps] in (
        [("changed", "")],
        [("unchanged", "")],
    )
    settled = apply_stack(config, ROOT, plans=plans)
    assert [(s.result, s.error) for s in settled.steps] == [("unchanged", "")]
