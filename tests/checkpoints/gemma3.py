"""Checkpoint layout of Gemma 3 27B (google/gemma-3-27b-it), its published multimodal form.

The published ``config.json`` is ``Gemma3ForConditionalGeneration`` with a sparse ``text_config``:
what it leaves out takes the class defaults of transformers' ``Gemma3TextConfig`` (4.56.2,
``models/gemma3/configuration_gemma3.py``: ``vocab_size=262_208``,
``max_position_embeddings=131_072``, ``sliding_window_pattern=6``). Tensor names follow the
published checkpoint and ``modeling_gemma3.py``:

- ``language_model.model.*``: embeddings (tied: no ``lm_head``), 62 layers with
  ``self_attn.{q,k,v,o}_proj``, ``q_norm``/``k_norm`` and four RMS norms, ``mlp.{gate,up,down}_proj``;
- ``vision_tower.vision_model.*``: the SigLIP encoder (patch and position embeddings, 27 layers with
  biases, ``post_layernorm``);
- ``multi_modal_projector.mm_input_projection_weight`` and ``mm_soft_emb_norm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.checkpoints import Tensor, published_config, write_checkpoint

BF16 = "BF16"
# transformers 4.56.2 Gemma3TextConfig defaults for what the published text_config leaves out
TEXT_DEFAULT_VOCAB_SIZE = 262_208
SIGLIP_CHANNELS = 3


def _text_layers(text: Mapping[str, Any]) -> list[Tensor]:
    hidden, head_dim = text["hidden_size"], text["head_dim"]
    heads, kv_heads, inter = (
        text["num_attention_heads"],
        text["num_key_value_heads"],
        text["intermediate_size"],
    )
    vocab = text.get("vocab_size", TEXT_DEFAULT_VOCAB_SIZE)
    tensors: list[Tensor] = [("language_model.model.embed_tokens.weight", BF16, (vocab, hidden))]
    for index in range(text["num_hidden_layers"]):
        prefix = f"language_model.model.layers.{index}"
        tensors += [
            (f"{prefix}.input_layernorm.weight", BF16, (hidden,)),
            (f"{prefix}.self_attn.q_proj.weight", BF16, (heads * head_dim, hidden)),
            (f"{prefix}.self_attn.k_proj.weight", BF16, (kv_heads * head_dim, hidden)),
            (f"{prefix}.self_attn.v_proj.weight", BF16, (kv_heads * head_dim, hidden)),
            (f"{prefix}.self_attn.o_proj.weight", BF16, (hidden, heads * head_dim)),
            (f"{prefix}.self_attn.q_norm.weight", BF16, (head_dim,)),
            (f"{prefix}.self_attn.k_norm.weight", BF16, (head_dim,)),
            (f"{prefix}.post_attention_layernorm.weight", BF16, (hidden,)),
            (f"{prefix}.pre_feedforward_layernorm.weight", BF16, (hidden,)),
            (f"{prefix}.mlp.gate_proj.weight", BF16, (inter, hidden)),
            (f"{prefix}.mlp.up_proj.weight", BF16, (inter, hidden)),
            (f"{prefix}.mlp.down_proj.weight", BF16, (hidden, inter)),
            (f"{prefix}.post_feedforward_layernorm.weight", BF16, (hidden,)),
        ]
    tensors.append(("language_model.model.norm.weight", BF16, (hidden,)))
    return tensors


def _siglip(vision: Mapping[str, Any]) -> list[Tensor]:
    hidden, inter, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    positions = (vision["image_size"] // patch) ** 2
    model = "vision_tower.vision_model"
    tensors: list[Tensor] = [
        (
            f"{model}.embeddings.patch_embedding.weight",
            BF16,
            (hidden, SIGLIP_CHANNELS, patch, patch),
        ),
        (f"{model}.embeddings.patch_embedding.bias", BF16, (hidden,)),
        (f"{model}.embeddings.position_embedding.weight", BF16, (positions, hidden)),
    ]
    for index in range(vision["num_hidden_layers"]):
        prefix = f"{model}.encoder.layers.{index}"
        for norm in ("layer_norm1", "layer_norm2"):
            tensors += [
                (f"{prefix}.{norm}.weight", BF16, (hidden,)),
                (f"{prefix}.{norm}.bias", BF16, (hidden,)),
            ]
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            tensors += [
                (f"{prefix}.self_attn.{projection}.weight", BF16, (hidden, hidden)),
                (f"{prefix}.self_attn.{projection}.bias", BF16, (hidden,)),
            ]
        tensors += [
            (f"{prefix}.mlp.fc1.weight", BF16, (inter, hidden)),
            (f"{prefix}.mlp.fc1.bias", BF16, (inter,)),
            (f"{prefix}.mlp.fc2.weight", BF16, (hidden, inter)),
            (f"{prefix}.mlp.fc2.bias", BF16, (hidden,)),
        ]
    tensors += [
        (f"{model}.post_layernorm.weight", BF16, (hidden,)),
        (f"{model}.post_layernorm.bias", BF16, (hidden,)),
    ]
    return tensors


def gemma3_layout(config: Mapping[str, Any]) -> list[Tensor]:
    """Every tensor of the Gemma 3 multimodal checkpoint ``config`` describes."""
    text, vision = config["text_config"], config["vision_config"]
    projector = [
        (
            "multi_modal_projector.mm_input_projection_weight",
            BF16,
            (vision["hidden_size"], text["hidden_size"]),
        ),
        ("multi_modal_projector.mm_soft_emb_norm.weight", BF16, (vision["hidden_size"],)),
    ]
    return [*_text_layers(text), *projector, *_siglip(vision)]


def gemma_3_27b_it(directory: Path) -> None:
    config = published_config("gemma-3-27b-it")
    write_checkpoint(directory, config, gemma3_layout(config))
