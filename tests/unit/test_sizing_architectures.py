"""Sizing of MLA, sliding-window, hybrid, multimodal and MXFP4 models against vLLM v0.11.0's rules.

Each fixture is a sparse checkpoint with real safetensors headers, generated from the model's
published ``config.json`` (``tests/checkpoints``, ``tests/data/models/SOURCE.md``). Every expected
figure is written out below as vLLM v0.11.0 computes it (source: the vLLM 0.11.0 sdist,
``vllm/...`` paths cited at each step), independently of ``components.plan.sizing``; a prediction
passes within 10 % of it, and the fit decision must be the one that figure gives.

Rules used throughout, all per GPU of one replica at tensor parallelism ``tp``:

- ``vllm/v1/kv_cache_interface.py``: ``AttentionSpec.page_size_bytes`` = ``2 x block_size x
  kv_heads x head_size x dtype``; ``FullAttentionSpec.max_memory_usage_bytes`` =
  ``cdiv(max_model_len, block_size) x page``; ``SlidingWindowSpec`` = ``(cdiv(min(window - 1 +
  max_num_batched_tokens, max_model_len), block_size) + 1) x page``; ``MLAAttentionSpec`` page =
  ``block_size x 1 x (kv_lora_rank + qk_rope_head_dim) x dtype`` (one latent "head", never split
  by tp); ``MambaSpec.max_memory_usage_bytes`` = one page per sequence.
- ``vllm/config/model.py`` ``get_num_kv_heads``: ``max(1, kv_heads // tp)``.
- ``vllm/engine/arg_utils.py``: ``max_num_batched_tokens`` 8192 for the OpenAI server on GPUs of
  at least 70 GiB other than the A100, else 2048. Block size 16 (FlashAttention) and 64 (FlashMLA);
  the MLA figures below use a ``max_model_len`` that is a multiple of 64, so both agree.
"""

from __future__ import annotations

import pytest
from sovereign_weights.manifest import ModelFacts, describe_directory

from components.config.models import ModelSpec, WeightsSource
from components.plan.sizing import ModelSizing, size_model
from tests.checkpoints import checkpoint, checkpoint_bytes, published_config
from tests.checkpoints.gpt_oss import gpt_oss_layout
from tests.checkpoints.hybrid import qwen3_next_layout
from tests.checkpoints.mla import mla_layout

BF16 = 2
TOLERANCE = 0.10
H100 = "H100-SXM5-80GB"
H200 = "H200-SXM5-141GB"
L40S = "L40S-48GB"
BATCHED_TOKENS_BIG_GPU = 8192  # arg_utils.py, >= 70 GiB and not an A100
BATCHED_TOKENS_SMALL_GPU = 2048
BLOCK = 16


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _facts(name: str, tmp_path_factory: pytest.TempPathFactory) -> ModelFacts:
    return describe_directory(checkpoint(name, tmp_path_factory))


def _size(
    facts: ModelFacts, gpu_model: str, gpus: int, max_model_len: int, sequences: int = 1
) -> ModelSizing:
    spec = ModelSpec(
        name="model",
        source=WeightsSource(
            uri="s3://weights/model", endpoint="https://objects.lab.internal", revision="r1"
        ),
        gpus_per_replica=gpus,
        max_model_len=max_model_len,
        target_concurrency=sequences,
    )
    return size_model(spec, facts, gpu_model)


def _kv(sizing: ModelSizing, kind: str) -> int:
    """Bytes per sequence, per GPU, of the layers of ``kind`` (0 when the model has none)."""
    return sum(share.bytes_per_sequence for share in sizing.kv if share.kind == kind)


def _sliding(window: int, batched: int, max_model_len: int, page: int) -> int:
    """SlidingWindowSpec.max_memory_usage_bytes for one layer (kv_cache_interface.py)."""
    return (_cdiv(min(window - 1 + batched, max_model_len), BLOCK) + 1) * page


def _layout_bytes(name: str, keep: str | None = None, drop: str | None = None) -> int:
    """Checkpoint bytes of fixture ``name``, optionally only/without tensors under a prefix."""
    layouts = {
        "deepseek-v3": mla_layout,
        "qwen3-next-80b-a3b": qwen3_next_layout,
        "gpt-oss-20b": gpt_oss_layout,
    }
    tensors = layouts[name](published_config(name))
    if keep is not None:
        tensors = [t for t in tensors if t[0].startswith(keep)]
    if drop is not None:
        tensors = [t for t in tensors if not t[0].startswith(drop)]
    return checkpoint_bytes(tensors)


# --- the fixtures against the publishers' byte counts ----------------------------------------


@pytest.mark.parametrize(
    ("name", "published_bytes", "header_allowance"),
    [
        # metadata.total_size of the published index: tensor bytes only
        ("gpt-oss-20b", 13_761_264_768, 0),
        ("gpt-oss-120b", 65_248_815_744, 0),
        # sums of the published safetensors files (data and headers): the headers are the rest
        ("deepseek-v3", 688_586_727_753, 12_000_000),
        ("gemma-3-27b-it", 54_864_980_440, 200_000),
    ],
)
def test_generated_checkpoints_hold_the_published_bytes(
    name: str,
    published_bytes: int,
    header_allowance: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    facts = _facts(name, tmp_path_factory)
    assert 0 <= published_bytes - facts.tensor_bytes <= header_allowance


def test_deepseek_v2_lite_has_its_published_parameter_count(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # DeepSeek-V2 paper (arXiv:2405.04434), DeepSeek-V2-Lite: 15.7B total parameters, bfloat16
    assert _facts("deepseek-v2-lite", tmp_path_factory).tensor_bytes / BF16 / 1e9 == (
        pytest.approx(15.7, abs=0.05)
    )


# --- MLA: DeepSeek-V3 and V2-Lite --------------------------------------------------------------

# MLAAttentionSpec page per token: 1 x (kv_lora_rank 512 + qk_rope_head_dim 64) x bfloat16
MLA_BYTES_PER_TOKEN_LAYER = (512 + 64) * BF16


def test_deepseek_v3_on_8_h200_holds_the_full_latent_cache_on_every_gpu(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    facts = _facts("deepseek-v3", tmp_path_factory)
    sizing = _size(facts, H200, gpus=8, max_model_len=163_840)
    # 61 MLA layers (the MTP layer 61 has no cache without speculative decoding), every GPU
    # holds all of a sequence's latent: 61 x 163840 x 1152 = 11.5 GB, not an eighth of it
    expected_kv = 61 * 163_840 * MLA_BYTES_PER_TOKEN_LAYER
    assert _kv(sizing, "mla") == pytest.approx(expected_kv, rel=TOLERANCE)
    assert _kv(sizing, "mla") > 4 * expected_kv / 8
    # deepseek_v2.py load_weights skips get_spec_layer_idx_from_weight_name (model.layers.61.*);
    # the rest is split 8 ways (the replicated q_a/kv_a projections add about 1 %)
    expected_weights = _layout_bytes("deepseek-v3", drop="model.layers.61.") / 8
    assert sizing.weight_bytes == pytest.approx(expected_weights, rel=TOLERANCE)
    # 84.6 GB + 11.5 GB against 0.9 x 139.72 GiB = 135 GB
    assert sizing.fits


def test_deepseek_v3_does_not_fit_8_h100(tmp_path_factory: pytest.TempPathFactory) -> None:
    sizing = _size(_facts("deepseek-v3", tmp_path_factory), H100, gpus=8, max_model_len=32_768)
    # 84.6 GB of weights per GPU against 0.9 x 79.11 GiB = 76.4 GB
    assert sizing.weight_bytes == pytest.approx(
        _layout_bytes("deepseek-v3", drop="model.layers.61.") / 8, rel=TOLERANCE
    )
    assert not sizing.fits


@pytest.mark.parametrize(("gpu_model", "gpus"), [(L40S, 1), (H100, 2)])
def test_deepseek_v2_lite_latent_cache_is_not_divided_by_tensor_parallelism(
    gpu_model: str, gpus: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    facts = _facts("deepseek-v2-lite", tmp_path_factory)
    sizing = _size(facts, gpu_model, gpus=gpus, max_model_len=163_840)
    # 27 MLA layers x 163840 tokens x 1152 bytes = 5.1 GB on each GPU, whatever tp
    assert _kv(sizing, "mla") == pytest.approx(27 * 163_840 * 1152, rel=TOLERANCE)
    # 31.4 GB of bfloat16 weights (no MTP layer in V2-Lite), split over the GPUs
    assert sizing.weight_bytes == pytest.approx(facts.tensor_bytes / gpus, rel=TOLERANCE)
    assert sizing.fits  # 31.4 + 5.1 GB < 0.9 x 44.53 GiB = 43.0 GB on one L40S


# --- sliding windows: gpt-oss and Gemma 3 ------------------------------------------------------

# gpt-oss: 8 KV heads x head_dim 64, bfloat16; block of 16 tokens
GPT_OSS_PAGE = 2 * BLOCK * 8 * 64 * BF16


def test_gpt_oss_120b_fits_one_h100_at_its_full_context(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    sizing = _size(_facts("gpt-oss-120b", tmp_path_factory), H100, gpus=1, max_model_len=131_072)
    # layer_types alternate: 18 full layers at 131072 tokens, 18 sliding layers of window 128
    assert _kv(sizing, "full_attention") == pytest.approx(
        18 * _cdiv(131_072, BLOCK) * GPT_OSS_PAGE, rel=TOLERANCE
    )  # 4.83 GB
    assert _kv(sizing, "sliding_window") == pytest.approx(
        18 * _sliding(128, BATCHED_TOKENS_BIG_GPU, 131_072, GPT_OSS_PAGE), rel=TOLERANCE
    )  # 18 x 521 blocks x 32 KiB = 0.31 GB
    # mxfp4.py on Hopper picks the Triton backend, which pads the expert intermediate size to a
    # multiple of 64: 2880 = 45 x 64, so the experts are held as published
    assert sizing.weight_bytes == pytest.approx(65_248_815_744, rel=TOLERANCE)
    # 65.2 + 5.1 GB (+ activations, non-torch) within 0.9 x 79.11 GiB = 76.4 GB
    assert sizing.fits


def test_gpt_oss_120b_on_two_l40s_holds_two_full_length_sequences_not_four(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    facts = _facts("gpt-oss-120b", tmp_path_factory)
    sizing = _size(facts, L40S, gpus=2, max_model_len=131_072, sequences=4)
    # Ada (SM89) takes the Marlin backend: 36 layers x 128 experts, the per-GPU intermediate
    # 2880 / 2 = 1440 padded to 1536 and the hidden size 2880 to 3072; the rest (attention,
    # embeddings, router) is split over the two GPUs as published
    experts = _marlin_expert_bytes(36, 128, 2880, 1440)
    published_experts = 36 * 128 * (2 * 2880 * (1440 + 90 + 2) + 2880 * (1440 + 90 + 2))
    rest = 65_248_815_744 - published_experts
    assert sizing.weight_bytes == pytest.approx(experts + rest / 2, rel=TOLERANCE)  # 36.9 GB
    # 8 KV heads, 4 a GPU at tp 2: a 131072-token sequence takes 18 full layers x 8192 blocks
    # x 16 KiB + 18 sliding layers x (cdiv(127 + 2048, 16) + 1) x 16 KiB = 2.46 GB a GPU
    per_sequence = 18 * 8192 * 16384 + 18 * (_cdiv(127 + 2048, 16) + 1) * 16384
    assert sizing.kv_bytes == 4 * per_sequence
    # budget 0.9 x 44.53 GiB = 43.0 GB: 36.9 GB of weights leave room for two such sequences
    assert not sizing.fits
    assert sizing.sequences_that_fit == 2
    assert _size(facts, L40S, gpus=2, max_model_len=131_072, sequences=2).fits


def _marlin_expert_bytes(layers: int, experts: int, hidden: int, inter: int) -> int:
    """mxfp4.py create_weights, Marlin (GPUs below SM90): intermediate to 128, hidden to 256."""
    inter_p, hidden_p = _cdiv(inter, 128) * 128, _cdiv(hidden, 256) * 256
    w13 = experts * 2 * inter_p * (hidden_p // 2 + hidden_p // 32 + BF16)
    w2 = experts * hidden_p * (inter_p // 2 + inter_p // 32 + BF16)
    return layers * (w13 + w2)


@pytest.mark.parametrize(("gpu_model", "batched"), [(H100, 8192), (L40S, 2048)])
def test_gpt_oss_20b_weights_and_windows_follow_the_gpu(
    gpu_model: str, batched: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sizing = _size(
        _facts("gpt-oss-20b", tmp_path_factory), gpu_model, gpus=1, max_model_len=131_072
    )
    experts_on_disk = sum(
        _layout_bytes("gpt-oss-20b", keep=f"model.layers.{i}.mlp.experts.") for i in range(24)
    )
    rest = 13_761_264_768 - experts_on_disk
    held = rest + (
        _marlin_expert_bytes(24, 32, 2880, 2880) if gpu_model == L40S else experts_on_disk
    )  # L40S: 2880 -> 2944 x 3072, about 9 % more expert bytes
    assert sizing.weight_bytes == pytest.approx(held, rel=TOLERANCE)
    assert _kv(sizing, "sliding_window") == pytest.approx(
        12 * _sliding(128, batched, 131_072, GPT_OSS_PAGE), rel=TOLERANCE
    )
    assert _kv(sizing, "full_attention") == pytest.approx(
        12 * _cdiv(131_072, BLOCK) * GPT_OSS_PAGE, rel=TOLERANCE
    )
    assert sizing.fits  # 13.8-14.9 GB + 3.3 GB


# Gemma 3 27B: 16 KV heads x head_dim 128 at tp 1; layer i slides unless (i + 1) % 6 == 0
# (Gemma3TextConfig default sliding_window_pattern 6, transformers 4.56.2): 10 full, 52 sliding.
# The hybrid KV cache manager groups layers by the rarest kind's count
# (v1/core/kv_cache_utils.py _get_kv_cache_groups_uniform_page_size: group_size = min(10, 52) =
# 10), so the 52 sliding layers take cdiv(52, 10) = 6 groups of 10: 8 padding layers ("Add 8
# padding layers, may waste at most 15.38% KV cache memory"), and get_max_concurrency_for_
# kv_cache_config charges a request num_layer_per_group x each group's usage: 60 sliding layers.
GEMMA_SLIDING_HELD = 60


def test_gemma_3_27b_fits_one_h100_at_128k_once_sliding_layers_count_their_window(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    facts = _facts("gemma-3-27b-it", tmp_path_factory)
    sizing = _size(facts, H100, gpus=1, max_model_len=131_072)
    page = 2 * BLOCK * 16 * 128 * BF16
    assert _kv(sizing, "full_attention") == pytest.approx(
        10 * _cdiv(131_072, BLOCK) * page, rel=TOLERANCE
    )  # 10.7 GB
    assert _kv(sizing, "sliding_window") == pytest.approx(
        GEMMA_SLIDING_HELD * _sliding(1024, BATCHED_TOKENS_BIG_GPU, 131_072, page), rel=TOLERANCE
    )  # 60 x 577 blocks x 128 KiB = 4.5 GB; counted in full it would be 55.8 GB
    # gemma3_mm.py loads the SigLIP tower and projector for multimodal serving: all 54.9 GB
    assert sizing.weight_bytes == pytest.approx(facts.tensor_bytes, rel=TOLERANCE)
    assert sizing.fits  # 54.9 + 14.7 GB within 76.4 GB


def test_gemma_3_27b_on_two_l40s_halves_heads_and_shrinks_windows(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    facts = _facts("gemma-3-27b-it", tmp_path_factory)
    sizing = _size(facts, L40S, gpus=2, max_model_len=131_072)
    page = 2 * BLOCK * (16 // 2) * 128 * BF16
    assert _kv(sizing, "full_attention") == pytest.approx(
        10 * _cdiv(131_072, BLOCK) * page, rel=TOLERANCE
    )
    assert _kv(sizing, "sliding_window") == pytest.approx(
        GEMMA_SLIDING_HELD * _sliding(1024, BATCHED_TOKENS_SMALL_GPU, 131_072, page),
        rel=TOLERANCE,
    )  # 60 x 193 blocks x 64 KiB
    assert sizing.weight_bytes == pytest.approx(facts.tensor_bytes / 2, rel=TOLERANCE)
    assert sizing.fits  # 27.4 + 6.0 GB within 0.9 x 44.53 GiB = 43.0 GB


# --- Gated DeltaNet hybrid: Qwen3-Next-80B-A3B --------------------------------------------------


def _qwen3_next_pages(tp: int) -> tuple[int, int]:
    """(attention block size, page bytes) after HybridAttentionMambaModelConfig (models/config.py).

    MambaStateShapeCalculator.gated_delta_net_state_shape (mamba_utils.py): conv state
    ``(conv_kernel - 1, (2 x 16 x 128 + 32 x 128) / tp)`` and temporal state
    ``(32 / tp, 128, 128)``, in the model dtype. The attention block grows to
    ``16 x cdiv(mamba_page, 16 x attention_page_per_token)`` and the mamba page is padded to it.
    """
    mamba_page = ((4 - 1) * (2 * 16 * 128 + 32 * 128) // tp + (32 // tp) * 128 * 128) * BF16
    attention_per_token = 2 * max(1, 2 // tp) * 256 * BF16
    block = 16 * _cdiv(mamba_page, 16 * attention_per_token)
    return block, block * attention_per_token


@pytest.mark.parametrize(("gpu_model", "gpus"), [(H100, 4), (H200, 2)])
def test_qwen3_next_counts_state_layers_as_one_page_per_sequence(
    gpu_model: str, gpus: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sizing = _size(_facts("qwen3-next-80b-a3b", tmp_path_factory), gpu_model, gpus, 262_144)
    block, page = _qwen3_next_pages(gpus)  # tp 4: 272 tokens, 278528 bytes
    # 48 layers, full attention every 4th: 12 full, 36 Gated DeltaNet
    assert _kv(sizing, "full_attention") == pytest.approx(
        12 * _cdiv(262_144, block) * page, rel=TOLERANCE
    )  # 3.2 GB
    assert _kv(sizing, "linear_attention") == pytest.approx(36 * page, rel=TOLERANCE)
    # qwen3_next.py load_weights skips the "mtp." prefix; the rest is split tp ways
    expected_weights = _layout_bytes("qwen3-next-80b-a3b", drop="mtp.") / gpus
    assert sizing.weight_bytes == pytest.approx(expected_weights, rel=TOLERANCE)
    assert sizing.fits  # 39.8 GB + 3.2 GB per H100
