"""Checkpoint layout of Qwen3-Next-80B-A3B: Gated DeltaNet layers, full attention every fourth.

Tensor names follow the published checkpoint (Qwen/Qwen3-Next-80B-A3B-Instruct,
``model.safetensors.index.json``) and transformers' ``modeling_qwen3_next.py``. Layer ``i`` is full
attention when ``(i + 1) % full_attention_interval == 0`` and a Gated DeltaNet (``linear_attn``)
layer otherwise:

- ``linear_attn.in_proj_qkvz`` ``[2 x key_dim + 2 x value_dim, hidden]``, ``in_proj_ba``
  ``[2 x value_heads, hidden]``, ``conv1d`` ``[2 x key_dim + value_dim, 1, conv_kernel]``,
  ``dt_bias`` and ``A_log`` ``[value_heads]``, ``norm`` ``[value_head_dim]``, ``out_proj``;
- ``self_attn.q_proj`` twice as wide as the heads (the query and its output gate), ``k_proj``,
  ``v_proj``, ``o_proj``, ``q_norm``, ``k_norm``.

Every layer's MLP is a mixture of ``num_experts`` experts plus one gated shared expert. The
checkpoint also carries one multi-token-prediction layer under ``mtp.`` (``fc``, two pre-norms,
a full-attention MoE layer and a norm), which vLLM skips unless speculative decoding uses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.checkpoints import Tensor, published_config, write_checkpoint

BF16 = "BF16"
F32 = "F32"
MTP_LAYERS = 1  # the published checkpoint's mtp.layers.0


def _moe(prefix: str, config: Mapping[str, Any]) -> list[Tensor]:
    hidden, experts = config["hidden_size"], config["num_experts"]
    inter, shared = config["moe_intermediate_size"], config["shared_expert_intermediate_size"]
    tensors: list[Tensor] = [(f"{prefix}.gate.weight", BF16, (experts, hidden))]
    for expert in range(experts):
        tensors += [
            (f"{prefix}.experts.{expert}.gate_proj.weight", BF16, (inter, hidden)),
            (f"{prefix}.experts.{expert}.up_proj.weight", BF16, (inter, hidden)),
            (f"{prefix}.experts.{expert}.down_proj.weight", BF16, (hidden, inter)),
        ]
    return [
        *tensors,
        (f"{prefix}.shared_expert.gate_proj.weight", BF16, (shared, hidden)),
        (f"{prefix}.shared_expert.up_proj.weight", BF16, (shared, hidden)),
        (f"{prefix}.shared_expert.down_proj.weight", BF16, (hidden, shared)),
        (f"{prefix}.shared_expert_gate.weight", BF16, (1, hidden)),
    ]


def _full_attention(prefix: str, config: Mapping[str, Any]) -> list[Tensor]:
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    return [
        (f"{prefix}.q_proj.weight", BF16, (2 * heads * head_dim, hidden)),
        (f"{prefix}.k_proj.weight", BF16, (kv_heads * head_dim, hidden)),
        (f"{prefix}.v_proj.weight", BF16, (kv_heads * head_dim, hidden)),
        (f"{prefix}.o_proj.weight", BF16, (hidden, heads * head_dim)),
        (f"{prefix}.q_norm.weight", BF16, (head_dim,)),
        (f"{prefix}.k_norm.weight", BF16, (head_dim,)),
    ]


def _gated_deltanet(prefix: str, config: Mapping[str, Any]) -> list[Tensor]:
    hidden = config["hidden_size"]
    key_dim = config["linear_num_key_heads"] * config["linear_key_head_dim"]
    value_heads = config["linear_num_value_heads"]
    value_dim = value_heads * config["linear_value_head_dim"]
    return [
        (f"{prefix}.in_proj_qkvz.weight", BF16, (2 * key_dim + 2 * value_dim, hidden)),
        (f"{prefix}.in_proj_ba.weight", BF16, (2 * value_heads, hidden)),
        (
            f"{prefix}.conv1d.weight",
            BF16,
            (2 * key_dim + value_dim, 1, config["linear_conv_kernel_dim"]),
        ),
        (f"{prefix}.dt_bias", BF16, (value_heads,)),
        (f"{prefix}.A_log", F32, (value_heads,)),
        (f"{prefix}.norm.weight", F32, (config["linear_value_head_dim"],)),
        (f"{prefix}.out_proj.weight", BF16, (hidden, value_dim)),
    ]


def _layer(prefix: str, config: Mapping[str, Any], full: bool) -> list[Tensor]:
    hidden = config["hidden_size"]
    mixer = (
        _full_attention(f"{prefix}.self_attn", config)
        if full
        else _gated_deltanet(f"{prefix}.linear_attn", config)
    )
    return [
        (f"{prefix}.input_layernorm.weight", BF16, (hidden,)),
        *mixer,
        (f"{prefix}.post_attention_layernorm.weight", BF16, (hidden,)),
        *_moe(f"{prefix}.mlp", config),
    ]


def qwen3_next_layout(config: Mapping[str, Any]) -> list[Tensor]:
    """Every tensor of the Qwen3-Next checkpoint ``config`` describes, its MTP layer included."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    interval = config["full_attention_interval"]
    tensors: list[Tensor] = [("model.embed_tokens.weight", BF16, (vocab, hidden))]
    for index in range(config["num_hidden_layers"]):
        tensors += _layer(f"model.layers.{index}", config, (index + 1) % interval == 0)
    tensors += [("model.norm.weight", BF16, (hidden,)), ("lm_head.weight", BF16, (vocab, hidden))]
    tensors += [
        ("mtp.fc.weight", BF16, (hidden, 2 * hidden)),
        ("mtp.pre_fc_norm_embedding.weight", BF16, (hidden,)),
        ("mtp.pre_fc_norm_hidden.weight", BF16, (hidden,)),
    ]
    for index in range(MTP_LAYERS):
        tensors += _layer(f"mtp.layers.{index}", config, full=True)
    tensors.append(("mtp.norm.weight", BF16, (hidden,)))
    return tensors


def qwen3_next_80b_a3b(directory: Path) -> None:
    config = published_config("qwen3-next-80b-a3b")
    write_checkpoint(directory, config, qwen3_next_layout(config))
