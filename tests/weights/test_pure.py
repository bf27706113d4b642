"""The warmer's pure parts: layout, manifest, endpoint policy, in-use detection."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from sovereign_weights.cache import in_use, open_files
from sovereign_weights.errors import EndpointRefused, UsageError
from sovereign_weights.layout import (
    CachePaths,
    LayoutError,
    complete_revisions,
    default_model_name,
    local_manifest_path,
    parse_object_uri,
)
from sovereign_weights.manifest import Manifest, ManifestError, build_manifest, describe_directory
from sovereign_weights.prefetch import PrefetchEntry, load_models_file, render_models_file
from sovereign_weights.store import check_endpoint_allowed, normalize_endpoint

from tests.weights.conftest import MiB, expect_within, make_model


def test_object_keys_and_default_model_name() -> None:
    location = parse_object_uri("s3://fra-weights/meta-llama/Llama-3.3-70B-Instruct/")
    assert location.bucket == "fra-weights"
    assert location.object_key("6f60", "tokenizer.json") == (
        "meta-llama/Llama-3.3-70B-Instruct/6f60/tokenizer.json"
    )
    assert location.manifest_key("6f60").endswith("/6f60/sovereign-manifest.json")
    assert default_model_name(location.uri) == "Llama-3.3-70B-Instruct"
    assert parse_object_uri("s3://bucket").object_key("r", "a/b.json") == "r/a/b.json"


@pytest.mark.parametrize(
    "bad",
    ["https://x/y", "s3:///prefix", "s3://b/a//c", "s3://b/../c", "s3://b/p?x=1"],
)
def test_bad_uris_are_refused(bad: str) -> None:
    with pytest.raises(LayoutError, match="uri"):
        parse_object_uri(bad)


@pytest.mark.parametrize(
    ("model", "revision"), [("..", "r1"), ("llama", ".hidden"), ("a/b", "r1"), ("llama", "")]
)
def test_names_that_would_escape_the_cache_are_refused(model: str, revision: str) -> None:
    with pytest.raises(LayoutError):
        CachePaths(Path("/cache"), model, revision)


def test_cache_paths_keep_partial_work_out_of_the_revision_listing(tmp_path: Path) -> None:
    from sovereign_weights.cache import list_cache

    (tmp_path / "lost+found").mkdir()
    paths = CachePaths(tmp_path, "llama", "r1")
    paths.partial_dir.mkdir(parents=True)
    paths.lock_file.touch()
    assert complete_revisions(tmp_path, "llama") == []
    paths.complete_dir.mkdir()
    assert complete_revisions(tmp_path, "llama") == ["r1"]
    assert [(s.model, s.revision, s.state) for s in list_cache(tmp_path)] == [
        ("llama", "r1", "complete")
    ]
    assert paths.part_file("sub/x.safetensors").name == "x.safetensors.part"
    with pytest.raises(LayoutError, match="reserved"):
        paths.part_file("x.safetensors.part")
    assert local_manifest_path(tmp_path, "llama", "r1") == tmp_path / "llama" / "r1.json"


def test_manifest_from_a_directory_counts_tensor_bytes_and_round_trips(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m", shard_mib=(2, 1))
    manifest = build_manifest(model, "m", "r1")
    assert manifest.tensor_bytes == 3 * MiB
    assert manifest.total_bytes == sum(p.stat().st_size for p in model.iterdir())
    assert [f.path for f in manifest.files] == sorted(p.name for p in model.iterdir())
    text = manifest.to_json()
    assert '"tensorBytes"' in text
    assert Manifest.from_json(text) == manifest


def test_a_broken_safetensors_header_names_the_file(tmp_path: Path) -> None:
    model = tmp_path / "broken"
    model.mkdir()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(ManifestError, match=r"model\.safetensors: safetensors header length"):
        describe_directory(model)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 99]}}).encode()
    (model / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"x" * 8)
    with pytest.raises(ManifestError, match="tensor 'w'"):
        describe_directory(model)


def test_a_manifest_that_lists_a_file_twice_is_refused() -> None:
    entry = {"path": "a.json", "size": 1, "sha256": "0" * 64}
    text = json.dumps({"model": "m", "revision": "r", "files": [entry, entry], "tensorBytes": 0})
    with pytest.raises(ManifestError, match="listed twice"):
        Manifest.from_json(text, source="s3://b/m/r/sovereign-manifest.json")


def test_endpoints_compare_by_scheme_host_and_port() -> None:
    assert normalize_endpoint("HTTPS://S3.Example.EU:443/") == "https://s3.example.eu"
    assert normalize_endpoint("http://127.0.0.1:9000") == "http://127.0.0.1:9000"
    allowed = ["https://s3.example.eu"]
    assert check_endpoint_allowed("https://s3.example.eu/", allowed) == "https://s3.example.eu"
    with pytest.raises(EndpointRefused, match=r"allowed: https://s3\.example\.eu"):
        check_endpoint_allowed("https://s3.example.eu:8443", allowed)
    with pytest.raises(EndpointRefused):
        check_endpoint_allowed("http://s3.example.eu", allowed)
    with pytest.raises(UsageError, match="without a path"):
        normalize_endpoint("https://s3.example.eu/bucket")


def test_models_file_round_trips_and_names_the_bad_field(tmp_path: Path) -> None:
    entries = [PrefetchEntry(model="llama", endpoint="https://s3.eu", uri="s3://b/l", revision="r")]
    path = tmp_path / "models.json"
    path.write_text(render_models_file(entries))
    assert load_models_file(path) == entries
    path.write_text('[{"model": "llama", "endpoint": "https://s3.eu", "uri": "s3://b/l"}]')
    with pytest.raises(UsageError, match=r"\[0\.revision\] Field required"):
        load_models_file(path)


def test_a_file_held_open_by_another_process_is_in_use(tmp_path: Path) -> None:
    revision = tmp_path / "llama" / "r1"
    revision.mkdir(parents=True)
    weights = revision / "model.safetensors"
    weights.write_bytes(b"x" * 4096)
    assert not in_use(revision, open_files())
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; f = open(sys.argv[1]); time.sleep(30)",
            str(weights),
        ]
    )
    try:
        expect_within(lambda: in_use(revision, open_files()), timeout=10, what="the open file seen")
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert not in_use(revision, open_files())


def test_the_container_arguments_parse_as_the_command_expects() -> None:
    from sovereign_weights.__main__ import build_parser
    from sovereign_weights.prefetch import ensure_args, prefetch_args

    entry = PrefetchEntry(model="llama", endpoint="https://s3.eu", uri="s3://b/l", revision="r")
    parsed = build_parser().parse_args(ensure_args(entry, "/cache", ["https://s3.eu"]))
    assert (parsed.command, parsed.endpoint, parsed.uri, parsed.revision, parsed.model) == (
        "ensure", "https://s3.eu", "s3://b/l", "r", "llama"
    )  # fmt: skip
    assert str(parsed.cache) == "/cache"
    assert parsed.allowed_endpoints == ["https://s3.eu"]
    daemon = build_parser().parse_args(
        prefetch_args("/etc/m.json", "/cache", watch_seconds=60, evict_lru=True)
    )
    assert (daemon.command, daemon.watch, daemon.evict_lru) == ("prefetch", 60.0, True)
    assert daemon.allowed_endpoints is None


def test_a_terminal_gets_a_progress_line_and_logs_get_json() -> None:
    import io

    from sovereign_weights.report import Reporter

    screen = io.StringIO()
    tty = Reporter("ensure", stream=screen, tty=True)
    tty.progress("model.safetensors", 512, 1024, started=0.0)
    tty.event("verified", "model.safetensors: verified")
    assert screen.getvalue().startswith("\r\x1b[2Kmodel.safetensors   50.0%")
    assert screen.getvalue().endswith("\nmodel.safetensors: verified\n")
    log = io.StringIO()
    Reporter("ensure", stream=log, tty=False).event("verified", "done", file="a")
    record = json.loads(log.getvalue())
    assert (record["event"], record["msg"], record["file"]) == ("verified", "done", "a")


def test_eviction_refuses_inside_a_pods_own_pid_namespace(tmp_path: Path) -> None:
    from sovereign_weights.cache import EvictionRefused, evict_lru

    cache = tmp_path / "cache"
    (cache / "old" / "r1").mkdir(parents=True)
    (cache / "old" / "r1" / "w.safetensors").write_bytes(b"x")
    proc = tmp_path / "proc"
    for pid in ("self", "1"):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cgroup").write_text("0::/kubepods.slice/kubepods-pod1234.slice/cri-1\n")
    with pytest.raises(EvictionRefused, match="hostPID"):
        evict_lru(cache, needed=10**15, protect=[], proc=proc)
    assert (cache / "old" / "r1" / "w.safetensors").exists()
