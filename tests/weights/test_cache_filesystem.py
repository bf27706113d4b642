"""The cache is mounted ``nofail``: when the NVMe array is missing at boot, the mount point is a bare
directory on the root disk. The warmer (``prefetch``) and the model's init container (``ensure``)
refuse it, before any request, rather than filling the root disk.

The filesystems are real: a tmpfs mounted where the cache belongs, marked as the host's cache step
marks the filesystem it mounts, then unmounted as a missing array leaves it.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sovereign_weights.layout import CACHE_FILESYSTEM_MARKER, CachePaths

from tests.weights.conftest import make_model, marked_tmpfs, run_weights
from tests.weights.s3_proxy import S3Proxy
from tests.weights.test_warmer import REVISION, ensure, seed, target

# what the plan passes where the toolkit's own cache step built (and marked) every GPU node's cache
REQUIRE = "--require-cache-filesystem"


@pytest.fixture
def mount_point(tmp_path: Path) -> Iterator[Path]:
    """A cache mount point with a real filesystem (tmpfs) mounted on it, marked as the host's
    cache step marks the filesystem it mounted."""
    with marked_tmpfs(tmp_path / "sovereign-cache", "32m") as point:
        yield point


def unmount(point: Path) -> None:
    subprocess.run(["umount", str(point)], check=True, capture_output=True)


def test_ensure_refuses_a_bare_mount_point_and_writes_nothing_there(
    tmp_path: Path, mount_point: Path, bucket: str, proxy: S3Proxy
) -> None:
    seed(proxy.url, bucket, make_model(tmp_path / "tiny", shard_mib=(1,)))
    proxy.reset()
    assert ensure(proxy.url, bucket, "tiny", mount_point).returncode == 0
    assert CachePaths(mount_point, "tiny", REVISION).complete_dir.is_dir()

    unmount(mount_point)  # the array did not come up: the directory below is the root disk's
    proxy.reset()
    refused = ensure(proxy.url, bucket, "tiny", mount_point, REQUIRE)
    assert refused.returncode == 2
    assert str(mount_point) in refused.last_line
    assert CACHE_FILESYSTEM_MARKER in refused.last_line
    assert list(mount_point.iterdir()) == []
    assert proxy.requests == []


def test_ensure_with_a_compile_cache_refuses_before_making_any_directory(
    tmp_path: Path, bucket: str, proxy: S3Proxy
) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    refused = run_weights(
        "ensure", *target(proxy.url, bucket, "tiny"), "--cache", str(bare),
        "--compile-image", "sha256:" + "0" * 64, "--compile-owner", "1000", REQUIRE,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert CACHE_FILESYSTEM_MARKER in refused.last_line
    assert list(bare.iterdir()) == []


def test_prefetch_refuses_a_directory_that_is_not_the_cache_filesystem(
    tmp_path: Path, bucket: str, proxy: S3Proxy
) -> None:
    seed(proxy.url, bucket, make_model(tmp_path / "tiny", shard_mib=(1,)))
    bare = tmp_path / "bare"
    bare.mkdir()
    models_file = tmp_path / "models.json"
    entry = {"model": "tiny", "endpoint": proxy.url, "uri": f"s3://{bucket}/org/tiny"}
    models_file.write_text(json.dumps([{**entry, "revision": REVISION}]))
    proxy.reset()
    refused = run_weights(
        "prefetch", "--models-file", str(models_file), "--cache", str(bare), REQUIRE
    )
    assert refused.returncode == 2, refused.stderr
    assert f"--cache {bare}: not the cache filesystem" in refused.stderr
    assert list(bare.iterdir()) == []
    assert proxy.requests == []


def test_a_cache_the_toolkit_did_not_build_is_used_without_a_marker(
    tmp_path: Path, bucket: str, proxy: S3Proxy
) -> None:
    # a cluster built elsewhere, or a GPU host without cache drives: no cache step marked it
    seed(proxy.url, bucket, make_model(tmp_path / "tiny", shard_mib=(1,)))
    unmarked = tmp_path / "unmarked"
    unmarked.mkdir()
    done = ensure(proxy.url, bucket, "tiny", unmarked)
    assert done.returncode == 0, done.stderr
    assert CachePaths(unmarked, "tiny", REVISION).complete_dir.is_dir()
