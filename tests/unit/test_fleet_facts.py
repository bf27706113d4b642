"""The fleet's ``facts`` output is the rollout's record: for every host, what each of its steps
reported, none lost when the steps' facts are merged (under Pulumi mocks, each step reporting a
fact of its own)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi

from components.config import load_stack_file
from components.fleet import Fleet, FleetSpec
from components.plan.host_steps import render_host_steps
from tests.unit.test_program_mocks import use_fresh_event_loop

ROOT = Path(__file__).resolve().parents[2]
HOST_STEP_TYPE = "pulumi-python:dynamic/sovereign:HostStep"


class StepsReportingFacts(pulumi.runtime.Mocks):
    """Each ``HostStep`` reports one fact of its own: ``<step>.ran`` = its host's name."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outs = dict(args.inputs)
        if args.typ == HOST_STEP_TYPE:
            host, step = outs["host"], outs["step"]
            outs.update(result="changed", facts={f"{step}.ran": host}, changes=[], inSync=True)
            return f"{host}/{step}", outs
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []


def test_the_facts_output_holds_every_steps_facts_for_every_host() -> None:
    config = load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml")
    expected = {
        host.name: {f"{step.name}.ran": host.name for step in render_host_steps(config, host)}
        for host in config.hosts
    }
    assert all(len(facts) >= 5 for facts in expected.values())
    use_fresh_event_loop()
    pulumi.runtime.set_mocks(
        StepsReportingFacts(), project="sovereign-inference", stack="staging", preview=False
    )

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def build() -> pulumi.Output[None]:
        fleet = Fleet("staging", FleetSpec(stack=config))

        def check(facts: dict[str, dict[str, str]]) -> None:
            assert facts == expected

        return fleet.facts.apply(check)

    build()
