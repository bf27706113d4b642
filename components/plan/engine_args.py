"""The vLLM engine arguments that decide how a replica spends GPU memory, read from a model's
``args`` where it gives them and otherwise the values the plan passes or vLLM defaults to.

One home for them, so that sizing (:mod:`components.plan.sizing`) judges the engine the model pod
actually starts: a model's ``--gpu-memory-utilization 0.95`` raises the budget it is sized
against, ``--kv-cache-dtype fp8`` halves its KV cache, and the plan passes ``--max-num-seqs`` (the
model's ``targetConcurrency``) so that vLLM's memory profile runs the batch the sizing assumed.

Defaults are vLLM v0.11.0's (the release the stacks pin):

- ``--gpu-memory-utilization`` 0.9 (``vllm/config/cache.py``, ``CacheConfig.gpu_memory_utilization``);
- ``--max-num-batched-tokens`` for the OpenAI server: 8192 on GPUs with at least 70 GiB that are
  not A100s, else 2048 (``vllm/engine/arg_utils.py``, ``EngineArgs._set_default_args``);
- ``--kv-cache-dtype`` and ``--dtype`` ``auto``.

Argument syntax follows vLLM's ``FlexibleArgumentParser`` (``vllm/utils/__init__.py``):
``--name value`` or ``--name=value``, with ``_`` and ``-`` interchangeable in the name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sovereign_weights.units import GIB, MIB

from components.config.catalog import GPU_MODELS
from components.config.models import ModelSpec

DEFAULT_GPU_MEMORY_UTILIZATION: Final = 0.9
# EngineArgs._set_default_args, UsageContext.OPENAI_API_SERVER
LARGE_GPU_BATCHED_TOKENS: Final = 8192
SMALL_GPU_BATCHED_TOKENS: Final = 2048
LARGE_GPU_MIN_BYTES: Final = 70 * GIB

MAX_NUM_SEQS: Final = "--max-num-seqs"


class EngineArgsError(ValueError):
    """A model argument sizing reads that does not hold what vLLM accepts."""


@dataclass(frozen=True)
class EngineLimits:
    """The vLLM engine arguments sizing depends on."""

    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None
    kv_cache_dtype: str
    dtype: str
    language_model_only: bool
    speculative: bool
    max_num_seqs_given: bool
    hybrid_kv_cache_manager: bool = True
    quantization: str | None = None  # --quantization: weights quantized as they load
    cpu_offload_bytes: int = 0  # --cpu-offload-gb: weights kept in host memory, per GPU
    kv_cache_memory_bytes: int | None = None  # --kv-cache-memory-bytes: KV size, no profiling


def given_args(args: Sequence[str]) -> dict[str, str | None]:
    """``--name`` -> value (None for a bare flag), names normalised to dashes; the last wins."""
    found: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--"):
            continue
        name, sep, value = token.partition("=")
        name = "--" + name[2:].replace("_", "-")
        if sep:
            found[name] = value
        elif i < len(args) and not args[i].startswith("--"):
            found[name] = args[i]
            i += 1
        else:
            found[name] = None
    return found


def _number(given: dict[str, str | None], name: str, path: str) -> float | None:
    if name not in given:
        return None
    raw = given[name]
    try:
        return float(raw) if raw is not None else float("nan")
    except ValueError:
        raise EngineArgsError(f"{path}: {name} {raw!r}: expected a number") from None


_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kmgKMG])")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9}
_BINARY = {"K": 2**10, "M": MIB, "G": GIB}


def _positive_int(given: dict[str, str | None], name: str, path: str) -> int | None:
    """A count as vLLM's ``human_readable_int`` reads it (``arg_utils.py``): ``32k`` is 32000,
    ``32K`` is 32768."""
    raw = given.get(name)
    found = _HUMAN_INT.fullmatch(raw.strip()) if raw else None
    if found is not None:
        number, suffix = found.groups()
        if suffix in _BINARY and "." in number:
            raise EngineArgsError(f"{path}: {name} {raw!r}: no decimals with a binary suffix")
        scaled = float(number) * (_DECIMAL.get(suffix) or _BINARY[suffix])
        return int(scaled)
    value = _number(given, name, path)
    if value is None:
        return None
    if math.isnan(value) or value < 1 or value != int(value):
        raise EngineArgsError(f"{path}: {name} {given[name]!r}: expected a positive integer")
    return int(value)


def _limits_all_zero(raw: str | None) -> bool:
    """``--limit-mm-per-prompt`` gives 0 images, and 0 items of every other modality it names
    (JSON or k=v,...): vision towers are built on the image limit, which defaults to 999."""
    if not raw:
        return False
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        parsed = {}
        for part in raw.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                return False
            parsed[key.strip()] = value.strip()
    if not isinstance(parsed, dict) or "image" not in parsed:
        return False
    return all(str(value).strip() in {"0", "0.0"} for value in parsed.values())


def default_batched_tokens(gpu_model: str) -> int:
    """vLLM's default ``max_num_batched_tokens`` for its OpenAI server on ``gpu_model``."""
    gpu = GPU_MODELS[gpu_model]
    large = gpu.usable_bytes >= LARGE_GPU_MIN_BYTES and not gpu.name.startswith("A100")
    return LARGE_GPU_BATCHED_TOKENS if large else SMALL_GPU_BATCHED_TOKENS


def engine_limits(model: ModelSpec, gpu_model: str, path: str = "args") -> EngineLimits:
    """What vLLM will run ``model`` with on ``gpu_model``: its ``args`` first, then the plan's.

    ``path`` names the model's ``args`` in errors (e.g. ``inference.models[1].args``)."""
    given = given_args(model.args)
    utilization = _number(given, "--gpu-memory-utilization", path)
    if utilization is not None and not 0 < utilization <= 1:
        raise EngineArgsError(
            f"{path}: --gpu-memory-utilization {given['--gpu-memory-utilization']!r}: "
            "expected a fraction in (0, 1]"
        )
    max_num_seqs = _positive_int(given, MAX_NUM_SEQS, path)
    batched = _positive_int(given, "--max-num-batched-tokens", path)
    max_model_len = _positive_int(given, "--max-model-len", path)
    offload = _number(given, "--cpu-offload-gb", path)
    if offload is not None and not offload >= 0:
        raise EngineArgsError(
            f"{path}: --cpu-offload-gb {given['--cpu-offload-gb']!r}: expected >= 0"
        )
    return EngineLimits(
        gpu_memory_utilization=(
            DEFAULT_GPU_MEMORY_UTILIZATION if utilization is None else utilization
        ),
        max_num_seqs=max_num_seqs or model.target_concurrency,
        max_num_batched_tokens=batched or default_batched_tokens(gpu_model),
        max_model_len=max_model_len or model.max_model_len,
        kv_cache_dtype=given.get("--kv-cache-dtype") or "auto",
        dtype=given.get("--dtype") or "auto",
        language_model_only=_limits_all_zero(given.get("--limit-mm-per-prompt")),
        speculative=given.get("--speculative-config") is not None,
        max_num_seqs_given=max_num_seqs is not None,
        hybrid_kv_cache_manager="--disable-hybrid-kv-cache-manager" not in given,
        quantization=given.get("--quantization") or None,
        cpu_offload_bytes=int((offload or 0) * GIB),
        kv_cache_memory_bytes=_positive_int(given, "--kv-cache-memory-bytes", path),
    )


def planned_engine_args(model: ModelSpec) -> list[str]:
    """Arguments the plan adds to vLLM's so that its profile matches the sizing: the number of
    sequences a replica was sized for, unless the model's own ``args`` set it."""
    if MAX_NUM_SEQS in given_args(model.args):
        return []
    return [MAX_NUM_SEQS, str(model.target_concurrency)]
