"""Each step owns its fact keys: over every step of every host of every example stack, no fact
key (or key pattern, such as ``nvme.<id>``) can be printed by two steps, so a host's facts, merged
across its steps into the ``facts`` output, lose none."""

from __future__ import annotations

import re
from collections import defaultdict
from fnmatch import fnmatchcase
from pathlib import Path

from components.config import load_stack_file
from components.plan.host_steps import STEP_BUILDERS, render_host_steps

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
# `fact KEY VALUE` as the step library's function is called; KEY may be quoted
FACT_CALL = re.compile(r"^\s*fact\s+(\"[^\"]*\"|'[^']*'|\S+)", re.MULTILINE)
# a shell expansion inside a key: the part of the key that varies
EXPANSION = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*")


def fact_keys(script: str) -> set[str]:
    """The keys ``script`` can print, each expansion in a key written as ``*``."""
    return {EXPANSION.sub("*", raw.strip("\"'")) for raw in FACT_CALL.findall(script)}


def keys_by_step() -> dict[str, set[str]]:
    """Every fact key pattern, by step name, over every host of every example stack."""
    found: dict[str, set[str]] = defaultdict(set)
    for stack_file in STACKS:
        # an ordered host's address is known after its order: the placeholder stands for it
        config = load_stack_file(stack_file).with_pending_addresses()
        for host in config.hosts:
            for step in render_host_steps(config, host):
                found[step.name] |= fact_keys(step.script)
    return found


def test_fact_keys_are_read_with_their_patterns() -> None:
    script = 'fact os "x"\n  fact "nvme.${id}" "$dev"\nfact_count=1\n  fact k3s.role "$R"\n'
    assert fact_keys(script) == {"os", "nvme.*", "k3s.role"}


def test_every_step_of_the_example_stacks_is_seen_with_its_facts() -> None:
    found = keys_by_step()
    every_step = {builder.template.removesuffix(".sh.j2") for builder in STEP_BUILDERS}
    assert set(found) == every_step, "an example stack no longer renders every step"
    silent = sorted(step for step, keys in found.items() if not keys)
    assert not silent, f"no fact found in {silent}: is the fact call pattern stale?"


def test_every_fact_key_names_what_it_is() -> None:
    # a key that is all expansion ("$key") could be any key: no step could be said to own it
    unnamed = sorted(
        f"{step}: {key}"
        for step, keys in keys_by_step().items()
        for key in keys
        if key.startswith("*")
    )
    assert not unnamed, unnamed


def test_no_fact_key_belongs_to_two_steps() -> None:
    found = keys_by_step()
    shared = []
    steps = sorted(found)
    for i, step in enumerate(steps):
        for other in steps[i + 1 :]:
            for key in sorted(found[step]):
                for other_key in sorted(found[other]):
                    if fnmatchcase(key, other_key) or fnmatchcase(other_key, key):
                        shared.append(f"{key} ({step}) and {other_key} ({other})")
    assert not shared, "fact keys printed by two steps:\n" + "\n".join(shared)
