"""``sovereign validate`` and ``sovereign render`` as a user runs them (real subprocesses)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_matches_golden, sovereign

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))
GOLDEN = ROOT / "tests" / "golden" / "render"
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def isolated_project(tmp_path: Path) -> Path:
    """A copy of the project's stacks without any lab inventory, so output is deterministic."""
    project = tmp_path / "project"
    (project / "stacks").mkdir(parents=True)
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    for stack in STACKS:
        shutil.copy(stack, project / "stacks" / stack.name)
    return project


def test_validate_accepts_every_shipped_stack(tmp_path: Path) -> None:
    from tests.unit.test_config_files import lab_inventory

    project = isolated_project(tmp_path)
    lab_inventory(project)  # the lab stack names the inventory `sovereign lab up` writes
    stacks = sorted(str(p) for p in (project / "stacks").glob("Pulumi.*.yaml"))
    result = sovereign("validate", *stacks, cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(STACKS)


def test_validate_refuses_the_lab_stack_before_the_lab_is_up(tmp_path: Path) -> None:
    project = isolated_project(tmp_path)
    result = sovereign("validate", "stacks/Pulumi.lab.yaml", cwd=project)
    assert result.returncode == 2
    assert "inventory: file '.lab/inventory.json' not found" in result.stderr
    assert "sovereign lab up --hosts 2 --nvme 2" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())
    hosts = data["config"]["sovereign-inference:hosts"]
    hosts[0]["gpu"]["count"] = 99
    hosts[1]["country"] = "CH"
    data["config"]["sovereign-inference:k3s"]["version"] = "latest"
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    good = ROOT / "stacks" / "Pulumi.staging.yaml"
    result = sovereign("validate", str(good), str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(f"{bad}: ") for line in lines)
    paths = {line.removeprefix(f"{bad}: ").split(": ")[0] for line in lines}
    assert paths == {"hosts[0].gpu.count", "k3s.version"}  # cross-field rules wait for valid fields
    assert f"{good}: ok" in result.stdout


def test_validate_reports_cross_field_problems_once_fields_are_valid(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "stacks" / "Pulumi.staging.yaml").read_text())
    hosts = data["config"]["sovereign-inference:hosts"]
    hosts[1]["country"] = "CH"
    hosts[1]["name"] = hosts[0]["name"]
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = sovereign("validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}: hosts[1].name: duplicate host name 'stg-gpu-1' (also hosts[0])" in result.stderr
    assert f"{bad}: hosts[1].country: CH is outside the residency policy" in result.stderr


def test_validate_yaml_error_names_line(tmp_path: Path) -> None:
    bad = tmp_path / "Pulumi.broken.yaml"
    bad.write_text("config:\n  sovereign-inference:environment: lab\n    indented: wrong\n")
    result = sovereign("validate", str(bad))
    assert result.returncode == 2
    assert "YAML syntax error at line 3" in result.stderr


def test_validate_missing_file(tmp_path: Path) -> None:
    result = sovereign("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "cannot read file" in result.stderr


@pytest.mark.parametrize("stack", STACKS, ids=lambda p: p.name)
def test_render_writes_a_reviewable_tree_matching_golden(stack: Path, tmp_path: Path) -> None:
    project = isolated_project(tmp_path)
    out = tmp_path / "out"
    result = sovereign("render", f"stacks/{stack.name}", "--out", str(out), cwd=project)
    assert result.returncode == 0, result.stderr
    # payloads (e.g. nvidia-ml-py) are vendored files: steps.json pins them by sha256 instead
    rendered = {
        str(p.relative_to(out)): p.read_text()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] != "payloads"
    }
    for payload in (out / "payloads").glob("*"):
        digest = hashlib.sha256(payload.read_bytes()).hexdigest()
        assert payload.name.startswith(digest[:16]), f"{payload.name} does not match its content"
    env = stack.name.removeprefix("Pulumi.").removesuffix(".yaml")
    scripts = sorted(out.glob("hosts/*/*.sh"))
    assert scripts
    check = subprocess.run(
        [SHELLCHECK, "--severity=style", *map(str, scripts)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout
    secret_free = "\n".join(rendered.values())
    assert "secure:" not in secret_free
    config = yaml.safe_load(stack.read_text())["config"]
    for value in config.values():
        if isinstance(value, dict) and "secure" in value:
            assert value["secure"] not in secret_free
    assert_matches_golden(rendered, GOLDEN / env)  # last: an updating run skips from here


def test_render_refuses_a_foreign_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = sovereign("render", str(STACKS[0]), "--out", str(out))
    assert result.returncode == 2
    assert "not empty" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_render_replaces_its_own_previous_tree(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert sovereign("render", str(STACKS[0]), "--out", str(out)).returncode == 0
    stale = out / "hosts" / "stale-host" / "00-preflight.sh"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    assert sovereign("render", str(STACKS[0]), "--out", str(out)).returncode == 0
    assert not stale.exists()
