"""The review tree: the plan builds its files in memory and the writer puts exactly those on disk,
replacing its own earlier tree and never touching a directory it did not write."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from components.config import load_stack_file
from components.plan.render import RenderedFile, render_files
from components.review_tree import MARKER, RenderTargetNotEmpty, write_tree

ROOT = Path(__file__).resolve().parents[2]


def test_the_plan_builds_the_tree_as_relative_paths_each_once() -> None:
    files = render_files(load_stack_file(ROOT / "stacks" / "Pulumi.staging.yaml"))
    paths = [f.path for f in files]
    assert len(paths) == len(set(paths))
    assert not [p for p in paths if Path(p).is_absolute() or ".." in Path(p).parts]
    scripts = [f for f in files if f.path.endswith(".sh")]
    assert scripts
    assert {f.mode for f in scripts} == {0o755}


def test_the_writer_puts_exactly_the_files_on_disk_with_their_modes(tmp_path: Path) -> None:
    files = [RenderedFile("a/run.sh", "echo a\n", 0o755), RenderedFile("b.json", "{}\n")]
    out = tmp_path / "out"
    written = write_tree(files, out)
    assert written == [out / "a" / "run.sh", out / "b.json"]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == {"a/run.sh", "b.json", MARKER}
    assert stat.S_IMODE((out / "a" / "run.sh").stat().st_mode) == 0o755
    assert (out / "b.json").read_text() == "{}\n"


def test_a_second_write_leaves_no_file_of_the_first(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_tree([RenderedFile("old/gone.txt", "x\n")], out)
    write_tree([RenderedFile("new.txt", "y\n")], out)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert on_disk == {"new.txt", MARKER}


def test_a_directory_the_writer_did_not_write_is_refused_untouched(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    with pytest.raises(RenderTargetNotEmpty, match="not written by 'sovereign render'"):
        write_tree([RenderedFile("x.txt", "x\n")], out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me\n"
