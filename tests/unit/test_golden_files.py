"""The golden-file comparison fails on any difference and never passes a run that rewrote the
files; ``.ci/run`` refuses to rewrite them at all."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, UPDATE_GOLDEN, assert_matches_golden, read_tree

RENDERED = {"hosts/a/10-base.sh": "echo base\n", "stack.json": '{"k3s": {}}\n'}


@pytest.fixture
def golden(tmp_path: Path) -> Path:
    directory = tmp_path / "golden"
    for rel, text in RENDERED.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    return directory


@pytest.fixture
def comparing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(UPDATE_GOLDEN, raising=False)


@pytest.fixture
def updating(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(UPDATE_GOLDEN, "1")


@pytest.mark.usefixtures("comparing")
def test_an_identical_tree_passes(golden: Path) -> None:
    assert_matches_golden(dict(RENDERED), golden)


@pytest.mark.usefixtures("comparing")
def test_a_changed_file_fails_naming_it_with_the_start_of_its_diff(golden: Path) -> None:
    rendered = {**RENDERED, "hosts/a/10-base.sh": "echo changed\n"}
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_matches_golden(rendered, golden)
    message = str(failed.value)
    assert "1 changed (hosts/a/10-base.sh)" in message
    assert "-echo base\n+echo changed" in message
    assert read_tree(golden) == RENDERED  # comparing never writes


@pytest.mark.usefixtures("comparing")
def test_a_missing_or_extra_file_fails_even_when_every_common_file_matches(golden: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"1 removed \(stack\.json\)"):
        assert_matches_golden({"hosts/a/10-base.sh": "echo base\n"}, golden)
    with pytest.raises(pytest.fail.Exception, match=r"1 added \(hosts/b/10-base\.sh\)"):
        assert_matches_golden({**RENDERED, "hosts/b/10-base.sh": "echo base\n"}, golden)


@pytest.mark.usefixtures("updating")
def test_updating_writes_the_difference_and_skips_instead_of_passing(golden: Path) -> None:
    rendered = {"hosts/a/10-base.sh": "echo changed\n", "hosts/b/10-base.sh": "echo b\n"}
    with pytest.raises(pytest.skip.Exception) as skipped:
        assert_matches_golden(rendered, golden)
    assert "1 changed (hosts/a/10-base.sh); 1 added (hosts/b/10-base.sh); 1 removed" in str(
        skipped.value
    )
    assert read_tree(golden) == rendered


@pytest.mark.usefixtures("updating")
def test_updating_a_tree_that_already_matches_passes_and_writes_nothing(golden: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in golden.rglob("*")}
    assert_matches_golden(dict(RENDERED), golden)
    assert {p: p.stat().st_mtime_ns for p in golden.rglob("*")} == before


def test_ci_refuses_to_run_with_update_golden_set() -> None:
    """Run with no PATH: had the refusal gone, the script could not install or run anything."""
    done = subprocess.run(
        ["/bin/bash", str(ROOT / ".ci" / "run")],
        env={UPDATE_GOLDEN: "1", "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to run with UPDATE_GOLDEN set" in done.stderr
    assert done.stdout == ""  # not even the setup section began
