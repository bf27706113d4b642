"""The compile caches next to the weights: made for the server's user by ``ensure``, never taken
for a revision, and removed with the revision they were compiled for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sovereign_weights.cache import evict_lru, free_bytes, list_cache, prepare_compile_dir
from sovereign_weights.layout import CachePaths, LayoutError
from sovereign_weights.noop import exit_zero_program, write_exit_zero_program

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
SERVER_UID = 1000


def complete_revision(cache: Path, model: str, revision: str, size: int, mtime: float) -> Path:
    paths = CachePaths(cache, model, revision)
    paths.complete_dir.mkdir(parents=True)
    (paths.complete_dir / "model.safetensors").write_bytes(os.urandom(size))
    os.utime(paths.complete_dir, (mtime, mtime))
    return paths.complete_dir


def test_compile_dir_is_keyed_by_revision_and_image_and_refuses_a_tag() -> None:
    paths = CachePaths(Path("/cache"), "llama", "r1")
    assert paths.compile_dir(DIGEST) == Path("/cache/llama/.r1.compile/sha256-" + "ab" * 32)
    assert paths.compile_dir(DIGEST) != paths.compile_dir(OTHER_DIGEST)
    with pytest.raises(LayoutError, match="expected sha256:<64 hex digits>"):
        paths.compile_dir("v0.11.0")


@pytest.mark.skipif(os.geteuid() != 0, reason="handing a directory to another user needs root")
def test_prepare_hands_only_the_last_directory_to_the_server_and_is_idempotent(
    tmp_path: Path,
) -> None:
    paths = CachePaths(tmp_path, "llama", "r1")
    made = prepare_compile_dir(paths, DIGEST, SERVER_UID)
    assert (made.stat().st_uid, made.stat().st_gid) == (SERVER_UID, SERVER_UID)
    # the server may write inside, but cannot replace its directory: the parents stay root's
    assert paths.compile_root.stat().st_uid == 0
    assert paths.model_dir.stat().st_uid == 0
    (made / "kernel.cubin").write_bytes(b"compiled")
    assert prepare_compile_dir(paths, DIGEST, SERVER_UID) == made
    assert (made / "kernel.cubin").read_bytes() == b"compiled"


def test_compile_dirs_are_no_revisions_and_go_with_the_evicted_one(tmp_path: Path) -> None:
    cache = tmp_path
    older = complete_revision(cache, "llama", "r1", 256 * 1024, mtime=1_000)
    newer = complete_revision(cache, "mistral", "r7", 256 * 1024, mtime=2_000)
    older_compile = CachePaths(cache, "llama", "r1").compile_dir(DIGEST)
    newer_compile = CachePaths(cache, "mistral", "r7").compile_dir(DIGEST)
    for made in (older_compile, newer_compile):
        made.mkdir(parents=True)
        (made / "triton").mkdir()
        (made / "triton" / "kernel.cubin").write_bytes(os.urandom(64 * 1024))

    listed = [(s.model, s.revision, s.state) for s in list_cache(cache)]
    assert listed == [("llama", "r1", "complete"), ("mistral", "r7", "complete")]

    # one byte more than is free: the least recently used revision goes, and only that one
    eviction = evict_lru(cache, free_bytes(cache) + 1, protect=[])
    assert [(s.model, s.revision) for s in eviction.evicted] == [("llama", "r1")]
    assert not older.exists()
    assert not CachePaths(cache, "llama", "r1").compile_root.exists()
    assert newer.is_dir()
    assert (newer_compile / "triton" / "kernel.cubin").is_file()
    assert sorted(p.name for p in (cache / "llama").iterdir()) == []


def test_a_protected_revision_keeps_its_compile_caches(tmp_path: Path) -> None:
    kept = complete_revision(tmp_path, "llama", "r1", 64 * 1024, mtime=1_000)
    compiled = CachePaths(tmp_path, "llama", "r1").compile_dir(DIGEST)
    compiled.mkdir(parents=True)
    eviction = evict_lru(tmp_path, free_bytes(tmp_path) + 1, protect=[("llama", "r1")])
    assert eviction.evicted == ()
    assert kept.is_dir()
    assert compiled.is_dir()


def test_the_exit_zero_program_runs_with_nothing_around_it(tmp_path: Path) -> None:
    """A pre-pull container of an image without a shell or a libc runs only this program."""
    program = write_exit_zero_program(tmp_path / "noop")
    assert os.access(program, os.X_OK)
    if os.geteuid() == 0:
        # an empty root: no shell, no libc, no dynamic loader, like a FROM scratch image
        chroot = shutil.which("chroot") or "/usr/sbin/chroot"
        done = subprocess.run([chroot, str(tmp_path), "/noop"], env={}, check=False)
    else:
        done = subprocess.run([str(program)], env={}, check=False)
    assert done.returncode == 0


def test_the_exit_zero_program_exists_for_both_gpu_node_architectures() -> None:
    x86 = exit_zero_program("x86_64")
    arm = exit_zero_program("arm64")
    assert x86[:4] == arm[:4] == b"\x7fELF"
    assert int.from_bytes(x86[18:20], "little") == 0x3E
    assert int.from_bytes(arm[18:20], "little") == 0xB7
    with pytest.raises(ValueError, match="expected one of aarch64, x86_64"):
        exit_zero_program("riscv64")


def test_noop_program_command_writes_a_runnable_program(tmp_path: Path) -> None:
    out = tmp_path / "noop"
    done = subprocess.run(
        [sys.executable, "-m", "sovereign_weights", "noop-program", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert subprocess.run([str(out)], check=False).returncode == 0
