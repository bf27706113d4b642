"""VRAM sizing: does each model fit the GPUs of one replica, and by how much does it over-provision?

Pure: from the validated stack and each model's manifest facts (``config.json`` and tensor bytes,
see :mod:`sovereign_weights.manifest`) to a :class:`SizingReport`. ``sovereign size``,
``validate`` (with a locally cached manifest) and the Pulumi program at preview call
:func:`size_stack`.

What one replica needs, summed over its ``gpusPerReplica`` GPUs:

- **weights**: the sum of the checkpoint's tensor bytes (safetensors headers or index);
- **KV cache**: ``2 (K and V) x layers x KV heads x head_dim x dtype bytes`` per token (for MLA
  models, ``layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes``, the latent vLLM caches),
  at ``maxModelLen`` tokens for each of ``targetConcurrency`` sequences;
- **activations**: vLLM sizes its KV cache only after a profiling forward pass of
  ``max_num_batched_tokens`` tokens and a sampler pass over ``max_num_seqs`` sequences, and keeps
  that peak reserved. The estimate counts what is large in that pass: the MLP's gate/up output
  and its activated half (``3 x intermediate_size`` values per token, times ``num_experts_per_tok``
  for a mixture of experts) and the sampler's float32 logits (``max_num_seqs x vocab_size``).

What a replica is given: ``gpusPerReplica x`` the GPU's memory (``components.config.catalog``),
of which vLLM uses ``gpu_memory_utilization`` (default 0.9); the rest is left to the CUDA context,
NCCL and other memory outside PyTorch's allocator.

Sources of the constants (no others are used):

- ``gpu_memory_utilization`` 0.9: vLLM engine arguments, ``--gpu-memory-utilization`` ("The
  fraction of GPU memory to be used for the model executor ... default 0.9").
- ``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024: vLLM ``EngineArgs`` batch defaults
  for the OpenAI server on GPUs with at least 70 GiB (``vllm/engine/arg_utils.py``; 2048 and 256
  on smaller GPUs and A100s). The larger pair is used everywhere: it over-estimates on small GPUs.
- dtype bytes: IEEE/bfloat16 widths; vLLM's ``kv_cache_dtype="auto"`` stores the KV cache in the
  model's dtype (``torch_dtype``, or ``dtype`` in newer ``config.json`` files).
- the refusal compares need with the vLLM budget; the warning fires below half of the GPUs'
  memory, the threshold the issue sets ("uses less than half of what it is given").

Not modelled: sliding-window layers (Mistral 7B v0.1 keeps a 4096-token window) are counted at
full length, which over-states their KV cache; CUDA graph memory is left to the 10 % outside the
budget.

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sovereign_weights.manifest import Manifest, ModelFacts

from components.config.catalog import GPU_MODELS
from components.config.errors import Problem
from components.config.models import ModelSpec, StackConfig

GIB = 1024**3
VLLM_GPU_MEMORY_UTILIZATION = 0.9
VLLM_PROFILE_BATCHED_TOKENS = 8192
VLLM_PROFILE_MAX_SEQS = 1024
LOGITS_BYTES = 4  # vLLM's sampler works on float32 logits
MLP_TRANSIENT_WIDTH = 3  # gate/up output (2 x intermediate) and the activated half (1 x)
WARN_BELOW_FRACTION = 0.5

DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float": 4,
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "fp8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


class SizingInputError(ValueError):
    """A config.json that lacks what sizing needs; names the key and what was expected."""


@dataclass(frozen=True)
class ModelSizing:
    """One model's need against what one replica is given (bytes unless named otherwise)."""

    model: str
    gpu_model: str
    gpus: int
    weight_bytes: int
    kv_bytes_per_token: int
    kv_tokens: int
    kv_bytes: int
    activation_bytes: int
    given_bytes: int  # gpus x GPU memory
    budget_bytes: int  # what vLLM may use of it (gpu_memory_utilization)

    @property
    def needed_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes + self.activation_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.needed_bytes

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.budget_bytes

    @property
    def used_fraction(self) -> float:
        return self.needed_bytes / self.given_bytes

    def line(self) -> str:
        """One line for ``sovereign size``: weights, KV cache, needed vs available, headroom."""
        return (
            f"{self.model:<24} {self.gpus} x {self.gpu_model:<18} weights {_gib(self.weight_bytes)}"
            f"  kv {_gib(self.kv_bytes)} ({self.kv_tokens} tok)"
            f"  act {_gib(self.activation_bytes)}  need {_gib(self.needed_bytes)}"
            f" / {_gib(self.budget_bytes)}  headroom {_gib(self.headroom_bytes)}"
            f"  ({100 * self.used_fraction:.0f}% of {_gib(self.given_bytes)})"
        )


@dataclass
class SizingReport:
    models: list[ModelSizing] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    unsized: list[str] = field(default_factory=list)  # models without a manifest at hand

    @property
    def ok(self) -> bool:
        return not self.problems


def _gib(count: int) -> str:
    return f"{count / GIB:.1f} GiB"


# --- reading config.json ---------------------------------------------------------------------


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (multimodal configs nest it as ``text_config``)."""
    nested = config.get("text_config")
    if isinstance(nested, Mapping) and "num_hidden_layers" not in config:
        merged = dict(config)
        merged.update(nested)
        return merged
    return config


def _int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        if default is None and value is None:
            raise SizingInputError(f"config.json: {key} is missing; expected a positive integer")
        raise SizingInputError(f"config.json: {key} is {value!r}; expected a positive integer")
    return value


def model_dtype_bytes(config: Mapping[str, Any]) -> int:
    """Bytes per KV-cache element under vLLM's ``kv_cache_dtype="auto"``: the model's dtype."""
    text = _text_config(config)
    dtype = text.get("torch_dtype") or text.get("dtype") or config.get("torch_dtype")
    if dtype is None:
        raise SizingInputError("config.json: torch_dtype is missing; expected e.g. 'bfloat16'")
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise SizingInputError(
            f"config.json: torch_dtype {dtype!r} unknown; expected one of {', '.join(DTYPE_BYTES)}"
        )
    return DTYPE_BYTES[name]


def kv_bytes_per_token(config: Mapping[str, Any]) -> int:
    """KV-cache bytes one token takes across all layers of the model."""
    text = _text_config(config)
    layers = _int(text, "num_hidden_layers")
    dtype_bytes = model_dtype_bytes(config)
    if "kv_lora_rank" in text:  # multi-head latent attention (DeepSeek V2/V3)
        latent = _int(text, "kv_lora_rank") + _int(text, "qk_rope_head_dim")
        return layers * latent * dtype_bytes
    heads = _int(text, "num_attention_heads")
    kv_heads = _int(text, "num_key_value_heads", heads)
    head_dim = text.get("head_dim") or _int(text, "hidden_size") // heads
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise SizingInputError(
            f"config.json: head_dim is {head_dim!r}; expected a positive integer"
        )
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def activation_bytes(config: Mapping[str, Any]) -> int:
    """Estimate of vLLM's profiled activation peak for one replica (see the module docstring)."""
    text = _text_config(config)
    dtype_bytes = model_dtype_bytes(config)
    experts_per_token = text.get("num_experts_per_tok") or 1
    intermediate = (
        text.get("moe_intermediate_size")
        if text.get("moe_intermediate_size") and experts_per_token > 1
        else text.get("intermediate_size")
    )
    if not isinstance(intermediate, int) or intermediate <= 0:
        raise SizingInputError("config.json: intermediate_size is missing; expected an integer")
    mlp = (
        VLLM_PROFILE_BATCHED_TOKENS
        * MLP_TRANSIENT_WIDTH
        * intermediate
        * int(experts_per_token)
        * dtype_bytes
    )
    logits = VLLM_PROFILE_MAX_SEQS * _int(text, "vocab_size") * LOGITS_BYTES
    return mlp + logits


def default_max_model_len(config: Mapping[str, Any]) -> int:
    """vLLM's default ``max_model_len``: the model's ``max_position_embeddings``."""
    return _int(_text_config(config), "max_position_embeddings")


# --- sizing ----------------------------------------------------------------------------------


def size_model(model: ModelSpec, facts: ModelFacts, gpu_model: str) -> ModelSizing:
    """One replica of ``model`` on ``gpusPerReplica`` GPUs of ``gpu_model``."""
    if facts.config is None:
        raise SizingInputError("the manifest carries no config.json; publish the model with it")
    if facts.tensor_bytes <= 0:
        raise SizingInputError(
            "the manifest has no tensor bytes (no safetensors files or index were published)"
        )
    config: Mapping[str, Any] = facts.config
    max_len = model.max_model_len or default_max_model_len(config)
    tokens = max_len * model.target_concurrency
    per_token = kv_bytes_per_token(config)
    given = model.gpus_per_replica * GPU_MODELS[gpu_model].memory_gib * GIB
    return ModelSizing(
        model=model.name,
        gpu_model=gpu_model,
        gpus=model.gpus_per_replica,
        weight_bytes=facts.tensor_bytes,
        kv_bytes_per_token=per_token,
        kv_tokens=tokens,
        kv_bytes=per_token * tokens,
        activation_bytes=activation_bytes(config),
        given_bytes=given,
        budget_bytes=int(given * VLLM_GPU_MEMORY_UTILIZATION),
    )


def _eligible_gpu_models(config: StackConfig, model: ModelSpec) -> list[str]:
    """GPU models of the hosts a replica could land on, smallest memory first."""
    found = {
        host.gpu.model
        for host in config.hosts
        if host.gpu.model is not None and StackConfig.host_fits(host, model)
    }
    return sorted(found, key=lambda name: (GPU_MODELS[name].memory_gib, name))


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
            report.problems.append(Problem(path, f"cannot size {model.name}: {exc}"))
            continue
        report.models.append(sizing)
        if not sizing.fits:
            report.problems.append(
                Problem(
                    f"{path}.gpusPerReplica",
                    f"{model.name} needs {_gib(sizing.needed_bytes)} per replica (weights "
                    f"{_gib(sizing.weight_bytes)}, KV cache {_gib(sizing.kv_bytes)} for "
                    f"{sizing.kv_tokens} tokens, activations {_gib(sizing.activation_bytes)}) "
                    f"but {sizing.gpus} x {sizing.gpu_model} give vLLM "
                    f"{_gib(sizing.budget_bytes)} ({VLLM_GPU_MEMORY_UTILIZATION:.0%} of "
                    f"{_gib(sizing.given_bytes)}); add GPUs, lower maxModelLen or "
                    "targetConcurrency",
                )
            )
        elif sizing.used_fraction < WARN_BELOW_FRACTION:
            smallest = _fewest_gpus_that_fit(model, model_facts, sizing.gpu_model)
            hint = f"; {smallest} GPU(s) would hold it" if smallest < sizing.gpus else ""
            report.warnings.append(
                Problem(
                    f"{path}.gpusPerReplica",
                    f"{model.name} uses {_gib(sizing.needed_bytes)} of the "
                    f"{_gib(sizing.given_bytes)} its {sizing.gpus} x {sizing.gpu_model} give "
                    f"({sizing.used_fraction:.0%}, under half){hint}",
                )
            )
    return report


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
