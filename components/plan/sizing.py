"""VRAM sizing: does each model fit the GPUs of one replica the way vLLM spends their memory?

Pure: from the validated stack and each model's manifest facts (``config.json`` and its tensors,
see :mod:`sovereign_weights.manifest`) to a :class:`SizingReport`. ``sovereign size``,
``validate`` (with a locally cached manifest) and the Pulumi program at preview call
:func:`size_stack`.

Every figure is per GPU of one replica (tensor parallelism = ``gpusPerReplica``), because that is
how vLLM v0.11.0 (the release the stacks pin; paths below are in its source tree) decides:

- **budget**: ``vllm/v1/worker/gpu_worker.py`` ``init_device``: ``requested_memory =
  total_memory x gpu_memory_utilization``, where ``total_memory`` is what CUDA reports for the
  GPU (the catalog's ``usable_bytes``, never the marketing size);
- ``determine_available_memory``: the KV cache gets ``requested_memory - non_kv_cache_memory``,
  where ``non_kv_cache_memory`` (``vllm/utils/__init__.py`` ``memory_profiling``) is the weights,
  the torch peak of a profiling forward pass, and non-torch memory that appeared since start-up;
- ``vllm/v1/core/kv_cache_utils.py`` ``check_enough_kv_cache_memory`` refuses to start below one
  full-length sequence; the plan needs ``targetConcurrency`` of them per replica.

**Weights** (:func:`held_weight_bytes`): the checkpoint's tensors as vLLM loads them, split
across the tensor-parallel GPUs: multi-token-prediction layers are skipped without speculative
decoding (``deepseek_v2.py`` ``get_spec_layer_idx_from_weight_name``; ``qwen3_next.py``
``skip_prefixes=["mtp."]``); float32 checkpoints load in 16 bit (``vllm/config/model.py``
``_resolve_auto_dtype``); MXFP4 experts are padded for the kernel
(``layers/quantization/mxfp4.py`` ``Mxfp4MoEMethod.create_weights``); vision towers are loaded
unless the architecture skips them in text-only mode (``--limit-mm-per-prompt`` all 0).

**KV cache** (:func:`kv_shares`), per layer kind, ``vllm/v1/kv_cache_interface.py``:

- full attention: ``cdiv(max_model_len, block_size) x page``, page = ``2 x block_size x
  kv_heads_per_gpu x head_size x dtype``, with ``kv_heads_per_gpu = max(1, kv_heads // tp)``
  (``vllm/config/model.py`` ``get_num_kv_heads``: heads are replicated past their number);
- MLA (DeepSeek V2/V3, Kimi): one latent head of ``kv_lora_rank + qk_rope_head_dim``, no K/V
  pair, held in full on every GPU (``MLAAttentionSpec``);
- sliding window: ``(cdiv(min(window - 1 + max_num_batched_tokens, max_model_len), block_size)
  + 1) x page`` (``SlidingWindowSpec``);
- linear attention / state-space layers: one fixed state per sequence (``MambaSpec``), shapes
  from ``layers/mamba/mamba_utils.py``; hybrids raise the attention block size until its page
  holds the state and pad the state to it (``models/config.py``
  ``HybridAttentionMambaModelConfig``);
- kinds are grouped with the hybrid KV cache manager, padding every kind to a multiple of the
  rarest kind's layer count (``_get_kv_cache_groups_uniform_page_size``); with
  ``--disable-hybrid-kv-cache-manager`` sliding layers are held at full length.

**Activations** (:func:`activation_bytes`): an estimate of the profiling pass of
``max_num_batched_tokens`` tokens (``gpu_model_runner.py`` ``profile_run``) and of the sampler over
``max_num_seqs`` sequences (``_dummy_sampler_run``, with top-k/top-p on), the larger of the two.

**Non-torch memory** inside the budget: :data:`NON_TORCH_BYTES` (cuBLAS workspaces and
attention back-end buffers that appear during profiling; vLLM 0.10/0.11 logs report 0.07-0.16
GiB). Outside it: vLLM takes its start-up snapshot after the CUDA context and NCCL exist, so those
(:data:`CONTEXT_BYTES_TP1` / :data:`CONTEXT_BYTES_TP`) must fit in the ``1 -
gpu_memory_utilization`` it leaves, or it refuses to start ("Free memory on device ... is less
than desired GPU memory utilization"); CUDA graphs (:data:`CUDA_GRAPH_BYTES`) are captured after
the KV cache is allocated and must fit there too (``gpu_worker.py``: "`memory_profiling` does not
consider CUDAGraph memory size").

The engine arguments (utilisation, batch, KV dtype, context) come from the model's ``args``
first (:mod:`components.plan.engine_args`); the plan passes ``--max-num-seqs`` from
``targetConcurrency`` so vLLM profiles the batch sized here.

Host memory of one replica (:func:`replica_host_memory`; the model pod's memory request and limit,
and what ``sovereign size`` reports), summed over what lives in the pod's memory cgroup:

- **streamer buffers**: vLLM v0.11.0's ``runai_streamer`` loader runs one Run:ai Model Streamer
  per tensor-parallel worker, each over every safetensors file of the checkpoint, and each
  allocates one CPU buffer of ``min(memory_limit, bytes of all tensors)`` (runai-model-streamer
  0.14.0, ``FilesRequestsIteratorWithBuffer.with_memory_cap``; 20 GB per worker when no limit is
  given). The plan passes :data:`STREAMER_MEMORY_LIMIT_BYTES` as ``memory_limit``.
- **/dev/shm**: the memory emptyDir's ``sizeLimit``, :data:`SHM_BYTES` (vLLM v0.11.0's Kubernetes
  guide gives its shm volume ``sizeLimit: 2Gi``); tmpfs pages are charged to the pod.
- **processes**: an allowance for the API server and engine core, and one per GPU worker (Python,
  PyTorch, the CUDA context's host side, NCCL). Not measured here: verification reads the real
  figure from a live pod.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import JsonValue
from sovereign_weights.manifest import Manifest, ModelFacts
from sovereign_weights.units import GIB

from components.config.catalog import GPU_MODELS
from components.config.errors import Problem
from components.config.models import ModelSpec, StackConfig
from components.plan.engine_args import EngineArgsError, EngineLimits, engine_limits

WARN_BELOW_FRACTION: Final = 0.5
# vLLM v0.11.0 on CUDA: ``CacheConfig.block_size`` None becomes 16 (``vllm/platforms/cuda.py``).
BLOCK_SIZE: Final = 16
# Non-torch memory that appears between vLLM's start-up snapshot and the end of its profiling
# pass: vLLM 0.10.2 logs "0.07 GiB for non-torch memory" (H100, TP 1), a V0 log after the
# snapshot moved "non_torch_memory takes 0.16GiB"; rounded up.
NON_TORCH_BYTES: Final = GIB // 4
# What exists before that snapshot and stays outside gpu_memory_utilization: the CUDA context
# and, with tensor parallelism, NCCL's and the custom all-reduce's buffers. vLLM PR #10511
# measured, from before device initialisation (H100, Llama 3 8B), "non_torch_memory 1.79GiB" at
# TP 1 and "3.58GiB" at TP 2.
CONTEXT_BYTES_TP1: Final = int(1.8 * GIB)
CONTEXT_BYTES_TP: Final = int(3.6 * GIB)
# CUDA graphs captured after the KV cache is allocated: 0.67 GiB logged for a 7B model at 16384
# batched tokens (vLLM 0.10.2, H100), 0.89 GiB for a hybrid model at 8192.
CUDA_GRAPH_BYTES: Final = GIB
# The fused MoE kernel works through the batch in chunks (``VLLM_FUSED_MOE_CHUNK_SIZE``).
FUSED_MOE_CHUNK_TOKENS: Final = 32768
# Per token of the profiling pass, besides the MLP and attention projections: the hidden states,
# the residual, the normalised input and the attention output, each ``hidden_size`` wide.
HIDDEN_COPIES: Final = 4
# Per logit of the sampler pass (``vllm/v1/sample/sampler.py``, ``ops/topk_topp_sampler.py``):
# float32 logits (4), the top-k/top-p sort's values and int64 indices (4 + 8), float32
# probabilities (4) and the scattered-back copy (4).
SAMPLER_BYTES_PER_LOGIT: Final = 24

DTYPE_BYTES: Final[dict[str, int]] = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}

# Keys a published config may leave to its class's defaults (transformers 4.56.2, the minimum
# vLLM v0.11.0 requires): ``models/gemma3/configuration_gemma3.py`` (Gemma3TextConfig),
# ``models/gpt_oss/configuration_gpt_oss.py`` (GptOssConfig); vLLM's own
# ``transformers_utils/configs/qwen3_next.py`` (Qwen3NextConfig).
CLASS_DEFAULTS: Final[dict[str, dict[str, Any]]] = {
    "gemma3_text": {
        "vocab_size": 262_208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "max_position_embeddings": 131_072,
        "sliding_window": 4096,
        "sliding_window_pattern": 6,
    },
    "gpt_oss": {"sliding_window": 128},
    "qwen3_next": {"full_attention_interval": 4},
}
# The nested text config's type when a multimodal config does not say it.
TEXT_MODEL_TYPES: Final = {"gemma3": "gemma3_text"}
# Architectures that leave their vision tower out when every modality's limit is 0 (their
# ``__init__`` tests ``multimodal_config.get_limit_per_prompt``); the others always load it.
SKIPS_VISION_WHEN_TEXT_ONLY: Final = frozenset(
    {
        "LlavaForConditionalGeneration",
        "Mistral3ForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLMoeForConditionalGeneration",
        "Llama4ForConditionalGeneration",
        "KeyeForConditionalGeneration",
        "Step3VLForConditionalGeneration",
        "Qwen2_5OmniThinkerForConditionalGeneration",
    }
)
VISION_PREFIXES: Final = (
    "vision_tower.",
    "vision_model.",
    "multi_modal_projector.",
    "visual.",
    "model.vision_tower.",
    "model.visual.",
    "model.multi_modal_projector.",
)
# Layers vLLM builds unsplit on every GPU: MLA's down-projections (``deepseek_v2.py``:
# ``fused_qkv_a_proj`` with ``disable_tp``, ``kv_a_proj_with_mqa`` a ``ReplicatedLinear``) and MoE
# routers (``ReplicatedLinear``).
_REPLICATED: Final = (".q_a_proj.", ".kv_a_proj_with_mqa.", ".mlp.gate.weight", ".router.")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")

FULL: Final = "full_attention"
SLIDING: Final = "sliding_window"
MLA: Final = "mla"
LINEAR: Final = "linear_attention"
MAMBA: Final = "mamba"


class SizingInputError(ValueError):
    """A config.json or manifest that lacks what sizing needs; names the key and what was expected."""


@dataclass(frozen=True)
class KvShare:
    """The KV cache of one kind of layer, per GPU, for one sequence at ``max_model_len``."""

    kind: str
    layers: int
    bytes_per_sequence: int


@dataclass(frozen=True)
class ModelSizing:
    """One model's need against what each GPU of one replica gives vLLM (bytes, per GPU)."""

    model: str
    gpu_model: str
    gpus: int
    max_model_len: int
    sequences: int
    limits: EngineLimits
    weight_bytes: int
    kv: tuple[KvShare, ...]
    activation_bytes: int
    non_torch_bytes: int
    usable_bytes: int
    context_bytes: int = 0  # outside the budget: CUDA context, NCCL
    graph_bytes: int = 0  # outside the budget: CUDA graphs
    notes: tuple[str, ...] = ()

    @property
    def kv_bytes_per_sequence(self) -> int:
        return sum(share.bytes_per_sequence for share in self.kv)

    @property
    def kv_bytes(self) -> int:
        return self.sequences * self.kv_bytes_per_sequence

    @property
    def budget_bytes(self) -> int:
        """What vLLM may use: ``usable x gpu_memory_utilization``; with
        ``--kv-cache-memory-bytes`` the KV cache gets that size whatever the rest takes, so the
        budget is the rest plus it."""
        given = self.limits.kv_cache_memory_bytes
        if given is not None:
            return self.weight_bytes + self.activation_bytes + self.non_torch_bytes + given
        return int(self.usable_bytes * self.limits.gpu_memory_utilization)

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes + self.non_torch_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.needed_bytes

    @property
    def slack_bytes(self) -> int:
        """What ``gpu_memory_utilization`` leaves outside vLLM's budget."""
        return self.usable_bytes - self.budget_bytes

    @property
    def starts(self) -> bool:
        """The CUDA context and NCCL fit beside the budget (vLLM's start-up check)."""
        return self.context_bytes <= self.slack_bytes

    @property
    def graphs_fit(self) -> bool:
        return self.context_bytes + self.graph_bytes <= self.slack_bytes

    @property
    def fits(self) -> bool:
        on_device = self.budget_bytes + self.context_bytes <= self.usable_bytes
        return self.starts and on_device and self.needed_bytes <= self.budget_bytes

    @property
    def kv_room_bytes(self) -> int:
        """What vLLM gives the KV cache: the budget less everything else."""
        return self.budget_bytes - self.weight_bytes - self.activation_bytes - self.non_torch_bytes

    @property
    def sequences_that_fit(self) -> int:
        """Full-length sequences the KV room holds (0 when vLLM would refuse to start)."""
        if self.kv_bytes_per_sequence == 0:
            return self.sequences if self.kv_room_bytes >= 0 else 0
        return max(0, self.kv_room_bytes // self.kv_bytes_per_sequence)

    @property
    def used_fraction(self) -> float:
        return self.needed_bytes / self.usable_bytes

    def line(self) -> str:
        """One line for ``sovereign size``, per GPU of a replica."""
        kinds = ", ".join(
            f"{share.kind} {_gib(self.sequences * share.bytes_per_sequence)}" for share in self.kv
        )
        return (
            f"{self.model:<24} {self.gpus} x {self.gpu_model:<18} per GPU: weights "
            f"{_gib(self.weight_bytes)}  kv {_gib(self.kv_bytes)} ({self.sequences} x "
            f"{self.max_model_len} tok: {kinds})  act {_gib(self.activation_bytes)}"
            f"  other {_gib(self.non_torch_bytes)}  need {_gib(self.needed_bytes)}"
            f" / {_gib(self.budget_bytes)}  headroom {_gib(self.headroom_bytes)}"
            f"  ({self.sequences_that_fit} sequences fit)"
        )

    def as_dict(self) -> dict[str, JsonValue]:
        """This model's entry of ``sovereign size --json`` (bytes, per GPU)."""
        return {
            "model": self.model,
            "gpuModel": self.gpu_model,
            "gpus": self.gpus,
            "maxModelLen": self.max_model_len,
            "sequences": self.sequences,
            "perGpu": {
                "weightBytes": self.weight_bytes,
                "kvCacheBytes": self.kv_bytes,
                "kvCache": [
                    {
                        "kind": share.kind,
                        "layers": share.layers,
                        "bytesPerSequence": share.bytes_per_sequence,
                        "bytes": self.sequences * share.bytes_per_sequence,
                    }
                    for share in self.kv
                ],
                "activationBytes": self.activation_bytes,
                "nonTorchBytes": self.non_torch_bytes,
                "neededBytes": self.needed_bytes,
                "usableBytes": self.usable_bytes,
                "budgetBytes": self.budget_bytes,
                "headroomBytes": self.headroom_bytes,
                "outsideBudget": {
                    "slackBytes": self.slack_bytes,
                    "cudaContextBytes": self.context_bytes,
                    "cudaGraphBytes": self.graph_bytes,
                },
            },
            "engine": {
                "gpuMemoryUtilization": self.limits.gpu_memory_utilization,
                "maxNumSeqs": self.limits.max_num_seqs,
                "maxNumBatchedTokens": self.limits.max_num_batched_tokens,
                "kvCacheDtype": self.limits.kv_cache_dtype,
            },
            "fits": self.fits,
            "sequencesThatFit": self.sequences_that_fit,
            "notes": list(self.notes),
        }


@dataclass
class SizingReport:
    models: list[ModelSizing] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    unsized: list[str] = field(default_factory=list)  # models without a manifest at hand
    unsizable: list[str] = field(default_factory=list)  # facts lack a key (the problem names it)
    not_fitting: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, JsonValue]:
        return {
            "models": [sizing.as_dict() for sizing in self.models],
            "unsized": list(self.unsized),
            "unsizable": list(self.unsizable),
            "problems": [{"path": p.path, "message": p.message} for p in self.problems],
            "warnings": [{"path": w.path, "message": w.message} for w in self.warnings],
        }


def _gib(count: int) -> str:
    return f"{count / GIB:.1f} GiB"


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(value: int, multiple: int) -> int:
    return _cdiv(value, multiple) * multiple


# --- reading config.json ---------------------------------------------------------------------


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's config: a multimodal config's ``text_config`` over the top level,
    with the class defaults of its ``model_type`` for keys the published file leaves out."""
    nested = config.get("text_config")
    if isinstance(nested, Mapping):
        model_type = nested.get("model_type") or TEXT_MODEL_TYPES.get(
            str(config.get("model_type")), ""
        )
        merged: dict[str, Any] = dict(CLASS_DEFAULTS.get(str(model_type), {}))
        merged.update(nested)
        merged["model_type"] = model_type
        for key in ("torch_dtype", "dtype", "quantization_config", "architectures"):
            if key not in merged and key in config:
                merged[key] = config[key]
        return merged
    merged = dict(CLASS_DEFAULTS.get(str(config.get("model_type")), {}))
    merged.update(config)
    return merged


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key)
    if value is None:
        if default is not None:
            return default
        raise SizingInputError(f"config.json: {key} is missing; expected a positive integer")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SizingInputError(f"config.json: {key} is {value!r}; expected a positive integer")
    return value


def checkpoint_dtype(config: Mapping[str, Any]) -> str:
    """The checkpoint's dtype name as its config gives it (``torch_dtype`` or ``dtype``)."""
    text = text_config(config)
    dtype = text.get("torch_dtype") or text.get("dtype") or config.get("torch_dtype")
    if dtype is None:
        # vLLM's _find_dtype: no dtype in the config (gpt-oss publishes none) and no hub
        # metadata offline means float32, which ``auto`` then runs in 16 bit
        return "float32"
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise SizingInputError(
            f"config.json: torch_dtype {dtype!r} unknown; expected one of {', '.join(DTYPE_BYTES)}"
        )
    return name


def model_dtype_bytes(config: Mapping[str, Any], dtype_arg: str = "auto") -> int:
    """Bytes per element of the dtype vLLM runs the model in: ``--dtype``, else the checkpoint's,
    with float32 checkpoints run in 16 bit (``_resolve_auto_dtype`` downcasts them)."""
    if dtype_arg != "auto":
        if dtype_arg not in DTYPE_BYTES:
            raise SizingInputError(f"args: --dtype {dtype_arg!r} unknown")
        return DTYPE_BYTES[dtype_arg]
    return min(DTYPE_BYTES[checkpoint_dtype(config)], 2)


def kv_dtype_bytes(config: Mapping[str, Any], limits: EngineLimits) -> int:
    """Bytes per KV-cache element: ``--kv-cache-dtype``, or the model's dtype for ``auto``."""
    if limits.kv_cache_dtype == "auto":
        return model_dtype_bytes(config, limits.dtype)
    if limits.kv_cache_dtype not in DTYPE_BYTES:
        raise SizingInputError(
            f"args: --kv-cache-dtype {limits.kv_cache_dtype!r} unknown; expected auto or one of "
            f"{', '.join(DTYPE_BYTES)}"
        )
    return DTYPE_BYTES[limits.kv_cache_dtype]


def default_max_model_len(config: Mapping[str, Any]) -> int:
    """vLLM's default ``max_model_len`` (``vllm/config/model.py`` ``_get_and_verify_max_len``):
    the smallest length key, scaled by RoPE scaling other than su/longrope/llama3 (yarn from its
    ``original_max_position_embeddings``); Gemma 3's length is already scaled."""
    text = text_config(config)
    keys = (
        "max_position_embeddings",
        "n_positions",
        "max_seq_len",
        "seq_length",
        "max_target_positions",
        "max_sequence_length",
        "max_seq_length",
        "seq_len",
    )
    found = [text[key] for key in keys if isinstance(text.get(key), int)]
    if isinstance(text.get("model_max_length"), int):
        found = [text["model_max_length"]]
    if not found:
        raise SizingInputError(
            "config.json: max_position_embeddings is missing; expected a positive integer "
            "(or give the model maxModelLen)"
        )
    length = min(found)
    scaling = text.get("rope_scaling")
    if isinstance(scaling, Mapping) and "gemma3" not in str(text.get("model_type")):
        rope_type = scaling.get("rope_type", scaling.get("type"))
        if rope_type not in ("su", "longrope", "llama3", "default", None):
            factor = float(scaling.get("factor", 1.0))
            if rope_type == "yarn":
                length = int(scaling.get("original_max_position_embeddings", length))
            return int(length * factor)
    return int(length)


def _is_mla(text: Mapping[str, Any]) -> bool:
    return text.get("kv_lora_rank") is not None


def layer_kinds(text: Mapping[str, Any]) -> list[str]:
    """The KV-cache kind of each decoder layer, as vLLM's model code assigns them."""
    layers = _int(text, "num_hidden_layers")
    model_type = str(text.get("model_type", ""))
    if _is_mla(text):
        return [MLA] * layers
    types = text.get("layer_types")
    if types is None and model_type == "qwen3_next":
        interval = _int(text, "full_attention_interval")
        types = ["full_attention" if (i + 1) % interval == 0 else LINEAR for i in range(layers)]
    elif types is None and model_type == "gemma3_text":
        pattern = _int(text, "sliding_window_pattern")
        types = [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(layers)
        ]
    elif types is None and model_type in ("gemma2", "gpt_oss"):
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(layers)]
    elif types is None and model_type == "jamba":
        period = _int(text, "attn_layer_period")
        offset = int(text.get("attn_layer_offset", 0))
        types = ["full_attention" if i % period == offset else MAMBA for i in range(layers)]
    if types is not None:
        if not isinstance(types, list) or len(types) != layers:
            raise SizingInputError(
                f"config.json: layer_types must list one type for each of the {layers} layers"
            )
        return [_kind_of(str(kind), text) for kind in types]
    window = text.get("sliding_window")
    if isinstance(window, int) and window > 0 and text.get("use_sliding_window", True):
        return [SLIDING] * layers  # the window applies to every layer (Mistral 7B v0.1)
    return [FULL] * layers


def _kind_of(kind: str, text: Mapping[str, Any]) -> str:
    if kind in ("full_attention", "attention"):
        return FULL
    if kind == "sliding_attention":
        if not isinstance(text.get("sliding_window"), int):
            raise SizingInputError("config.json: sliding_window is missing; expected tokens")
        return SLIDING
    if kind == "linear_attention":
        return LINEAR
    if kind == "mamba":
        return MAMBA
    raise SizingInputError(
        f"config.json: layer type {kind!r} unknown; expected full_attention, sliding_attention, "
        "linear_attention or mamba"
    )


def _head_dim(text: Mapping[str, Any]) -> int:
    heads = _int(text, "num_attention_heads")
    head_dim = text.get("head_dim")
    if head_dim is None:
        return _int(text, "hidden_size") // heads
    return _int(text, "head_dim")


def attention_bytes_per_token(text: Mapping[str, Any], tp: int, dtype_bytes: int) -> int:
    """One attention layer's KV bytes per token on one GPU (``AttentionSpec.page_size_bytes`` /
    ``MLAAttentionSpec.page_size_bytes`` over ``block_size``)."""
    if _is_mla(text):
        latent = _int(text, "kv_lora_rank") + _int(text, "qk_rope_head_dim")
        return latent * dtype_bytes
    heads = _int(text, "num_attention_heads")
    kv_heads = _int(text, "num_key_value_heads", heads)
    return 2 * max(1, kv_heads // tp) * _head_dim(text) * dtype_bytes


def state_bytes(text: Mapping[str, Any], kind: str, tp: int, dtype_bytes: int) -> int:
    """One linear-attention or state-space layer's state for one sequence on one GPU
    (``MambaStateShapeCalculator``; states in the model's dtype under ``mamba_cache_dtype``
    ``auto``)."""
    hidden = _int(text, "hidden_size")
    if kind == LINEAR:  # Gated DeltaNet (Qwen3-Next): gated_delta_net_state_shape
        k_heads = _int(text, "linear_num_key_heads")
        v_heads = _int(text, "linear_num_value_heads")
        k_dim = _int(text, "linear_key_head_dim")
        v_dim = _int(text, "linear_value_head_dim")
        conv_kernel = _int(text, "linear_conv_kernel_dim")
        conv_dim = k_dim * k_heads * 2 + v_dim * v_heads
        conv = (conv_kernel - 1) * (conv_dim // tp)
        temporal = (v_heads // tp) * k_dim * v_dim
        return (conv + temporal) * dtype_bytes
    expand = _int(text, "mamba_expand")
    conv_kernel = _int(text, "mamba_d_conv")
    state = _int(text, "mamba_d_state")
    intermediate = expand * hidden
    if "mamba_n_heads" in text:  # Mamba2 (Granite 4, Bamba): mamba2_state_shape
        groups = _int(text, "mamba_n_groups")
        if groups % tp:
            groups += tp - groups
        conv_dim = intermediate + 2 * groups * state
        conv = (conv_kernel - 1) * (conv_dim // tp)
        temporal = (_int(text, "mamba_n_heads") // tp) * _int(text, "mamba_d_head") * state
        return (conv + temporal) * dtype_bytes
    # Mamba1 (Jamba): mamba1_state_shape
    return ((conv_kernel - 1) + state) * (intermediate // tp) * dtype_bytes


def kv_shares(
    config: Mapping[str, Any], limits: EngineLimits, tp: int, max_model_len: int
) -> tuple[KvShare, ...]:
    """Per layer kind, the KV bytes one sequence of ``max_model_len`` takes on one GPU."""
    text = text_config(config)
    kinds = layer_kinds(text)
    dtype_bytes = kv_dtype_bytes(config, limits)
    if not limits.hybrid_kv_cache_manager:
        kinds = [FULL if kind == SLIDING else kind for kind in kinds]
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    attention_token = (
        attention_bytes_per_token(text, tp, dtype_bytes)
        if counts.keys() & {FULL, SLIDING, MLA}
        else 0
    )
    block = BLOCK_SIZE
    state_page = 0
    state_kind = next((kind for kind in (LINEAR, MAMBA) if kind in counts), None)
    if state_kind is not None:
        state = state_bytes(text, state_kind, tp, model_dtype_bytes(config, limits.dtype))
        if attention_token:
            block = BLOCK_SIZE * _cdiv(state, BLOCK_SIZE * attention_token)
            state_page = block * attention_token  # the state padded to the attention page
        else:
            state_page = state
    # one KV-cache group per kind and per ``group`` layers of it (the rarest kind's count)
    group = min(counts.values()) if limits.hybrid_kv_cache_manager else max(counts.values())
    shares: list[KvShare] = []
    for kind in (FULL, MLA, SLIDING, LINEAR, MAMBA):
        if kind not in counts:
            continue
        held_layers = _cdiv(counts[kind], group) * group if len(counts) > 1 else counts[kind]
        if kind in (FULL, MLA):
            per_layer = _cdiv(max_model_len, block) * block * attention_token
        elif kind == SLIDING:
            window = _int(text, "sliding_window")
            tokens = min(window - 1 + limits.max_num_batched_tokens, max_model_len)
            per_layer = (_cdiv(tokens, block) + 1) * block * attention_token
        else:
            per_layer = state_page
        shares.append(KvShare(kind, counts[kind], held_layers * per_layer))
    return tuple(shares)


# --- weights ---------------------------------------------------------------------------------


def _layer_index(name: str) -> int | None:
    found = _LAYER_INDEX.search(name)
    return int(found.group(1)) if found else None


def _is_mtp(name: str, text: Mapping[str, Any]) -> bool:
    """A multi-token-prediction tensor: Qwen3-Next's ``mtp.*``, or a layer past
    ``num_hidden_layers`` in a model that declares ``num_nextn_predict_layers``."""
    if name.startswith("mtp.") or ".mtp." in name:
        return True
    if not text.get("num_nextn_predict_layers"):
        return False
    index = _layer_index(name)
    return index is not None and index >= _int(text, "num_hidden_layers")


def _is_vision(name: str) -> bool:
    return name.startswith(VISION_PREFIXES)


def _quant_method(text: Mapping[str, Any]) -> str | None:
    quant = text.get("quantization_config")
    if isinstance(quant, Mapping):
        method = quant.get("quant_method")
        return str(method) if method is not None else None
    return None


def mxfp4_expert_bytes(text: Mapping[str, Any], tp: int, gpu_model: str) -> int:
    """One GPU's MXFP4 expert weights of the whole model as vLLM allocates them
    (``Mxfp4MoEMethod.create_weights``): the intermediate size per GPU rounded up to 64 on the
    Triton kernels of Hopper and later (whose biases become float32 after loading), to 128 (and
    the hidden size to 256) on Marlin below."""
    experts = _int(text, "num_local_experts")
    hidden = _int(text, "hidden_size")
    intermediate = _int(text, "intermediate_size") // tp
    if GPU_MODELS[gpu_model].compute_capability >= (9, 0):
        inter, hid, bias = _round_up(intermediate, 64), hidden, 4
    else:
        inter, hid, bias = _round_up(intermediate, 128), _round_up(hidden, 256), 2
    block = 32  # MXFP4 scale block
    gate_up = 2 * inter * (hid // 2 + hid // block + bias)  # weights, scales, bias
    down = hid * (inter // 2 + inter // block + bias)
    return _int(text, "num_hidden_layers") * experts * (gate_up + down)


@dataclass
class _LoadRules:
    """How vLLM treats each checkpoint tensor as it loads, and what that changed (bytes)."""

    text: Mapping[str, Any]
    speculative: bool
    skip_vision: bool
    mxfp4: bool
    downcast: bool
    online_fp8: bool
    skipped: dict[str, int] = field(default_factory=dict)

    def held(self, name: str, dtype: str | None, shape: tuple[int, ...] | None, size: int) -> int:
        """Bytes vLLM holds for one tensor (before the tensor-parallel split); 0 if not loaded."""
        if not self.speculative and _is_mtp(name, self.text):
            return self._skip("multi-token-prediction layers not loaded", size)
        if self.skip_vision and _is_vision(name):
            return self._skip("vision tower not loaded in text-only mode", size)
        if self.mxfp4 and ".mlp.experts." in name:
            return 0  # allocated padded, see mxfp4_expert_bytes
        if self.downcast and dtype == "F32":
            size //= 2
            self._skip("float32 tensors held in 16 bit, saving", size)
        if self.online_fp8 and _quantizable(name, shape, dtype):
            quantized = math.prod(shape or ())
            self._skip("linear layers quantized to FP8 as they load, saving", size - quantized)
            size = quantized
        return size

    def _skip(self, reason: str, size: int) -> int:
        self.skipped[reason] = self.skipped.get(reason, 0) + size
        return 0


def held_weight_bytes(
    facts: ModelFacts, config: Mapping[str, Any], limits: EngineLimits, tp: int, gpu_model: str
) -> tuple[int, tuple[str, ...]]:
    """One GPU's share of the weights as vLLM holds them, and notes on what differs from disk."""
    text = text_config(config)
    tensors = facts.tensors
    if not tensors or any(t.bytes is None for t in tensors.values()):
        if facts.tensor_bytes <= 0:
            raise SizingInputError(
                "the manifest has no tensor bytes (no safetensors files or index were published)"
            )
        return _cdiv(facts.tensor_bytes, tp), (
            "tensor sizes from the index total: no per-tensor adjustments",
        )
    architectures = text.get("architectures") or config.get("architectures") or []
    rules = _LoadRules(
        text=text,
        speculative=limits.speculative,
        skip_vision=limits.language_model_only
        and bool(set(architectures) & SKIPS_VISION_WHEN_TEXT_ONLY),
        mxfp4=_quant_method(text) == "mxfp4",
        downcast=checkpoint_dtype(config) == "float32"
        and limits.dtype in ("auto", "bfloat16", "float16", "half"),
        # --quantization fp8 on an unquantized checkpoint: every linear layer's weight is held
        # in FP8 (``layers/quantization/fp8.py`` ``Fp8LinearMethod``/``Fp8MoEMethod``);
        # embeddings, the output head and norms keep their dtype
        online_fp8=limits.quantization == "fp8" and _quant_method(text) is None,
    )
    kv_split = tp
    if not _is_mla(text):
        heads = _int(text, "num_attention_heads")
        kv_split = min(tp, _int(text, "num_key_value_heads", heads))
    per_gpu = 0.0
    for name, tensor in tensors.items():
        size = rules.held(name, tensor.dtype, tensor.shape, tensor.bytes or 0)
        per_gpu += size / _split(name, tensor.shape, tp, kv_split)
    weights = math.ceil(per_gpu)
    notes = [f"{reason} {_gib(size)}" for reason, size in rules.skipped.items() if size]
    if rules.mxfp4:
        weights += mxfp4_expert_bytes(text, tp, gpu_model)
        notes.append("MXFP4 experts as the kernel pads them")
    if limits.cpu_offload_bytes:
        offloaded = min(weights, limits.cpu_offload_bytes)
        weights -= offloaded  # CacheConfig.cpu_offload_gb: per GPU, kept in host memory
        notes.append(f"weights offloaded to host memory per GPU {_gib(offloaded)}")
    return weights, tuple(notes)


def _quantizable(name: str, shape: tuple[int, ...] | None, dtype: str | None) -> bool:
    """A decoder layer's linear weight in 16 or 32 bit, which online FP8 quantization holds in
    one byte per element."""
    return (
        shape is not None
        and len(shape) >= 2
        and dtype in ("BF16", "F16", "F32")
        and ".layers." in f".{name}"
        and name.endswith(".weight")
        and "norm" not in name
        and ".gate.weight" not in name
    )


def _split(name: str, shape: tuple[int, ...] | None, tp: int, kv_split: int) -> int:
    """Across how many GPUs a tensor is divided: norms are replicated; K and V projections are
    split over at most the KV heads (``QKVParallelLinear`` keeps ``max(1, kv_heads // tp)``
    heads per GPU); everything else over all of them."""
    if shape is not None and len(shape) <= 1 and "norm" in name:
        return 1
    if any(part in name for part in _REPLICATED):
        return 1
    if ".k_proj." in name or ".v_proj." in name:
        return kv_split
    return tp


# --- activations -----------------------------------------------------------------------------


def activation_bytes(config: Mapping[str, Any], limits: EngineLimits, tp: int) -> int:
    """Estimate of vLLM's profiled torch peak on one GPU: the larger of the forward pass over
    ``max_num_batched_tokens`` tokens and the sampler over ``max_num_seqs`` sequences."""
    text = text_config(config)
    dtype_bytes = model_dtype_bytes(config, limits.dtype)
    tokens = limits.max_num_batched_tokens
    hidden = _int(text, "hidden_size")
    heads = _int(text, "num_attention_heads")
    if _is_mla(text):
        nope = _int(text, "qk_nope_head_dim")
        rope = _int(text, "qk_rope_head_dim")
        v_dim = _int(text, "v_head_dim")
        attention = tokens * (heads // tp or 1) * (2 * nope + rope + v_dim) * dtype_bytes
    else:
        kv_heads = _int(text, "num_key_value_heads", heads)
        width = (max(1, heads // tp) + 2 * max(1, kv_heads // tp)) * _head_dim(text)
        attention = tokens * width * dtype_bytes
    experts_per_token = text.get("num_experts_per_tok") or 0
    mlp = 0
    if isinstance(text.get("intermediate_size"), int) and text.get("first_k_dense_replace", 1):
        mlp = tokens * 3 * (_int(text, "intermediate_size") // tp) * dtype_bytes
    if isinstance(experts_per_token, int) and experts_per_token > 0:
        expert_width = text.get("moe_intermediate_size") or _int(text, "intermediate_size")
        chunk = min(tokens, FUSED_MOE_CHUNK_TOKENS)
        routed = chunk * experts_per_token * (3 * (int(expert_width) // tp) + hidden)
        shared = tokens * 3 * int(text.get("n_shared_experts") or 0) * int(expert_width) // tp
        shared += tokens * 3 * int(text.get("shared_expert_intermediate_size") or 0) // tp
        mlp = max(mlp, (routed + shared) * dtype_bytes)
    if not mlp:
        raise SizingInputError("config.json: intermediate_size is missing; expected an integer")
    forward = tokens * HIDDEN_COPIES * hidden * dtype_bytes + attention + mlp
    vocab = _int(text, "vocab_size")
    sampler = limits.max_num_seqs * vocab * SAMPLER_BYTES_PER_LOGIT
    return max(forward, tokens * hidden * dtype_bytes + sampler)


def context_bytes(tp: int) -> int:
    """The CUDA context (and NCCL's buffers under tensor parallelism) on one GPU."""
    return CONTEXT_BYTES_TP1 if tp == 1 else CONTEXT_BYTES_TP


# --- sizing ----------------------------------------------------------------------------------


def size_model(model: ModelSpec, facts: ModelFacts, gpu_model: str) -> ModelSizing:
    """One replica of ``model`` on ``gpusPerReplica`` GPUs of ``gpu_model``, per GPU."""
    if facts.config is None:
        raise SizingInputError("the manifest carries no config.json; publish the model with it")
    config: Mapping[str, Any] = facts.config
    try:
        limits = engine_limits(model, gpu_model)
    except EngineArgsError as exc:
        raise SizingInputError(str(exc)) from exc
    tp = model.gpus_per_replica
    max_len = limits.max_model_len or default_max_model_len(config)
    weights, notes = held_weight_bytes(facts, config, limits, tp, gpu_model)
    return ModelSizing(
        model=model.name,
        gpu_model=gpu_model,
        gpus=tp,
        max_model_len=max_len,
        sequences=model.target_concurrency,
        limits=limits,
        weight_bytes=weights,
        kv=kv_shares(config, limits, tp, max_len),
        activation_bytes=activation_bytes(config, limits, tp),
        non_torch_bytes=NON_TORCH_BYTES,
        context_bytes=context_bytes(tp),
        graph_bytes=0 if "--enforce-eager" in model.args else CUDA_GRAPH_BYTES,
        usable_bytes=GPU_MODELS[gpu_model].usable_bytes,
        notes=notes,
    )


def _eligible_gpu_models(config: StackConfig, model: ModelSpec) -> list[str]:
    """GPU models of the hosts a replica could land on, smallest usable memory first."""
    found = {
        host.gpu.model
        for host in config.hosts
        if host.gpu.model is not None and StackConfig.host_fits(host, model)
    }
    return sorted(found, key=lambda name: (GPU_MODELS[name].usable_bytes, name))


def size_stack(config: StackConfig, facts: Mapping[str, ModelFacts | Manifest]) -> SizingReport:
    """Size every model of the stack for which ``facts`` (keyed by model name) has an entry.

    A model is refused (a :class:`Problem`) when one replica does not fit the smallest GPU it may
    be scheduled on, and warned about when it uses less than half of what that replica is given.
    Models without facts are listed in ``unsized``: sizing needs their manifest.
    """
    report = SizingReport()
    for i, model in enumerate(config.inference.models):
        path = f"inference.models[{i}]"
        entry = facts.get(model.name)
        if entry is None:
            report.unsized.append(model.name)
            continue
        model_facts = ModelFacts.of(entry) if isinstance(entry, Manifest) else entry
        gpu_models = _eligible_gpu_models(config, model)
        if not gpu_models:
            continue  # the config boundary already reports a model no host can run
        try:
            sizing = size_model(model, model_facts, gpu_models[0])
        except SizingInputError as exc:
            report.unsizable.append(model.name)
            report.problems.append(Problem(path, f"cannot size {model.name}: {exc}"))
            continue
        report.models.append(sizing)
        if not sizing.fits:
            report.not_fitting.append(model.name)
            report.problems.append(Problem(f"{path}.gpusPerReplica", _refusal(sizing)))
        elif sizing.limits.max_num_seqs < sizing.sequences:
            report.warnings.append(
                Problem(
                    f"{path}.args",
                    f"{model.name}: --max-num-seqs {sizing.limits.max_num_seqs} runs fewer "
                    f"sequences than targetConcurrency {sizing.sequences}; the rest wait in "
                    "vLLM's queue",
                )
            )
        elif not sizing.graphs_fit:
            report.warnings.append(
                Problem(
                    f"{path}.args",
                    f"{model.name}: --gpu-memory-utilization "
                    f"{sizing.limits.gpu_memory_utilization} leaves "
                    f"{_gib(sizing.slack_bytes)} of each {sizing.gpu_model} beside vLLM's "
                    f"budget; the CUDA context and CUDA graphs need about "
                    f"{_gib(sizing.context_bytes + sizing.graph_bytes)} there (add "
                    "--enforce-eager or lower it)",
                )
            )
        elif sizing.used_fraction < WARN_BELOW_FRACTION:
            smallest = _fewest_gpus_that_fit(model, model_facts, sizing.gpu_model)
            hint = f"; {smallest} GPU(s) would hold it" if smallest < sizing.gpus else ""
            report.warnings.append(
                Problem(
                    f"{path}.gpusPerReplica",
                    f"{model.name} uses {_gib(sizing.needed_bytes)} of the "
                    f"{_gib(sizing.usable_bytes)} of each of its {sizing.gpus} x "
                    f"{sizing.gpu_model} ({sizing.used_fraction:.0%}, under half){hint}",
                )
            )
    return report


def _refusal(sizing: ModelSizing) -> str:
    limits = sizing.limits
    if not sizing.starts:
        return (
            f"{sizing.model}: --gpu-memory-utilization {limits.gpu_memory_utilization} leaves "
            f"{_gib(sizing.slack_bytes)} of each {sizing.gpu_model} outside vLLM's budget, but "
            f"the CUDA context{' and NCCL' if sizing.gpus > 1 else ''} take about "
            f"{_gib(sizing.context_bytes)} there before vLLM starts; lower it"
        )
    return (
        f"{sizing.model} needs {_gib(sizing.needed_bytes)} on each of its {sizing.gpus} x "
        f"{sizing.gpu_model} (weights {_gib(sizing.weight_bytes)}, KV cache "
        f"{_gib(sizing.kv_bytes)} for {sizing.sequences} sequences of {sizing.max_model_len} "
        f"tokens, activations {_gib(sizing.activation_bytes)}, non-torch "
        f"{_gib(sizing.non_torch_bytes)}) but vLLM may use {_gib(sizing.budget_bytes)} of each "
        f"({limits.gpu_memory_utilization:.0%} of {_gib(sizing.usable_bytes)}); "
        f"{sizing.sequences_that_fit} sequences fit. Add GPUs, lower maxModelLen or "
        "targetConcurrency, or quantize the KV cache (--kv-cache-dtype fp8)"
    )


def _fewest_gpus_that_fit(model: ModelSpec, facts: ModelFacts, gpu_model: str) -> int:
    for gpus in range(1, model.gpus_per_replica + 1):
        trial = model.model_copy(update={"gpus_per_replica": gpus})
        if size_model(trial, facts, gpu_model).fits:
            return gpus
    return model.gpus_per_replica


# --- host memory -----------------------------------------------------------------------------

# The CPU buffer each Run:ai streamer allocates (bytes), passed to vLLM as ``memory_limit``. The
# streamer refuses a limit below the checkpoint's largest tensor; 8 GiB holds an embedding of a
# 262144-token vocabulary x 16384 hidden in bfloat16 (twice Llama 3.1 405B's 128256 x 16384) while
# an 8-GPU replica's buffers stay at 64 GiB instead of the 160 GB the 20 GB default would take.
STREAMER_MEMORY_LIMIT_BYTES: Final = 8 * GIB
# /dev/shm: vLLM's workers exchange scheduler outputs through shared-memory queues and NCCL falls
# back to shared memory between GPUs without peer-to-peer access; both are small next to this.
SHM_BYTES: Final = 2 * GIB
SERVER_PROCESS_BYTES: Final = 6 * GIB  # API server, engine core, tokenizer
GPU_WORKER_PROCESS_BYTES: Final = 4 * GIB  # per tensor-parallel worker
# CPUs: the API server and the engine core's scheduling loop each keep a core busy under load, and
# every GPU worker launches kernels from its own busy thread.
SERVER_CPUS: Final = 2
CPUS_PER_GPU_WORKER: Final = 1


@dataclass(frozen=True)
class ReplicaHostMemory:
    """What one replica holds in host memory (bytes), by part."""

    gpus: int
    streamer_bytes_per_worker: int
    shm_bytes: int
    process_bytes: int

    @property
    def streamer_bytes(self) -> int:
        return self.gpus * self.streamer_bytes_per_worker

    @property
    def total_bytes(self) -> int:
        return self.streamer_bytes + self.shm_bytes + self.process_bytes

    def as_dict(self) -> dict[str, JsonValue]:
        """The ``hostMemory`` entry of ``sovereign size --json`` (bytes)."""
        return {
            "totalBytes": self.total_bytes,
            "streamerBytes": self.streamer_bytes,
            "streamerBytesPerWorker": self.streamer_bytes_per_worker,
            "workers": self.gpus,
            "shmBytes": self.shm_bytes,
            "processBytes": self.process_bytes,
        }

    def line(self, model: str) -> str:
        """One line for ``sovereign size``: the request and what it is made of."""
        return (
            f"{model:<24} host memory {_gib(self.total_bytes)} per replica"
            f" (streamer {self.gpus} x {_gib(self.streamer_bytes_per_worker)},"
            f" /dev/shm {_gib(self.shm_bytes)}, processes {_gib(self.process_bytes)})"
        )


def replica_host_memory(gpus: int, weight_bytes: int) -> ReplicaHostMemory:
    """Host memory one replica of ``gpus`` workers needs to load and serve ``weight_bytes``.

    ``weight_bytes`` is the checkpoint's tensor bytes, or an upper bound of them (the plan, which
    sees no manifest, passes the GPU memory of a replica): a streamer's buffer is never larger
    than what it reads."""
    if gpus < 1 or weight_bytes < 1:
        raise ValueError(f"gpus {gpus} and weight_bytes {weight_bytes}: expected positive")
    return ReplicaHostMemory(
        gpus=gpus,
        streamer_bytes_per_worker=min(STREAMER_MEMORY_LIMIT_BYTES, weight_bytes),
        shm_bytes=SHM_BYTES,
        process_bytes=SERVER_PROCESS_BYTES + gpus * GPU_WORKER_PROCESS_BYTES,
    )


def replica_cpus(gpus: int) -> int:
    """CPUs one replica of ``gpus`` tensor-parallel workers requests."""
    return SERVER_CPUS + gpus * CPUS_PER_GPU_WORKER
