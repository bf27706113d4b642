"""``sovereign-weights`` against a real S3-compatible server (moto) on loopback, as processes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sovereign_weights.layout import MANIFEST_NAME, CachePaths, parse_object_uri
from sovereign_weights.manifest import Manifest
from sovereign_weights.publish import Publisher, PublishSettings
from sovereign_weights.report import Reporter

from tests.weights.conftest import (
    MiB,
    Result,
    expect_within,
    make_model,
    mark_cache_filesystem,
    marked_tmpfs,
    run_weights,
    s3_client,
    start_weights,
)
from tests.weights.s3_proxy import S3Proxy

REVISION = "r1"
ONE_SHARD = "model-00001-of-00001.safetensors"  # what make_model names a single shard


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def target(endpoint: str, bucket: str, model: str) -> list[str]:
    return ["--endpoint", endpoint, "--uri", f"s3://{bucket}/org/{model}", "--revision", REVISION]


def publish(endpoint: str, bucket: str, directory: Path, *extra: str) -> None:
    """Publish with the command (what users run)."""
    result = run_weights(
        "publish", str(directory), *target(endpoint, bucket, directory.name), *extra
    )
    assert result.returncode == 0, result.stderr


def seed(endpoint: str, bucket: str, directory: Path) -> None:
    """Publish in process: the set-up of tests about the warmer, without a second interpreter."""
    location = parse_object_uri(f"s3://{bucket}/org/{directory.name}")
    Publisher(
        s3_client(endpoint),
        location,
        REVISION,
        directory.name,
        PublishSettings(),
        Reporter("publish", stream=io.StringIO(), tty=False),
    ).publish(directory)


def ensure(endpoint: str, bucket: str, model: str, cache: Path, *extra: str) -> Result:
    return run_weights("ensure", *target(endpoint, bucket, model), "--cache", str(cache), *extra)


def seeded_one_shard(
    tmp_path: Path, proxy: S3Proxy, bucket: str, name: str, mib: int
) -> tuple[Path, int]:
    """A one-shard model published under ``name``, the proxy's counters then reset:
    (its directory, the shard's size)."""
    model = make_model(tmp_path / name, shard_mib=(mib,))
    seed(proxy.url, bucket, model)
    proxy.reset()
    return model, (model / ONE_SHARD).stat().st_size


def assert_same_files(source: Path, copy: Path) -> None:
    names = sorted(p.name for p in source.iterdir())
    assert sorted(p.name for p in copy.iterdir()) == sorted([*names, MANIFEST_NAME])
    for name in names:
        assert sha256(copy / name) == sha256(source / name), name


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    directory = tmp_path / "cache"
    directory.mkdir()
    return mark_cache_filesystem(directory)


def test_publish_then_warm_round_trip(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    model = make_model(tmp_path / "tiny-llama", shard_mib=(7, 3))
    publish(proxy.url, bucket, model, "--part-size", "5MiB")

    manifest_key = f"org/tiny-llama/{REVISION}/{MANIFEST_NAME}"
    body = s3_client(proxy.url).get_object(Bucket=bucket, Key=manifest_key)["Body"].read()
    manifest = Manifest.from_json(body)
    assert manifest.tensor_bytes == 10 * MiB
    assert manifest.tensor_dtypes == {"BF16": 10 * MiB}
    assert manifest.config is not None
    assert manifest.config["num_hidden_layers"] == 2

    proxy.reset()
    result = ensure(proxy.url, bucket, "tiny-llama", cache)
    assert result.returncode == 0, result.stderr
    assert "complete in" in result.last_line
    paths = CachePaths(cache, "tiny-llama", REVISION)
    assert_same_files(model, paths.complete_dir)
    assert not paths.partial_dir.exists()
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {e["event"] for e in events} >= {"fetch", "verified"}

    # a complete revision is used as it is: no request at all (the init container's fast path)
    proxy.reset()
    again = ensure(proxy.url, bucket, "tiny-llama", cache)
    assert again.returncode == 0
    assert "(already)" in again.last_line
    assert proxy.requests == []

    status = run_weights("status", "--cache", str(cache), "--json")
    assert json.loads(status.stdout)[0]["state"] == "complete"


def test_publish_rerun_skips_parts_already_uploaded(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    model = make_model(tmp_path / "big", shard_mib=(16,))
    shard = ONE_SHARD
    proxy.delay_uploads(0.3)
    first = start_weights(
        "publish", str(model), *target(proxy.url, bucket, "big"), "--part-size", "5MiB",
        "--jobs", "1",
    )  # fmt: skip
    try:
        expect_within(
            lambda: (
                sum(1 for r in proxy.requests if "partNumber" in r.query and r.status == 200) >= 2
            ),
            timeout=30,
            what="two uploaded parts",
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    done_before = {r.query for r in proxy.requests if "partNumber" in r.query and r.status == 200}
    proxy.delay_uploads(0)
    proxy.reset()
    publish(proxy.url, bucket, model, "--part-size", "5MiB")
    resent = [r.query for r in proxy.requests if r.method == "PUT" and "partNumber" in r.query]
    total_parts = -(-(model / shard).stat().st_size // (5 * MiB))
    assert 0 < len(resent) <= total_parts - len(done_before)
    part_numbers = {q.split("partNumber=")[1].split("&")[0] for q in resent}
    assert not part_numbers & {q.split("partNumber=")[1].split("&")[0] for q in done_before}

    result = ensure(proxy.url, bucket, "big", cache)
    assert result.returncode == 0, result.stderr
    assert sha256(cache / "big" / REVISION / shard) == sha256(model / shard)


def range_length(header: str | None) -> int:
    first, _, last = (header or "").removeprefix("bytes=").partition("-")
    return int(last) - int(first) + 1


def recorded_bytes(progress_file: Path) -> int:
    """Bytes the progress record says are on disk (header: magic, size, part size; then u64s)."""
    raw = progress_file.read_bytes()
    return sum(struct.unpack_from(f"<{(len(raw) - 24) // 8}Q", raw, 24))


def test_killed_warmer_resumes_and_refetches_at_most_one_part(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    model, size = seeded_one_shard(tmp_path, proxy, bucket, "resume", 24)
    shard = ONE_SHARD
    part = 8 * MiB
    proxy.throttle(4 * MiB)  # per connection: the kill lands mid-file
    warmer = start_weights(
        "ensure", *target(proxy.url, bucket, "resume"), "--cache", str(cache),
        "--part-size", "8MiB", "--jobs", "2",
    )  # fmt: skip
    try:
        expect_within(lambda: proxy.served(shard) >= 8 * MiB, timeout=30, what="8 MiB served")
    finally:
        warmer.send_signal(signal.SIGKILL)
        warmer.wait(timeout=10)
    paths = CachePaths(cache, "resume", REVISION)
    assert not paths.complete_dir.exists()
    assert paths.part_file(shard).exists()
    recorded = recorded_bytes(paths.progress_file(shard))
    asked_before_kill = len(proxy.gets(shard))
    assert 0 < recorded < size
    status = run_weights(
        "status", "--cache", str(cache), "--uri", "s3://b/org/resume", "--revision", REVISION
    )
    assert status.returncode == 1
    assert "partial" in status.stdout

    proxy.throttle(None)
    result = ensure(proxy.url, bucket, "resume", cache, "--part-size", "8MiB", "--jobs", "2")
    assert result.returncode == 0, result.stderr
    assert sha256(paths.complete_dir / shard) == sha256(model / shard)
    # the second run asks only for what the record does not cover...
    asked_again = proxy.gets(shard)[asked_before_kill:]
    assert sum(range_length(g.range) for g in asked_again) == size - recorded
    # ...and what the killed run had received but not yet recorded is under one part
    refetched = proxy.served(shard) - size
    assert 0 <= refetched <= part, f"{refetched} bytes fetched twice, more than one part"
    resumed = [g.range for g in proxy.gets(shard)]
    part_starts = tuple(f"bytes={i * part}-" for i in range(3))
    assert any(r and not r.startswith(part_starts) for r in resumed), resumed


def test_corruption_in_transit_is_detected_and_refetched(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    model, size = seeded_one_shard(tmp_path, proxy, bucket, "flaky", 6)
    shard = ONE_SHARD
    proxy.corrupt_next_get(shard)
    result = ensure(proxy.url, bucket, "flaky", cache)
    assert result.returncode == 0, result.stderr
    assert any(json.loads(line)["event"] == "mismatch" for line in result.stderr.splitlines())
    assert proxy.served(shard) == 2 * size
    assert sha256(cache / "flaky" / REVISION / shard) == sha256(model / shard)


def test_object_corrupt_on_the_server_fails_naming_the_file(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy, moto_url: str
) -> None:
    model, size = seeded_one_shard(tmp_path, proxy, bucket, "rotten", 6)
    shard = ONE_SHARD
    bad = bytearray((model / shard).read_bytes())
    bad[size // 2] ^= 0x01
    s3_client(moto_url).put_object(
        Bucket=bucket, Key=f"org/rotten/{REVISION}/{shard}", Body=bytes(bad)
    )
    proxy.reset()
    result = ensure(proxy.url, bucket, "rotten", cache)
    assert result.returncode == 1
    assert shard in result.last_line
    assert "sha256" in result.last_line
    assert len(result.stderr.strip().splitlines()[-1:]) == 1
    paths = CachePaths(cache, "rotten", REVISION)
    assert not paths.complete_dir.exists()
    assert not paths.partial_file(shard).exists()  # never renamed to its final name
    assert proxy.served(shard) == 2 * size  # fetched, then fetched once more


def test_endpoint_not_allowed_is_refused_before_any_request(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    model = make_model(tmp_path / "elsewhere", shard_mib=(1,))
    allowed = ["--allowed-endpoints", "https://objects.example.eu,https://s3.fra.example.eu"]
    for args in (
        ["publish", str(model), *target(proxy.url, bucket, "elsewhere"), *allowed],
        ["ensure", *target(proxy.url, bucket, "elsewhere"), "--cache", str(cache), *allowed],
    ):
        result = run_weights(*args)
        assert result.returncode == 2
        assert "is not an allowed object-store endpoint" in result.last_line
    assert proxy.requests == []


@contextlib.contextmanager
def private_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mount_point`` in a mount namespace of its own, made in a
    user namespace so that no root is needed, and marked as the host's cache step marks the
    cache filesystem. Every other process reaches it through the namespace's one process, as
    ``/proc/PID/root/<mount_point>``; it goes when that process is killed."""
    mount_point.mkdir(exist_ok=True)
    holder = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private",
         "sh", "-c", 'mount -t tmpfs -o "size=$1" tmpfs "$2" && echo mounted && exec sleep 3600',
         "private-tmpfs", size, str(mount_point)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stderr is not None
    try:
        if holder.stdout.readline().strip() != "mounted":
            holder.wait(timeout=10)
            raise OSError(holder.stderr.read().strip() or f"exit status {holder.returncode}")
        yield mark_cache_filesystem(Path(f"/proc/{holder.pid}/root{mount_point}"))
    finally:
        holder.kill()
        holder.wait(timeout=10)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs: a cache that fills up. Made in a user namespace (no root needed); as root
    without user namespaces, mounted here; otherwise the skip says what is missing."""
    with contextlib.ExitStack() as stack:
        try:
            mount_point = stack.enter_context(private_tmpfs(tmp_path / "small", "12m"))
        except OSError as exc:
            if os.geteuid() != 0:
                pytest.skip(
                    "the cache-full test needs a small filesystem: user namespaces are refused "
                    f"here ({exc}) and mounting one needs root"
                )
            mount_point = stack.enter_context(marked_tmpfs(tmp_path / "small", "12m"))
        yield mount_point


def test_full_cache_is_refused_before_fetching_and_evicts_only_unused(
    tmp_path: Path, small_fs: Path, bucket: str, proxy: S3Proxy
) -> None:
    older = make_model(tmp_path / "older", shard_mib=(5,))
    bigger = make_model(tmp_path / "bigger", shard_mib=(9,))
    seed(proxy.url, bucket, older)
    seed(proxy.url, bucket, bigger)
    assert ensure(proxy.url, bucket, "older", small_fs).returncode == 0
    kept = CachePaths(small_fs, "older", REVISION).complete_dir
    before = {p.name: sha256(p) for p in kept.iterdir()}

    proxy.reset()
    refused = ensure(proxy.url, bucket, "bigger", small_fs)
    assert refused.returncode == 3
    assert "free, needs" in refused.last_line
    assert "nothing was fetched" in refused.last_line
    assert not CachePaths(small_fs, "bigger", REVISION).complete_dir.exists()
    assert [r.path.rsplit("/", 1)[-1] for r in proxy.requests] == [MANIFEST_NAME]
    assert {p.name: sha256(p) for p in kept.iterdir()} == before

    # eviction never removes a revision a running process has open
    holder = subprocess.Popen(
        ["python3", "-c", "import sys,time; f=open(sys.argv[1],'rb'); time.sleep(60)",
         str(kept / ONE_SHARD)],
    )  # fmt: skip
    try:
        expect_within(lambda: len(list(Path(f"/proc/{holder.pid}/fd").iterdir())) > 3, 10, "open")
        busy = ensure(proxy.url, bucket, "bigger", small_fs, "--evict-lru")
        assert busy.returncode == 3
        assert "in use and kept: older@r1" in busy.last_line
        assert {p.name: sha256(p) for p in kept.iterdir()} == before
    finally:
        holder.kill()
        holder.wait(timeout=10)

    evicted = ensure(proxy.url, bucket, "bigger", small_fs, "--evict-lru")
    assert evicted.returncode == 0, evicted.stderr
    assert not kept.exists()
    assert_same_files(bigger, CachePaths(small_fs, "bigger", REVISION).complete_dir)


def test_two_warmers_at_once_fetch_once(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    model, size = seeded_one_shard(tmp_path, proxy, bucket, "shared", 8)
    shard = ONE_SHARD
    proxy.throttle(2 * MiB)  # one GET of about 4 s: long enough for both to be running
    args = ("ensure", *target(proxy.url, bucket, "shared"), "--cache", str(cache))
    warmers = [start_weights(*args), start_weights(*args)]
    outputs = [w.communicate(timeout=60) for w in warmers]
    assert [w.returncode for w in warmers] == [0, 0], outputs
    assert proxy.served(shard) == size
    lines = sorted(out.strip().splitlines()[-1] for out, _ in outputs)
    assert any("by another warmer" in line for line in lines), lines
    assert sha256(cache / "shared" / REVISION / shard) == sha256(model / shard)


def test_prefetch_models_file_and_status(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    for name in ("first", "second"):
        seed(proxy.url, bucket, make_model(tmp_path / name, shard_mib=(2,)))
    entries = [
        {
            "model": name,
            "endpoint": proxy.url,
            "uri": f"s3://{bucket}/org/{name}",
            "revision": REVISION,
        }
        for name in ("first", "second")
    ]
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps(entries))
    result = run_weights("prefetch", "--models-file", str(models_file), "--cache", str(cache))
    assert result.returncode == 0, result.stderr
    assert "2 model(s) complete" in result.last_line

    entries.append({**entries[0], "model": "third", "uri": f"s3://{bucket}/org/third"})
    models_file.write_text(json.dumps(entries))
    status = run_weights("status", "--cache", str(cache), "--models-file", str(models_file))
    assert status.returncode == 1
    states = {line.split()[0]: line.split()[2] for line in status.stdout.splitlines()}
    assert states == {"first": "complete", "second": "complete", "third": "absent"}

    models_file.write_text('[{"model": "x", "uri": "s3://b/x"}]')
    bad = run_weights("prefetch", "--models-file", str(models_file), "--cache", str(cache))
    assert bad.returncode == 2
    assert "endpoint" in bad.last_line


def test_prefetch_watch_warms_new_entries_and_stops_cleanly_on_sigterm(
    tmp_path: Path, cache: Path, bucket: str, proxy: S3Proxy
) -> None:
    for name in ("early", "late"):
        seed(proxy.url, bucket, make_model(tmp_path / name, shard_mib=(1,)))

    def entry(name: str) -> dict[str, str]:
        uri = f"s3://{bucket}/org/{name}"
        return {"model": name, "endpoint": proxy.url, "uri": uri, "revision": REVISION}

    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps([entry("early")]))
    watcher = start_weights(
        "prefetch", "--models-file", str(models_file), "--cache", str(cache), "--watch", "0.2"
    )
    try:
        expect_within((cache / "early" / REVISION).is_dir, 30, "the first model")
        models_file.write_text(json.dumps([entry("early"), entry("late")]))  # the ConfigMap changes
        expect_within((cache / "late" / REVISION).is_dir, 30, "the added model")
    finally:
        watcher.send_signal(signal.SIGTERM)
        out, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 0, err
    assert out.strip().splitlines()[-1].startswith("prefetch: stopped")
