"""``sovereign-weights publish`` keeps one safetensors set per revision: the index's.

A checkpoint may hold a consolidated file beside a sharded set listed by
``model.safetensors.index.json``. vLLM v0.11.0's Run:ai streamer loader streams every top-level
``*.safetensors`` file it finds, so a revision carrying both sets is loaded twice. These tests run
the real command against the real S3-compatible server of ``conftest.py`` and hold the published
revision to vLLM's own index rule, executed from the upstream text committed under
``tests/data/vllm-0.11.0/``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from pathlib import Path

from sovereign_weights.errors import EXIT_USAGE
from sovereign_weights.layout import MANIFEST_NAME, CachePaths
from sovereign_weights.manifest import SAFETENSORS_INDEX_NAME, Manifest, describe_directory

from tests.weights.conftest import (
    MiB,
    make_model,
    mark_cache_filesystem,
    run_weights,
    s3_client,
    write_safetensors,
)

VLLM = Path(__file__).resolve().parents[1] / "data" / "vllm-0.11.0"
REVISION = "r1"
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
SHARD_MIB = (3, 2)

UpstreamFilter = Callable[[list[str], str, str], list[str]]


def vllm_index_filter() -> UpstreamFilter:
    """``filter_duplicate_safetensors_files`` from vLLM v0.11.0, run from its committed text."""
    path = VLLM / "weight_utils-filter_duplicate_safetensors_files.py.txt"
    namespace: dict[str, object] = {"json": json, "os": os}
    # the upstream function itself, not a restatement of it, decides what the loader keeps
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    found = namespace["filter_duplicate_safetensors_files"]
    assert callable(found)
    return found


def streamer_listing(directory: Path) -> list[str]:
    """What the Run:ai streamer loads from a local model directory: ``list_safetensors`` of
    runai-model-streamer globs ``*.safetensors`` there, and vLLM v0.11.0's loader passes that
    list on unfiltered (see tests/data/vllm-0.11.0/SOURCE.md)."""
    return sorted(glob.glob(os.path.join(directory, "*.safetensors")))


def make_checkpoint(directory: Path, consolidated: str | None, index: bool = True) -> Path:
    """Two shards (``make_model``) and, when asked, a consolidated copy of both tensors and the
    index naming the shards."""
    make_model(directory, shard_mib=SHARD_MIB)
    if consolidated is not None:
        write_safetensors(
            directory / consolidated,
            {
                f"layer{i}.weight": ("BF16", [mib * MiB // 2], mib * MiB)
                for i, mib in enumerate(SHARD_MIB, start=1)
            },
        )
    if index:
        weight_map = {f"layer{i}.weight": shard for i, shard in enumerate(SHARDS, start=1)}
        (directory / SAFETENSORS_INDEX_NAME).write_text(
            json.dumps({"metadata": {"total_size": sum(SHARD_MIB) * MiB}, "weight_map": weight_map})
        )
    return directory


def publish(endpoint: str, bucket: str, directory: Path) -> tuple[int, str, str]:
    done = run_weights(
        "publish",
        str(directory),
        "--endpoint",
        endpoint,
        "--uri",
        f"s3://{bucket}/org/{directory.name}",
        "--revision",
        REVISION,
    )
    return done.returncode, done.stdout, done.stderr


def published_manifest(endpoint: str, bucket: str, model: str) -> Manifest:
    key = f"org/{model}/{REVISION}/{MANIFEST_NAME}"
    body = s3_client(endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    return Manifest.from_json(body)


def stored_keys(endpoint: str, bucket: str) -> list[str]:
    listing = s3_client(endpoint).list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_publish_sends_only_the_indexed_set_and_names_the_consolidated_copy_it_left_out(
    tmp_path: Path, moto_url: str, bucket: str
) -> None:
    # both names of a consolidated copy found beside shards on the Hub (Mistral's, and the
    # single-file name of transformers)
    for consolidated in ("consolidated.safetensors", "model.safetensors"):
        name = f"twice-{consolidated.split('.')[0]}"
        model = make_checkpoint(tmp_path / name, consolidated)

        code, stdout, stderr = publish(moto_url, bucket, model)

        assert code == 0, stderr
        manifest = published_manifest(moto_url, bucket, name)
        published = sorted(f.path for f in manifest.files)
        on_disk = sorted(p.name for p in model.iterdir())
        assert published == sorted(set(on_disk) - {consolidated})
        assert [p for p in published if p.endswith(".safetensors")] == list(SHARDS)
        assert manifest.tensor_bytes == sum(SHARD_MIB) * MiB  # the tensors counted once
        assert f"org/{name}/{REVISION}/{consolidated}" not in stored_keys(moto_url, bucket)
        [left_out] = [e for e in events(stderr) if e["event"] == "left-out"]
        assert left_out["files"] == [consolidated]
        message = str(left_out["msg"])
        assert consolidated in message
        assert SAFETENSORS_INDEX_NAME in message
        assert "left out 1 file(s) not in the index" in stdout.strip().splitlines()[-1]


def test_a_revision_fetched_into_the_cache_streams_exactly_the_set_vllm_keeps(
    tmp_path: Path, moto_url: str, bucket: str
) -> None:
    """Fails where publish sends every file: the streamer would then list both sets."""
    model = make_checkpoint(tmp_path / "served", "consolidated.safetensors")
    keep = vllm_index_filter()
    # the directory does hold two sets: the streamer alone would load both
    assert len(streamer_listing(model)) == len(SHARDS) + 1

    code, _, stderr = publish(moto_url, bucket, model)
    assert code == 0, stderr
    cache = tmp_path / "cache"
    cache.mkdir()
    mark_cache_filesystem(cache)
    fetched = run_weights(
        "ensure",
        "--endpoint",
        moto_url,
        "--uri",
        f"s3://{bucket}/org/served",
        "--revision",
        REVISION,
        "--cache",
        str(cache),
    )
    assert fetched.returncode == 0, fetched.stderr

    served = CachePaths(cache, "served", REVISION).complete_dir
    streamed = streamer_listing(served)
    assert sorted(keep(streamed, str(served), SAFETENSORS_INDEX_NAME)) == streamed
    assert [Path(p).name for p in streamed] == list(SHARDS)


def test_vllm_v0_11_streamer_loader_lists_safetensors_without_the_index_filter() -> None:
    """Why publish must choose: the Run:ai loader's ``_prepare_weights`` returns the listing
    as it is, unlike the default loader, which applies ``filter_duplicate_safetensors_files``."""
    loader = (VLLM / "runai_streamer_loader.py.txt").read_text()
    assert "hf_weights_files = list_safetensors(path=hf_folder)" in loader
    assert "filter_duplicate_safetensors_files" not in loader


def test_sizing_a_directory_with_both_sets_counts_its_tensors_once(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "sized", "consolidated.safetensors")
    assert describe_directory(model).tensor_bytes == sum(SHARD_MIB) * MiB


def test_publish_without_an_index_sends_every_safetensors_file(
    tmp_path: Path, moto_url: str, bucket: str
) -> None:
    model = make_checkpoint(tmp_path / "no-index", "consolidated.safetensors", index=False)

    code, _, stderr = publish(moto_url, bucket, model)

    assert code == 0, stderr
    published = sorted(f.path for f in published_manifest(moto_url, bucket, "no-index").files)
    assert published == sorted(p.name for p in model.iterdir())
    assert not [e for e in events(stderr) if e["event"] == "left-out"]


def test_an_index_naming_a_missing_shard_is_refused_naming_it_before_anything_is_stored(
    tmp_path: Path, moto_url: str, bucket: str
) -> None:
    model = make_checkpoint(tmp_path / "short", None)
    (model / SHARDS[1]).unlink()

    code, _, stderr = publish(moto_url, bucket, model)

    assert code == EXIT_USAGE
    last = stderr.strip().splitlines()[-1]
    assert SAFETENSORS_INDEX_NAME in last
    assert SHARDS[1] in last
    assert stored_keys(moto_url, bucket) == []
