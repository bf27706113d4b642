"""VRAM sizing on the published configs of three real model families (tests/data/models).

The expected figures are the publishers' own (see tests/data/models/SOURCE.md), not numbers
computed by the code under test.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from sovereign_weights.manifest import Manifest, ManifestFile, ModelFacts, describe_directory
from sovereign_weights.units import GIB

from components.config.models import GpuSpec, ModelSpec, StackConfig, WeightsSource
from components.plan.sizing import (
    attention_bytes_per_token,
    size_model,
    size_stack,
    text_config,
)
from tests.lab_stacks import lab_stack

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
GB = 1000**3


def facts(family: str) -> ModelFacts:
    return describe_directory(MODELS / family)


def model_spec(name: str, gpus: int, max_model_len: int, concurrency: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        source=WeightsSource(
            uri=f"s3://weights/{name}", endpoint="https://objects.lab.internal", revision="r1"
        ),
        gpus_per_replica=gpus,
        max_model_len=max_model_len,
        target_concurrency=concurrency,
    )


def kv_bytes_per_token(config: Mapping[str, object], tp: int = 1) -> int:
    """KV bytes of one token across all layers on one GPU, in the model's 16-bit dtype."""
    layers = config["num_hidden_layers"]
    assert isinstance(layers, int)
    return layers * attention_bytes_per_token(text_config(config), tp, 2)


def stack_with(*models: ModelSpec, gpu: str = "H100-SXM5-80GB", count: int = 8) -> StackConfig:
    base = lab_stack()
    host = base.hosts[0].model_copy(update={"gpu": GpuSpec(model=gpu, count=count)})
    inference = base.inference.model_copy(update={"models": models})
    return base.model_copy(update={"hosts": (host,), "inference": inference})


def test_llama_3_1_8b_matches_the_published_memory_table() -> None:
    llama = facts("llama-3.1-8b")
    assert llama.tensor_source == "safetensors-index"
    # Hugging Face "Llama 3.1" blog: 16 GB of weights in FP16
    assert llama.tensor_bytes / GB == pytest.approx(16, abs=0.1)
    assert llama.config is not None
    per_token = kv_bytes_per_token(llama.config)
    # same blog, KV cache in FP16: 1.95 GB at 16k tokens, 15.62 GB at 128k (16,000 / 128,000, GiB)
    assert per_token * 16_000 / GIB == pytest.approx(1.95, abs=0.005)
    assert per_token * 128_000 / GIB == pytest.approx(15.62, abs=0.01)


def test_mistral_7b_kv_geometry_and_size_match_the_paper() -> None:
    mistral = facts("mistral-7b-v0.1")
    assert mistral.config is not None
    # Mistral 7B paper, Table 1: 32 layers, 8 KV heads, head_dim 128; bfloat16 (2 bytes)
    assert kv_bytes_per_token(mistral.config) == 2 * 32 * 8 * 128 * 2
    # Mistral AI's announcement: 7.3B parameters (2 bytes each in bfloat16)
    assert mistral.tensor_bytes / 2 / 1e9 == pytest.approx(7.3, rel=0.02)


def test_mixtral_matches_the_published_half_precision_figures() -> None:
    mixtral = facts("mixtral-8x7b-v0.1")
    # Mistral AI: 46.7B total parameters; Hugging Face "Welcome Mixtral": ~90 GB in half precision
    assert mixtral.tensor_bytes / 2 / 1e9 == pytest.approx(46.7, rel=0.005)
    assert 88 < mixtral.tensor_bytes / GB < 95
    assert mixtral.config is not None
    # Mistral 7B's attention: the same KV geometry per token
    assert kv_bytes_per_token(mixtral.config) == 2 * 32 * 8 * 128 * 2


def test_a_model_that_cannot_fit_is_refused_with_both_numbers() -> None:
    config = stack_with(model_spec("mixtral", gpus=1, max_model_len=32768, concurrency=8))
    report = size_stack(config, {"mixtral": facts("mixtral-8x7b-v0.1")})
    assert not report.ok
    [problem] = report.problems
    assert problem.path == "inference.models[0].gpusPerReplica"
    sizing = report.models[0]
    assert not sizing.fits
    assert f"needs {sizing.needed_bytes / GIB:.1f} GiB on each" in problem.message
    assert f"vLLM may use {sizing.budget_bytes / GIB:.1f} GiB of each" in problem.message
    # what CUDA reports for an H100 80GB HBM3 (79.11 GiB), not its marketing size
    assert sizing.budget_bytes == int(round(79.11 * GIB) * 0.9)


def test_two_gpus_hold_mixtral_at_32k_and_eight_sequences() -> None:
    config = stack_with(model_spec("mixtral", gpus=2, max_model_len=32768, concurrency=8))
    report = size_stack(config, {"mixtral": facts("mixtral-8x7b-v0.1")})
    assert report.ok
    assert report.warnings == []
    sizing = report.models[0]
    # per GPU: 4 of the 8 KV heads, 64 KiB per token x 262,144 tokens
    assert sizing.kv_bytes == 16 * GIB
    assert 0 < sizing.headroom_bytes < 12 * GIB
    line = sizing.line()
    for part in ("per GPU: weights 43.5 GiB", "kv 16.0 GiB", "/ 71.2 GiB", "headroom"):
        assert part in line


def test_under_half_used_is_a_warning_naming_the_gpus_that_would_do() -> None:
    config = stack_with(model_spec("llama", gpus=4, max_model_len=8192, concurrency=8))
    report = size_stack(config, {"llama": facts("llama-3.1-8b")})
    assert report.ok
    [warning] = report.warnings
    assert "under half" in warning.message
    assert "1 GPU(s) would hold it" in warning.message


def test_sizing_uses_the_smallest_gpu_a_replica_may_land_on() -> None:
    base = stack_with(model_spec("llama", gpus=1, max_model_len=32768, concurrency=8))
    small = base.hosts[0].model_copy(
        update={"name": "gpu-small", "gpu": GpuSpec(model="L4-24GB", count=1)}
    )
    config = base.model_copy(update={"hosts": (*base.hosts, small)})
    report = size_stack(config, {"llama": facts("llama-3.1-8b")})
    assert report.models[0].gpu_model == "L4-24GB"
    assert not report.ok


def test_the_manifest_alone_is_enough_and_models_without_one_are_listed() -> None:
    llama = facts("llama-3.1-8b")
    manifest = Manifest(
        model="llama",
        revision="r1",
        files=(ManifestFile(path="config.json", size=1, sha256="0" * 64),),
        config=llama.config,
        tensor_bytes=llama.tensor_bytes,
        tensor_source="safetensors-index",
    )
    config = stack_with(
        model_spec("llama", gpus=1, max_model_len=8192, concurrency=8),
        model_spec("other", gpus=1, max_model_len=8192, concurrency=8),
    )
    report = size_stack(config, {"llama": manifest})
    assert report.unsized == ["other"]
    assert report.models[0].weight_bytes == llama.tensor_bytes


def test_a_config_without_attention_geometry_is_a_problem_naming_the_key(tmp_path: Path) -> None:
    directory = tmp_path / "odd"
    directory.mkdir()
    config = json.loads((MODELS / "llama-3.1-8b" / "config.json").read_text())
    del config["num_hidden_layers"]
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors.index.json").write_text('{"metadata": {"total_size": 10}}')
    stack = stack_with(model_spec("odd", gpus=1, max_model_len=4096, concurrency=1))
    report = size_stack(stack, {"odd": describe_directory(directory)})
    [problem] = report.problems
    assert "num_hidden_layers" in problem.message


def test_the_default_context_is_the_models_own_and_counts_in_full() -> None:
    llama = facts("llama-3.1-8b")
    spec = model_spec("llama", gpus=4, max_model_len=256, concurrency=8)
    spec = spec.model_copy(update={"max_model_len": None})
    sizing = size_model(spec, llama, "H100-SXM5-80GB")
    assert (sizing.max_model_len, sizing.sequences) == (131072, 8)  # max_position_embeddings
    # per GPU at TP 4: 2 of the 8 KV heads, 32 KiB per token x 131,072 tokens x 8 sequences
    assert sizing.kv_bytes == 32 * GIB


def test_validate_can_size_offline_from_kept_manifests_only(tmp_path: Path) -> None:
    from sovereign_weights.lookup import write_cached

    from components.model_facts import model_facts_for

    llama = facts("llama-3.1-8b")
    kept = Manifest(
        model="llama",
        revision="r1",
        files=(ManifestFile(path="config.json", size=1, sha256="0" * 64),),
        config=llama.config,
        tensor_bytes=llama.tensor_bytes,
    )
    write_cached(tmp_path, "llama", kept)
    config = stack_with(
        model_spec("llama", gpus=1, max_model_len=8192, concurrency=8),
        model_spec("other", gpus=1, max_model_len=8192, concurrency=8),
    )
    found, missing = model_facts_for(config, tmp_path, fetch=False)
    assert set(found) == {"llama"}
    assert found["llama"].tensor_bytes == llama.tensor_bytes
    assert missing == [f"other: no manifest of r1 kept under {tmp_path}"]
    from_dir, _ = model_facts_for(
        config, tmp_path, {"other": MODELS / "mistral-7b-v0.1"}, fetch=False
    )
    assert from_dir["other"].tensor_bytes == facts("mistral-7b-v0.1").tensor_bytes


def test_weights_publish_from_a_stack_refuses_a_model_it_does_not_have(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from components.cli import main

    stack = Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.lab.yaml"
    code = main(["weights", "publish", str(tmp_path), "--stack", str(stack), "--model", "nope"])
    assert code == 2
    assert "--model nope: not in" in capsys.readouterr().err
