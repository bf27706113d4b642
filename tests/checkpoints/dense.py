"""Checkpoint layouts of Llama-family decoders (Llama, Mistral, Qwen2, Mixtral), generated from config.

The names follow the Hugging Face implementations (``modeling_llama.py``, ``modeling_qwen2.py``,
``modeling_mixtral.py`` in transformers 4.56.2): every layer holds ``self_attn.{q,k,v,o}_proj``,
an MLP (``mlp.{gate,up,down}_proj``; Mixtral: ``block_sparse_moe.gate`` and ``experts.E.w{1,2,3}``)
and two RMS norms; the model ends with ``model.norm`` and ``lm_head`` (left out when
``tie_word_embeddings``). Qwen2 adds biases to q, k and v (``Qwen2Attention``: ``bias=True``).

Two quantized forms rewrite the linear layers inside the decoder blocks, as their checkpoints do:

- AWQ (AutoAWQ, GEMM): ``qweight`` I32 ``[in, out / 8]`` (eight 4-bit values per int32),
  ``qzeros`` I32 ``[in / group, out / 8]``, ``scales`` F16 ``[in / group, out]``;
- FP8 (AutoFP8, static activation scheme): ``weight`` F8_E4M3 ``[out, in]`` plus one F32
  ``weight_scale`` and one F32 ``input_scale`` per layer (per-tensor scales).

Embeddings, norms and ``lm_head`` stay in the checkpoint's own dtype in both.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tests.checkpoints import Tensor, published_config, write_checkpoint

TORCH_TO_SAFETENSORS: dict[str, str] = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
AWQ_PACK = 8  # 4-bit values per int32 (32 // bits)


def _int(config: Mapping[str, object], key: str) -> int:
    value = config[key]
    if not isinstance(value, int):
        raise TypeError(f"config.{key}: expected an integer, got {value!r}")
    return value


def _dtype(config: Mapping[str, object]) -> str:
    name = config.get("torch_dtype", config.get("dtype", "bfloat16"))
    return TORCH_TO_SAFETENSORS[str(name)]


def _linear(name: str, out_features: int, in_features: int, dtype: str) -> list[Tensor]:
    return [(f"{name}.weight", dtype, (out_features, in_features))]


def _awq_linear(name: str, out_features: int, in_features: int, group: int) -> list[Tensor]:
    return [
        (f"{name}.qweight", "I32", (in_features, out_features // AWQ_PACK)),
        (f"{name}.qzeros", "I32", (in_features // group, out_features // AWQ_PACK)),
        (f"{name}.scales", "F16", (in_features // group, out_features)),
    ]


def _fp8_linear(name: str, out_features: int, in_features: int) -> list[Tensor]:
    return [
        (f"{name}.weight", "F8_E4M3", (out_features, in_features)),
        (f"{name}.weight_scale", "F32", ()),
        (f"{name}.input_scale", "F32", ()),
    ]


def decoder_layout(config: Mapping[str, object]) -> list[Tensor]:
    """Every tensor of a Llama, Mistral, Qwen2 or Mixtral checkpoint described by ``config``."""
    architecture = str(config.get("architectures", ["LlamaForCausalLM"])[0])  # type: ignore[index]
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = _int(config, "num_key_value_heads")
    head_dim = config.get("head_dim") or hidden // heads
    assert isinstance(head_dim, int)
    intermediate = _int(config, "intermediate_size")
    vocab = _int(config, "vocab_size")
    dtype = _dtype(config)
    quantization = config.get("quantization_config")
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None

    def linear(name: str, out_features: int, in_features: int) -> list[Tensor]:
        if method == "awq":
            assert isinstance(quantization, dict)
            return _awq_linear(name, out_features, in_features, int(quantization["group_size"]))
        if method == "fp8":
            return _fp8_linear(name, out_features, in_features)
        if method is not None:
            raise ValueError(f"quantization_config.quant_method {method!r}: no layout for it")
        return _linear(name, out_features, in_features, dtype)

    tensors: list[Tensor] = [("model.embed_tokens.weight", dtype, (vocab, hidden))]
    for layer in range(_int(config, "num_hidden_layers")):
        prefix = f"model.layers.{layer}"
        attention = f"{prefix}.self_attn"
        tensors += linear(f"{attention}.q_proj", heads * head_dim, hidden)
        tensors += linear(f"{attention}.k_proj", kv_heads * head_dim, hidden)
        tensors += linear(f"{attention}.v_proj", kv_heads * head_dim, hidden)
        if architecture == "Qwen2ForCausalLM":
            tensors += [
                (f"{attention}.q_proj.bias", dtype, (heads * head_dim,)),
                (f"{attention}.k_proj.bias", dtype, (kv_heads * head_dim,)),
                (f"{attention}.v_proj.bias", dtype, (kv_heads * head_dim,)),
            ]
        tensors += linear(f"{attention}.o_proj", hidden, heads * head_dim)
        if architecture == "MixtralForCausalLM":
            moe = f"{prefix}.block_sparse_moe"
            # the router stays unquantized in every published Mixtral checkpoint
            tensors += _linear(f"{moe}.gate", _int(config, "num_local_experts"), hidden, dtype)
            for expert in range(_int(config, "num_local_experts")):
                tensors += linear(f"{moe}.experts.{expert}.w1", intermediate, hidden)
                tensors += linear(f"{moe}.experts.{expert}.w2", hidden, intermediate)
                tensors += linear(f"{moe}.experts.{expert}.w3", intermediate, hidden)
        else:
            tensors += linear(f"{prefix}.mlp.gate_proj", intermediate, hidden)
            tensors += linear(f"{prefix}.mlp.up_proj", intermediate, hidden)
            tensors += linear(f"{prefix}.mlp.down_proj", hidden, intermediate)
        tensors += [
            (f"{prefix}.input_layernorm.weight", dtype, (hidden,)),
            (f"{prefix}.post_attention_layernorm.weight", dtype, (hidden,)),
        ]
    tensors.append(("model.norm.weight", dtype, (hidden,)))
    if not config.get("tie_word_embeddings", False):
        tensors.append(("lm_head.weight", dtype, (vocab, hidden)))
    return tensors


def write_published(name: str, directory: Path) -> None:
    """The checkpoint of ``tests/data/models/<name>``, laid out from its published config."""
    config = published_config(name)
    write_checkpoint(directory, config, decoder_layout(config))


def llama_3_1_8b(directory: Path) -> None:
    write_published("llama-3.1-8b", directory)


def llama_3_1_70b(directory: Path) -> None:
    write_published("llama-3.1-70b", directory)


def llama_3_1_70b_awq(directory: Path) -> None:
    write_published("llama-3.1-70b-awq", directory)


def llama_3_8b_fp8(directory: Path) -> None:
    write_published("llama-3-8b-fp8", directory)


def qwen2_5_32b(directory: Path) -> None:
    write_published("qwen2.5-32b", directory)


def mixtral_8x7b(directory: Path) -> None:
    write_published("mixtral-8x7b-v0.1", directory)


def mistral_small_24b(directory: Path) -> None:
    write_published("mistral-small-24b", directory)
