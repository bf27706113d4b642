"""Checkpoint layouts of gpt-oss-20b and gpt-oss-120b: MXFP4 experts beside bfloat16 attention.

Tensor names and shapes follow the published checkpoints (openai/gpt-oss-20b and -120b,
``model.safetensors.index.json``; transformers 4.56.2 ``modeling_gpt_oss.py`` and
``integrations/mxfp4.py``). Every layer holds attention with biases on q, k, v and o and one
learned ``sinks`` logit per head, a router (``mlp.router.weight`` and ``bias``) and fused experts
quantized to MXFP4 as ``quantization_config`` says (everything else is in
``modules_to_not_convert``):

- ``mlp.experts.gate_up_proj_blocks`` U8 ``[E, 2 x intermediate, hidden / 32, 16]``: 32 FP4 values
  per block, two per byte; ``gate_up_proj_scales`` U8 ``[E, 2 x intermediate, hidden / 32]``: one
  E8M0 exponent per block; ``gate_up_proj_bias`` BF16 ``[E, 2 x intermediate]``;
- ``mlp.experts.down_proj_{blocks,scales,bias}`` likewise over ``[E, hidden, intermediate]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.checkpoints import Tensor, published_config, write_checkpoint

BF16 = "BF16"
U8 = "U8"
MXFP4_BLOCK = 32  # values sharing one scale (OCP Microscaling, MXFP4)
MXFP4_BLOCK_BYTES = MXFP4_BLOCK // 2  # two 4-bit values per byte


def _mxfp4_experts(name: str, experts: int, out: int, inner: int) -> list[Tensor]:
    blocks = inner // MXFP4_BLOCK
    return [
        (f"{name}_blocks", U8, (experts, out, blocks, MXFP4_BLOCK_BYTES)),
        (f"{name}_scales", U8, (experts, out, blocks)),
        (f"{name}_bias", BF16, (experts, out)),
    ]


def gpt_oss_layout(config: Mapping[str, Any]) -> list[Tensor]:
    """Every tensor of the gpt-oss checkpoint ``config`` describes."""
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads, kv_heads, head_dim = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    )
    experts, inter = config["num_local_experts"], config["intermediate_size"]
    tensors: list[Tensor] = [("model.embed_tokens.weight", BF16, (vocab, hidden))]
    for index in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{index}"
        attn = f"{prefix}.self_attn"
        tensors += [
            (f"{prefix}.input_layernorm.weight", BF16, (hidden,)),
            (f"{attn}.q_proj.weight", BF16, (heads * head_dim, hidden)),
            (f"{attn}.q_proj.bias", BF16, (heads * head_dim,)),
            (f"{attn}.k_proj.weight", BF16, (kv_heads * head_dim, hidden)),
            (f"{attn}.k_proj.bias", BF16, (kv_heads * head_dim,)),
            (f"{attn}.v_proj.weight", BF16, (kv_heads * head_dim, hidden)),
            (f"{attn}.v_proj.bias", BF16, (kv_heads * head_dim,)),
            (f"{attn}.o_proj.weight", BF16, (hidden, heads * head_dim)),
            (f"{attn}.o_proj.bias", BF16, (hidden,)),
            (f"{attn}.sinks", BF16, (heads,)),
            (f"{prefix}.post_attention_layernorm.weight", BF16, (hidden,)),
            (f"{prefix}.mlp.router.weight", BF16, (experts, hidden)),
            (f"{prefix}.mlp.router.bias", BF16, (experts,)),
            *_mxfp4_experts(f"{prefix}.mlp.experts.gate_up_proj", experts, 2 * inter, hidden),
            *_mxfp4_experts(f"{prefix}.mlp.experts.down_proj", experts, hidden, inter),
        ]
    tensors.append(("model.norm.weight", BF16, (hidden,)))
    tensors.append(("lm_head.weight", BF16, (vocab, hidden)))
    return tensors


def gpt_oss_20b(directory: Path) -> None:
    config = published_config("gpt-oss-20b")
    write_checkpoint(directory, config, gpt_oss_layout(config))


def gpt_oss_120b(directory: Path) -> None:
    config = published_config("gpt-oss-120b")
    write_checkpoint(directory, config, gpt_oss_layout(config))
