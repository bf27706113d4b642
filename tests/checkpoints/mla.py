"""Checkpoint layouts of the multi-head latent attention models: DeepSeek-V2-Lite and DeepSeek-V3.

Tensor names and shapes follow the published checkpoints (the ``model.safetensors.index.json`` of
deepseek-ai/DeepSeek-V2-Lite and deepseek-ai/DeepSeek-V3, and ``modeling_deepseek.py`` beside
them): each layer holds MLA attention (``q_proj``, or ``q_a_proj``/``q_a_layernorm``/``q_b_proj``
when ``q_lora_rank`` is set, then ``kv_a_proj_with_mqa``, ``kv_a_layernorm``, ``kv_b_proj`` and
``o_proj``); the first ``first_k_dense_replace`` layers carry a dense MLP, the others a mixture of
experts (``mlp.experts.E.{gate,up,down}_proj``, ``mlp.shared_experts``, the router ``mlp.gate``
and, with ``noaux_tc`` routing, its ``e_score_correction_bias``).

DeepSeek-V3 stores every linear weight of its decoder layers in FP8 (``F8_E4M3``) with one float32
``weight_scale_inv`` per 128 x 128 block (``quantization_config.weight_block_size``); embeddings,
norms and the router stay in bfloat16. Its multi-token-prediction module follows the decoder as
``model.layers.{num_hidden_layers}`` (one per ``num_nextn_predict_layers``): a full decoder layer
plus ``embed_tokens``, ``enorm``, ``hnorm``, ``eh_proj`` and ``shared_head``. vLLM loads it only
for speculative decoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.checkpoints import Tensor, published_config, write_checkpoint

BF16 = "BF16"
F32 = "F32"
FP8 = "F8_E4M3"
# DeepSeek-V3 publishes 163 shards of at most about 4.3 GB; the count only shapes the headers.
SHARD_BYTES = 4_300_000_000


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _linear(name: str, out: int, inner: int, block: tuple[int, int] | None) -> list[Tensor]:
    """One linear weight; FP8 with its per-block inverse scales when ``block`` is given."""
    if block is None:
        return [(f"{name}.weight", BF16, (out, inner))]
    scales = (_ceil_div(out, block[0]), _ceil_div(inner, block[1]))
    return [(f"{name}.weight", FP8, (out, inner)), (f"{name}.weight_scale_inv", F32, scales)]


def _block_size(config: Mapping[str, Any]) -> tuple[int, int] | None:
    quantization = config.get("quantization_config")
    if not isinstance(quantization, Mapping) or quantization.get("quant_method") != "fp8":
        return None
    rows, cols = quantization["weight_block_size"]
    return int(rows), int(cols)


def _attention(
    prefix: str, config: Mapping[str, Any], block: tuple[int, int] | None
) -> list[Tensor]:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    nope, rope = config["qk_nope_head_dim"], config["qk_rope_head_dim"]
    kv_rank, q_rank = config["kv_lora_rank"], config["q_lora_rank"]
    tensors: list[Tensor] = []
    if q_rank is None:  # DeepSeek-V2-Lite projects queries directly
        tensors += _linear(f"{prefix}.q_proj", heads * (nope + rope), hidden, block)
    else:
        tensors += _linear(f"{prefix}.q_a_proj", q_rank, hidden, block)
        tensors.append((f"{prefix}.q_a_layernorm.weight", BF16, (q_rank,)))
        tensors += _linear(f"{prefix}.q_b_proj", heads * (nope + rope), q_rank, block)
    tensors += _linear(f"{prefix}.kv_a_proj_with_mqa", kv_rank + rope, hidden, block)
    tensors.append((f"{prefix}.kv_a_layernorm.weight", BF16, (kv_rank,)))
    tensors += _linear(f"{prefix}.kv_b_proj", heads * (nope + config["v_head_dim"]), kv_rank, block)
    tensors += _linear(f"{prefix}.o_proj", hidden, heads * config["v_head_dim"], block)
    return tensors


def _mlp(name: str, inter: int, hidden: int, block: tuple[int, int] | None) -> list[Tensor]:
    return [
        *_linear(f"{name}.gate_proj", inter, hidden, block),
        *_linear(f"{name}.up_proj", inter, hidden, block),
        *_linear(f"{name}.down_proj", hidden, inter, block),
    ]


def _decoder_layer(
    prefix: str, config: Mapping[str, Any], moe: bool, block: tuple[int, int] | None
) -> list[Tensor]:
    hidden = config["hidden_size"]
    tensors: list[Tensor] = [
        (f"{prefix}.input_layernorm.weight", BF16, (hidden,)),
        *_attention(f"{prefix}.self_attn", config, block),
        (f"{prefix}.post_attention_layernorm.weight", BF16, (hidden,)),
    ]
    if not moe:
        return tensors + _mlp(f"{prefix}.mlp", config["intermediate_size"], hidden, block)
    experts, inter = config["n_routed_experts"], config["moe_intermediate_size"]
    tensors.append((f"{prefix}.mlp.gate.weight", BF16, (experts, hidden)))
    if config.get("topk_method") == "noaux_tc":  # DeepSeek-V3's bias-corrected routing
        tensors.append((f"{prefix}.mlp.gate.e_score_correction_bias", F32, (experts,)))
    for expert in range(experts):
        tensors += _mlp(f"{prefix}.mlp.experts.{expert}", inter, hidden, block)
    shared = inter * config["n_shared_experts"]
    return tensors + _mlp(f"{prefix}.mlp.shared_experts", shared, hidden, block)


def mla_layout(config: Mapping[str, Any]) -> list[Tensor]:
    """Every tensor of the DeepSeek-V2/V3 checkpoint ``config`` describes, MTP module included."""
    block = _block_size(config)
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    layers, dense = config["num_hidden_layers"], config["first_k_dense_replace"]
    tensors: list[Tensor] = [("model.embed_tokens.weight", BF16, (vocab, hidden))]
    for index in range(layers):
        tensors += _decoder_layer(f"model.layers.{index}", config, index >= dense, block)
    for index in range(layers, layers + config.get("num_nextn_predict_layers", 0)):
        prefix = f"model.layers.{index}"
        tensors += [
            (f"{prefix}.embed_tokens.weight", BF16, (vocab, hidden)),
            (f"{prefix}.enorm.weight", BF16, (hidden,)),
            (f"{prefix}.hnorm.weight", BF16, (hidden,)),
            (f"{prefix}.eh_proj.weight", BF16, (hidden, 2 * hidden)),
            *_decoder_layer(prefix, config, index >= dense, block),
            (f"{prefix}.shared_head.norm.weight", BF16, (hidden,)),
            (f"{prefix}.shared_head.head.weight", BF16, (vocab, hidden)),
        ]
    tensors.append(("model.norm.weight", BF16, (hidden,)))
    tensors.append(("lm_head.weight", BF16, (vocab, hidden)))
    return tensors


def deepseek_v2_lite(directory: Path) -> None:
    config = published_config("deepseek-v2-lite")
    write_checkpoint(directory, config, mla_layout(config))


def deepseek_v3(directory: Path) -> None:
    config = published_config("deepseek-v3")
    write_checkpoint(directory, config, mla_layout(config), shard_bytes=SHARD_BYTES)
