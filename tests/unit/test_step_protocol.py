"""The step protocol holds from both sides: a script on the real step library exits with the
protocol module's codes and prints its tags, and the executor's parser reads them back; no
template writes a code or a tag of its own."""

from __future__ import annotations

import re
import subprocess

import pytest

from components.execution.outcome import StepFailed, StepRefused, interpret_exit
from components.plan.step_protocol import (
    EXIT_OK,
    EXIT_REBOOT_REQUIRED,
    EXIT_REFUSED,
    MODES,
    PROTOCOL_TAGS,
    Mode,
    parse_step_output,
)
from components.plan.templates import template_dir
from tests.conftest import step_script


def run(body: str, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", step_script(body)],
        env={"SOVEREIGN_MODE": mode, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


CHANGING_STEP = """
apply() {
  fact probe.answer 42
  change "touch the marker" true
}
"""


def test_a_refusal_exits_with_the_refused_code_and_reads_back_as_a_refusal() -> None:
    done = run('apply() {\n  refuse "no disk named nvme-x"\n}\n', "apply")
    assert done.returncode == EXIT_REFUSED, done.stderr
    assert parse_step_output(done.stdout).refused == "no disk named nvme-x"
    with pytest.raises(StepRefused, match="no disk named nvme-x"):
        interpret_exit("h step s (apply)", done.returncode, done.stdout, done.stderr)


def test_a_reboot_request_exits_with_the_reboot_code_and_reads_back_as_a_reboot() -> None:
    done = run('apply() {\n  reboot_required "new kernel module"\n}\n', "apply")
    assert done.returncode == EXIT_REBOOT_REQUIRED, done.stderr
    assert parse_step_output(done.stdout).reboot == "new kernel module"
    assert interpret_exit("h step s", done.returncode, done.stdout, done.stderr) == "reboot"


def test_an_apply_reports_its_change_and_facts_and_a_check_reports_drift() -> None:
    applied = run(CHANGING_STEP, "apply")
    assert applied.returncode == EXIT_OK, applied.stderr
    outcome = interpret_exit("h step s", applied.returncode, applied.stdout, applied.stderr)
    assert not isinstance(outcome, str)
    assert (outcome.result, outcome.facts, outcome.changes) == (
        "changed",
        {"probe.answer": "42"},
        ("touch the marker",),
    )
    checked = run(CHANGING_STEP, "check")
    assert checked.returncode == EXIT_OK, checked.stderr
    parsed = parse_step_output(checked.stdout)
    assert (parsed.result, parsed.drift, parsed.changes) == ("drift", "touch the marker", ())


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_of_the_protocol_is_one_the_library_runs(mode: Mode) -> None:
    done = run("apply() {\n  :\n}\n", mode)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert parse_step_output(done.stdout).result == "unchanged"


def test_a_mode_outside_the_protocol_is_refused_naming_the_modes() -> None:
    done = run("apply() {\n  :\n}\n", "destroy")
    assert done.returncode == EXIT_REFUSED
    refused = parse_step_output(done.stdout).refused or ""
    assert all(mode in refused for mode in MODES), refused


def test_a_result_line_with_an_unknown_word_is_not_a_result() -> None:
    parsed = parse_step_output("SOVEREIGN-RESULT maybe\nSOVEREIGN-RESULTchanged\n")
    assert parsed.result is None
    with pytest.raises(StepFailed, match="without a SOVEREIGN-RESULT line"):
        interpret_exit("h step s", EXIT_OK, "SOVEREIGN-RESULT maybe\n", "")


def test_no_template_states_an_exit_code_or_a_tag_of_its_own() -> None:
    stated = []
    for template in sorted(template_dir().glob("*.j2")):
        for number, line in enumerate(template.read_text().splitlines(), 1):
            where = f"{template.name}:{number}"
            if any(tag in line for tag in PROTOCOL_TAGS):
                stated.append(f"{where}: {line.strip()}")
            if re.search(r"\bexit [0-9]+\b", line):
                stated.append(f"{where}: {line.strip()}")
    assert not stated, "render these from components.plan.step_protocol:\n" + "\n".join(stated)


def test_the_template_scan_reads_the_step_library() -> None:
    # the scan above would pass on an empty directory
    assert (template_dir() / "_lib.sh.j2").is_file()
    assert "{{ refused_tag }}" in (template_dir() / "_lib.sh.j2").read_text()
