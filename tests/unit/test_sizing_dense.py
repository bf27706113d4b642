"""Sizing of dense, mixture-of-experts and quantized Llama-family models, against vLLM v0.11.0's rules.

Each test sizes a sparse checkpoint built from the model's published config
(:mod:`tests.checkpoints`) on a GPU setup, and holds the prediction to the figure vLLM v0.11.0's own
rules give, written out here with the source file each step follows (paths under ``vllm/`` in the
v0.11.0 release):

- **KV cache per GPU** (exact): a layer's page holds ``block_size`` (16 on CUDA,
  ``config/cache.py`` ``CacheConfig.block_size``) tokens of K and V for the GPU's KV heads,
  ``2 x 16 x heads x head_dim x dtype bytes`` (``v1/kv_cache_interface.py``
  ``AttentionSpec.page_size_bytes``); a full-attention layer needs ``cdiv(max_model_len, 16)``
  pages per sequence (``FullAttentionSpec.max_memory_usage_bytes``). The heads a GPU keeps are
  ``max(1, total_kv_heads // tp)`` (``config/model.py`` ``ModelConfig.get_num_kv_heads``): past
  the KV head count they are replicated, not split.
- **Weights per GPU** (exact but for scales of a few bytes): column- and row-parallel layers are
  split across the ``tp`` GPUs (``model_executor/layers/linear.py``); K and V projections hold
  ``max(1, kv_heads // tp)`` heads per GPU (``QKVParallelLinear``: ``num_kv_head_replicas``); the
  embedding and ``lm_head`` hold ``pad(vocab, 64) / tp`` rows
  (``model_executor/layers/vocab_parallel_embedding.py``, ``DEFAULT_VOCAB_PADDING_SIZE``); norms
  and Mixtral's router (``models/mixtral.py``: ``ReplicatedLinear``) are whole on every GPU. AWQ
  and FP8 layers keep their packed tensors as stored (``layers/quantization/awq_marlin.py``
  repacks to the same size; ``layers/quantization/fp8.py`` keeps ``float8_e4m3fn`` weights).
- **Budget**: ``gpu_memory_utilization x`` the CUDA total (``v1/worker/gpu_worker.py``,
  ``requested_memory``); the CUDA totals are the catalog's recorded ones
  (``components/config/catalog.py``, each with its source).
- **Activations** (estimate): the profiling pass runs ``max_num_batched_tokens`` tokens (8192 on
  GPUs of at least 70 GiB that are not A100s, else 2048: ``engine/arg_utils.py``); what is large
  in it is the MLP: gate/up output and its activated half, ``3 x intermediate / tp`` values a token
  (a mixture of experts: ``top_k x (max(2 x intermediate / tp, hidden) + intermediate / tp)``,
  ``fused_moe/fused_moe.py`` ``intermediate_cache1..3``), plus the residual stream; then the
  sampler's float32 logits over ``max_num_seqs`` rows (``v1/worker/gpu_model_runner.py``
  ``_dummy_sampler_run``).
- **Non-torch memory** (measured, not derivable). ``v1/worker/gpu_worker.py`` ``init_device`` takes
  its start-up snapshot after the CUDA context and NCCL exist, and ``utils/__init__.py``
  ``memory_profiling`` counts only the non-torch memory that appears after it: vLLM logs report
  0.07 GiB (0.10.2, H100, TP 1) and 0.16 GiB. The context and NCCL (1.8 GiB at TP 1, 3.6 GiB at
  TP 2 measured from before device start-up in vLLM PR #10511) live outside the budget, in what
  ``gpu_memory_utilization`` leaves; at the default 0.9 they fit there on every GPU here.

The whole prediction must land within 10 % of this figure, the KV cache exactly, the weights to
0.1 % (replicated norms and scales are a few hundred kilobytes), and the fit decision must match.
Cases are chosen with headroom (or shortfall) beyond that tolerance, so the
decision does not hinge on the estimates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pytest
from sovereign_weights.manifest import describe_directory
from sovereign_weights.units import GIB

from components.config.catalog import GPU_MODELS
from components.config.models import ModelSpec, WeightsSource
from components.plan.sizing import ModelSizing, size_model
from tests.checkpoints import checkpoint, checkpoint_bytes, published_config, tensor_bytes
from tests.checkpoints.dense import decoder_layout

BLOCK_SIZE = 16  # vllm/config/cache.py: CacheConfig.block_size on CUDA
VOCAB_PADDING = 64  # vllm/model_executor/layers/vocab_parallel_embedding.py
NON_TORCH_IN_BUDGET = 0.16 * GIB  # vLLM's logs after the start-up snapshot
CONTEXT_TP1 = 1.8 * GIB  # outside the budget: CUDA context (vLLM PR #10511)
CONTEXT_TP_MANY = 3.6 * GIB  # and NCCL
TOLERANCE = 0.10

# Publishers' ``metadata.total_size`` (tests/data/models/SOURCE.md): the generated layouts must
# reproduce them byte for byte.
PUBLISHED_TOTAL_SIZE = {
    "llama-3.1-8b": 16060522496,
    "mixtral-8x7b": 93405585408,
    "mistral-small-24b": 47144806400,
    "llama-3-8b-fp8": 9081202432,
}
CONFIG_DIRECTORY = {
    "llama-3.1-8b": "llama-3.1-8b",
    "llama-3.1-70b": "llama-3.1-70b",
    "llama-3.1-70b-awq": "llama-3.1-70b-awq",
    "llama-3-8b-fp8": "llama-3-8b-fp8",
    "qwen2.5-32b": "qwen2.5-32b",
    "mixtral-8x7b": "mixtral-8x7b-v0.1",
    "mistral-small-24b": "mistral-small-24b",
}


def model_spec(
    name: str,
    gpus: int,
    concurrency: int,
    max_model_len: int | None = None,
    args: tuple[str, ...] = (),
) -> ModelSpec:
    return ModelSpec(
        name=name,
        source=WeightsSource(
            uri=f"s3://weights/{name}", endpoint="https://objects.lab.internal", revision="r1"
        ),
        gpus_per_replica=gpus,
        max_model_len=max_model_len,
        target_concurrency=concurrency,
        args=args,
    )


# --- vLLM v0.11.0's rules, written out -------------------------------------------------------


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kv_heads_per_gpu(total_kv_heads: int, tp: int) -> int:
    """``config/model.py`` ``get_num_kv_heads``: replicated, never below one, past the head count."""
    return max(1, total_kv_heads // tp)


def full_attention_bytes_per_sequence(
    layers: int, total_kv_heads: int, head_dim: int, tp: int, max_model_len: int, dtype_bytes: int
) -> int:
    """``v1/kv_cache_interface.py``: pages of 16 tokens, ``cdiv(max_model_len, 16)`` a layer."""
    page = 2 * BLOCK_SIZE * kv_heads_per_gpu(total_kv_heads, tp) * head_dim * dtype_bytes
    return layers * cdiv(max_model_len, BLOCK_SIZE) * page


def weight_bytes_per_gpu(config: Mapping[str, object], tp: int) -> int:
    """Each tensor's share on one GPU under tensor parallelism ``tp`` (rules in the docstring)."""
    kv_heads = int(str(config["num_key_value_heads"]))
    vocab = int(str(config["vocab_size"]))
    padded_vocab = cdiv(vocab, VOCAB_PADDING) * VOCAB_PADDING
    total = 0
    for name, dtype, shape in decoder_layout(config):
        size = tensor_bytes(dtype, shape)
        if name.startswith(("model.embed_tokens.", "lm_head.")):
            total += size * padded_vocab // vocab // tp
        elif "norm" in name or name.endswith(".block_sparse_moe.gate.weight") or shape == ():
            total += size  # replicated: norms, the MoE router, per-tensor FP8 scales
        elif ".k_proj." in name or ".v_proj." in name:
            total += size * kv_heads_per_gpu(kv_heads, tp) // kv_heads
        else:
            total += size // tp
    return total


def batched_tokens(gpu_model: str) -> int:
    """``engine/arg_utils.py``: 8192 on GPUs of at least 70 GiB that are not A100s, else 2048."""
    usable = GPU_MODELS[gpu_model].usable_bytes
    return 8192 if usable >= 70 * GIB and not gpu_model.startswith("A100") else 2048


def activation_estimate(
    config: Mapping[str, object], tp: int, gpu_model: str, sequences: int, dtype_bytes: int = 2
) -> int:
    hidden = int(str(config["hidden_size"]))
    intermediate = int(str(config["intermediate_size"]))
    tokens = batched_tokens(gpu_model)
    top_k = config.get("num_experts_per_tok")
    if isinstance(top_k, int):  # fused_moe.py: cache13 (max(N, K) wide) and cache2 (N / 2 wide)
        per_token = top_k * (max(2 * intermediate // tp, hidden) + intermediate // tp)
    else:
        per_token = 3 * intermediate // tp
    per_token += 2 * hidden  # residual and the normalised hidden state
    logits = sequences * int(str(config["vocab_size"])) * 4  # float32 logits of the sampler pass
    return tokens * per_token * dtype_bytes + logits


@dataclass(frozen=True)
class Expected:
    """What vLLM v0.11.0 spends per GPU for one replica, by its rules (bytes)."""

    weight_bytes: int
    kv_bytes: int
    activation_bytes: int
    non_torch_bytes: int
    budget_bytes: int
    context_bytes: int
    usable_bytes: int

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes + self.non_torch_bytes

    @property
    def fits(self) -> bool:
        slack = self.usable_bytes - self.budget_bytes
        return self.needed_bytes <= self.budget_bytes and self.context_bytes <= slack


def expected(
    fixture: str,
    gpu_model: str,
    tp: int,
    sequences: int,
    max_model_len: int,
    kv_dtype_bytes: int = 2,
    utilization: float = 0.9,
) -> Expected:
    config = published_config(CONFIG_DIRECTORY[fixture])
    hidden = int(str(config["hidden_size"]))
    heads = int(str(config["num_attention_heads"]))
    head_dim = config.get("head_dim") or hidden // heads
    assert isinstance(head_dim, int)
    per_sequence = full_attention_bytes_per_sequence(
        int(str(config["num_hidden_layers"])),
        int(str(config["num_key_value_heads"])),
        head_dim,
        tp,
        max_model_len,
        kv_dtype_bytes,
    )
    return Expected(
        weight_bytes=weight_bytes_per_gpu(config, tp),
        kv_bytes=sequences * per_sequence,
        activation_bytes=activation_estimate(config, tp, gpu_model, sequences),
        non_torch_bytes=int(NON_TORCH_IN_BUDGET),
        budget_bytes=int(GPU_MODELS[gpu_model].usable_bytes * utilization),
        context_bytes=int(CONTEXT_TP1 if tp == 1 else CONTEXT_TP_MANY),
        usable_bytes=GPU_MODELS[gpu_model].usable_bytes,
    )


def sized(
    fixture: str, tmp_path_factory: pytest.TempPathFactory, spec: ModelSpec, gpu_model: str
) -> ModelSizing:
    facts = describe_directory(checkpoint(fixture, tmp_path_factory))
    return size_model(spec, facts, gpu_model)


def assert_prediction(prediction: ModelSizing, want: Expected) -> None:
    """Within 10 % of vLLM's figure, KV exact, weights to 0.1 % (norms, scales), same decision."""
    assert prediction.kv_bytes == want.kv_bytes
    assert prediction.weight_bytes == pytest.approx(want.weight_bytes, rel=0.001)
    assert prediction.budget_bytes == pytest.approx(want.budget_bytes, rel=0.001)
    assert prediction.needed_bytes == pytest.approx(want.needed_bytes, rel=TOLERANCE)
    assert prediction.context_bytes == pytest.approx(want.context_bytes, rel=TOLERANCE)
    assert prediction.fits is want.fits


# --- the checkpoints are the published ones --------------------------------------------------


@pytest.mark.parametrize("fixture", sorted(PUBLISHED_TOTAL_SIZE))
def test_generated_checkpoint_totals_equal_the_publishers_index(
    fixture: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    facts = describe_directory(checkpoint(fixture, tmp_path_factory))
    assert facts.tensor_source == "safetensors-headers"
    assert facts.tensor_bytes == PUBLISHED_TOTAL_SIZE[fixture]


def test_sparse_checkpoints_cost_no_disk(tmp_path_factory: pytest.TempPathFactory) -> None:
    directory = checkpoint("llama-3.1-70b", tmp_path_factory)
    files = list(directory.iterdir())
    apparent = sum(path.stat().st_size for path in files)
    on_disk = sum(path.stat().st_blocks * 512 for path in files)
    assert apparent > 141 * 10**9
    assert on_disk < 10 * 2**20


def test_quantized_checkpoints_store_the_packed_dtypes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    awq = describe_directory(checkpoint("llama-3.1-70b-awq", tmp_path_factory))
    # 4-bit weights packed 8 to an int32: about a quarter of the 16-bit checkpoint
    assert set(awq.tensor_dtypes) == {"F16", "I32"}
    assert awq.tensor_bytes / 141107412992 == pytest.approx(0.28, abs=0.01)
    fp8 = describe_directory(checkpoint("llama-3-8b-fp8", tmp_path_factory))
    assert set(fp8.tensor_dtypes) == {"BF16", "F8_E4M3", "F32"}
    assert fp8.tensor_dtypes["F8_E4M3"] == 32 * (
        2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    )


def test_layout_rules_reproduce_the_qwen2_biases() -> None:
    layout = decoder_layout(published_config("qwen2.5-32b"))
    biases = [name for name, _, _ in layout if name.endswith(".bias")]
    assert len(biases) == 3 * 64
    # Qwen2.5-32B, 32.8B parameters in bfloat16
    assert checkpoint_bytes(layout) == 65527752704


# --- predictions against vLLM's rules --------------------------------------------------------


@pytest.mark.parametrize(
    ("gpu_model", "fits"),
    [("H100-SXM5-80GB", True), ("L40S-48GB", False)],
)
def test_llama_8b_at_32k_fits_an_h100_and_not_an_l40s(
    gpu_model: str, fits: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 32 layers x 2048 pages x (2 x 16 x 8 heads x 128 x 2 B) = 4 GiB a sequence; 8 sequences
    want = expected("llama-3.1-8b", gpu_model, tp=1, sequences=8, max_model_len=32768)
    assert want.kv_bytes == 32 * GIB
    assert want.fits is fits
    prediction = sized(
        "llama-3.1-8b", tmp_path_factory, model_spec("llama-8b", 1, 8, 32768), gpu_model
    )
    assert_prediction(prediction, want)


@pytest.mark.parametrize(
    ("tp", "fits"),
    [(8, True), (16, True)],
)
def test_llama_70b_replicates_its_8_kv_heads_past_tp_8(
    tp: int, fits: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 8 KV heads: one a GPU at TP 8, still one (replicated) at TP 16, so the KV cache per GPU
    # does not shrink: 80 layers x 8192 pages x (2 x 16 x 1 x 128 x 2 B) = 5 GiB a sequence
    want = expected("llama-3.1-70b", "H100-SXM5-80GB", tp=tp, sequences=8, max_model_len=131072)
    assert want.kv_bytes == 8 * 5 * GIB
    assert want.fits is fits
    prediction = sized(
        "llama-3.1-70b", tmp_path_factory, model_spec("llama-70b", tp, 8), "H100-SXM5-80GB"
    )
    assert prediction.max_model_len == 131072  # the config's max_position_embeddings
    assert_prediction(prediction, want)


@pytest.mark.parametrize(
    ("gpu_model", "fits"), [("H200-SXM5-141GB", True), ("H100-SXM5-80GB", False)]
)
def test_llama_70b_on_two_gpus_fits_an_h200_pair_and_not_an_h100_pair(
    gpu_model: str, fits: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # TP 2: 4 of the 8 KV heads a GPU; 80 layers x 2048 pages x (2 x 16 x 4 x 128 x 2 B) = 5 GiB
    # for a 32k sequence, 8 sequences 40 GiB; weights 141.1 GB / 2 = 65.7 GiB a GPU
    want = expected("llama-3.1-70b", gpu_model, tp=2, sequences=8, max_model_len=32768)
    assert want.kv_bytes == 40 * GIB
    assert want.fits is fits  # 106 GiB against 125.7 (H200) or 71.2 (H100)
    prediction = sized(
        "llama-3.1-70b", tmp_path_factory, model_spec("llama-70b", 2, 8, 32768), gpu_model
    )
    assert_prediction(prediction, want)


def test_llama_70b_at_tp_16_is_refused_where_kv_heads_run_out(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Decided wrongly before: the KV cache counted once per replica (640 GiB for 16 sequences at
    # 128k, spread over 16 GPUs: 40 GiB each) said it fits. vLLM holds a replicated KV head on
    # every GPU: 16 x 5 GiB = 80 GiB per GPU, beyond an H100's 71.2 GiB budget.
    want = expected("llama-3.1-70b", "H100-SXM5-80GB", tp=16, sequences=16, max_model_len=131072)
    assert want.kv_bytes == 80 * GIB
    assert not want.fits
    prediction = sized(
        "llama-3.1-70b", tmp_path_factory, model_spec("llama-70b", 16, 16), "H100-SXM5-80GB"
    )
    assert_prediction(prediction, want)
    assert prediction.sequences_that_fit < 16


@pytest.mark.parametrize(
    ("gpu_model", "tp", "sequences", "fits"),
    [
        ("H100-SXM5-80GB", 1, 8, True),
        ("H100-SXM5-80GB", 1, 16, False),
        ("L40S-48GB", 2, 4, True),
    ],
)
def test_awq_weights_are_held_at_their_int4_size(
    gpu_model: str, tp: int, sequences: int, fits: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 39.8 GB on disk is what vLLM holds (awq_marlin repacks int4 to int4), not 141 GB
    want = expected("llama-3.1-70b-awq", gpu_model, tp=tp, sequences=sequences, max_model_len=8192)
    assert want.fits is fits
    prediction = sized(
        "llama-3.1-70b-awq",
        tmp_path_factory,
        model_spec("llama-70b-awq", tp, sequences, 8192),
        gpu_model,
    )
    assert_prediction(prediction, want)
    assert prediction.weight_bytes < 0.3 * 141107412992 / tp


@pytest.mark.parametrize("gpu_model", ["L40S-48GB", "H100-SXM5-80GB"])
def test_fp8_checkpoint_is_held_in_fp8(
    gpu_model: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    want = expected("llama-3-8b-fp8", gpu_model, tp=1, sequences=16, max_model_len=8192)
    assert want.fits
    prediction = sized(
        "llama-3-8b-fp8", tmp_path_factory, model_spec("llama-8b-fp8", 1, 16), gpu_model
    )
    assert prediction.max_model_len == 8192  # Llama 3's max_position_embeddings
    assert_prediction(prediction, want)
    # 8.5 GiB: half the 16-bit model's 15 GiB, plus its 16-bit embeddings and lm_head
    assert prediction.weight_bytes == pytest.approx(9081202432, abs=1024)


def test_kv_cache_dtype_fp8_in_the_models_args_halves_the_kv_cache(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    auto = sized(
        "llama-3.1-8b", tmp_path_factory, model_spec("llama-8b", 1, 8, 32768), "H100-SXM5-80GB"
    )
    fp8 = sized(
        "llama-3.1-8b",
        tmp_path_factory,
        model_spec("llama-8b", 1, 8, 32768, args=("--kv-cache-dtype", "fp8")),
        "H100-SXM5-80GB",
    )
    # kv_cache_interface.py: dtype bytes 1 for fp8 (vllm/utils STR_DTYPE_TO_TORCH_DTYPE)
    want = expected(
        "llama-3.1-8b", "H100-SXM5-80GB", tp=1, sequences=8, max_model_len=32768, kv_dtype_bytes=1
    )
    assert fp8.kv_bytes == want.kv_bytes == auto.kv_bytes // 2
    assert fp8.weight_bytes == auto.weight_bytes


def test_gpu_memory_utilization_in_the_models_args_raises_the_budget(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    default = sized("qwen2.5-32b", tmp_path_factory, model_spec("qwen-32b", 2, 4), "H100-SXM5-80GB")
    raised = sized(
        "qwen2.5-32b",
        tmp_path_factory,
        model_spec("qwen-32b", 2, 4, args=("--gpu-memory-utilization", "0.95")),
        "H100-SXM5-80GB",
    )
    usable = GPU_MODELS["H100-SXM5-80GB"].usable_bytes
    assert default.budget_bytes == pytest.approx(usable * 0.9, rel=0.001)
    assert raised.budget_bytes == pytest.approx(usable * 0.95, rel=0.001)
    assert raised.headroom_bytes - default.headroom_bytes == pytest.approx(usable * 0.05, rel=0.01)
    assert raised.limits.gpu_memory_utilization == 0.95


@pytest.mark.parametrize(
    ("tp", "fits"),
    [(2, True), (1, False)],
)
def test_qwen2_5_32b_needs_two_h100s_for_four_32k_sequences(
    tp: int, fits: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # sliding_window 131072 with use_sliding_window false: every layer is full attention
    # (vllm/transformers_utils/config.py, Qwen2 reads use_sliding_window)
    want = expected("qwen2.5-32b", "H100-SXM5-80GB", tp=tp, sequences=4, max_model_len=32768)
    assert want.fits is fits
    prediction = sized(
        "qwen2.5-32b", tmp_path_factory, model_spec("qwen-32b", tp, 4), "H100-SXM5-80GB"
    )
    assert [share.kind for share in prediction.kv] == ["full_attention"]
    assert_prediction(prediction, want)


@pytest.mark.parametrize(
    ("gpu_model", "tp", "fits"),
    [("H100-SXM5-80GB", 2, True), ("L40S-48GB", 2, False)],
)
def test_mixtral_holds_every_expert_split_across_the_gpus(
    gpu_model: str, tp: int, fits: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # 8 KV heads at TP 2: 4 a GPU; 32 layers x 2048 pages x (2 x 16 x 4 x 128 x 2 B) = 2 GiB
    want = expected("mixtral-8x7b", gpu_model, tp=tp, sequences=4, max_model_len=32768)
    assert want.kv_bytes == 4 * 2 * GIB
    assert want.fits is fits
    prediction = sized("mixtral-8x7b", tmp_path_factory, model_spec("mixtral", tp, 4), gpu_model)
    assert_prediction(prediction, want)


@pytest.mark.parametrize(
    ("gpu_model", "tp", "sequences", "fits"),
    [("H100-SXM5-80GB", 1, 2, True), ("L40S-48GB", 2, 8, False)],
)
def test_mistral_small_24b_at_its_32k_context(
    gpu_model: str, tp: int, sequences: int, fits: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # head_dim 128 is given (5120 / 32 would be 160): 40 layers x 2048 pages x 65536 B = 5 GiB
    want = expected("mistral-small-24b", gpu_model, tp=tp, sequences=sequences, max_model_len=32768)
    assert want.kv_bytes == sequences * 5 * GIB // tp
    assert want.fits is fits
    prediction = sized(
        "mistral-small-24b",
        tmp_path_factory,
        model_spec("mistral-small", tp, sequences),
        gpu_model,
    )
    assert_prediction(prediction, want)
