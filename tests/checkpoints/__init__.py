"""Sparse model checkpoints for the sizing tests: real safetensors headers, no tensor data on disk.

A fixture is a directory as Hugging Face publishes it: the model's ``config.json``, safetensors
shards named ``model-0000i-of-0000N.safetensors`` and ``model.safetensors.index.json``. Each shard
starts with a real safetensors header (8-byte little-endian length, then a JSON object giving each
tensor's ``dtype``, ``shape`` and ``data_offsets``, contiguous from 0, padded with spaces to a
multiple of 8 bytes as the reference implementation pads it) and is then extended with
``os.truncate`` to its full length. The data section is a hole: a 140 GB checkpoint costs a few
kilobytes of disk, and only the headers are ever read.

The tensor layouts are generated from each published config by the architecture's naming rules
(``tests/checkpoints/dense.py`` and one module per other architecture), so a checkpoint's total
bytes can be held against the publisher's ``metadata.total_size``.

Usage in a test module::

    from tests.checkpoints import checkpoint

    def test_llama_70b(tmp_path_factory: pytest.TempPathFactory) -> None:
        facts = describe_directory(checkpoint("llama-3.1-70b", tmp_path_factory))
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
from sovereign_weights.manifest import SAFETENSORS_DTYPE_BITS

MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
"""Published ``config.json`` files, one directory per model (see ``tests/data/models/SOURCE.md``)."""

Tensor = tuple[str, str, tuple[int, ...]]
"""One tensor as a checkpoint lists it: name, safetensors dtype (``BF16``, ``I32``...), shape."""

INDEX_NAME = "model.safetensors.index.json"
HEADER_ALIGNMENT = 8  # the reference implementation pads its header to a multiple of 8 bytes


def tensor_bytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of one tensor's data: elements x the dtype's width, as safetensors stores it."""
    bits = SAFETENSORS_DTYPE_BITS[dtype] * math.prod(shape)
    if bits % 8:
        raise ValueError(f"tensor of {dtype} {tuple(shape)}: does not end on a byte boundary")
    return bits // 8


def checkpoint_bytes(tensors: Sequence[Tensor]) -> int:
    """Total tensor bytes of a layout: what the index's ``metadata.total_size`` records."""
    return sum(tensor_bytes(dtype, shape) for _, dtype, shape in tensors)


def _shards(tensors: Sequence[Tensor], shard_bytes: int) -> list[list[Tensor]]:
    # Hugging Face's sharding fills a shard until the next tensor would overflow it.
    shards: list[list[Tensor]] = [[]]
    filled = 0
    for tensor in tensors:
        size = tensor_bytes(tensor[1], tensor[2])
        if shards[-1] and filled + size > shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(tensor)
        filled += size
    return shards


def _header(tensors: Sequence[Tensor]) -> tuple[bytes, int]:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        end = offset + tensor_bytes(dtype, shape)
        entries[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % HEADER_ALIGNMENT)
    return raw, offset


def write_checkpoint(
    directory: Path,
    config: Mapping[str, object],
    tensors: Sequence[Tensor],
    shard_bytes: int = 5 * 10**9,
    extra_files: Mapping[str, str] = {},
) -> None:
    """Write ``config.json``, sparse safetensors shards and the index into ``directory``."""
    names = [name for name, _, _ in tensors]
    if len(set(names)) != len(names):
        raise ValueError("tensors: a tensor name is listed twice")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    shards = _shards(tensors, shard_bytes)
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        header, data_bytes = _header(shard)
        path = directory / file_name
        with path.open("wb") as handle:
            handle.write(struct.pack("<Q", len(header)))
            handle.write(header)
        os.truncate(path, 8 + len(header) + data_bytes)
        weight_map.update((name, file_name) for name, _, _ in shard)
    index = {"metadata": {"total_size": checkpoint_bytes(tensors)}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    for relative, text in extra_files.items():
        (directory / relative).write_text(text, encoding="utf-8")


def published_config(name: str) -> dict[str, object]:
    """The published ``config.json`` kept under ``tests/data/models/<name>/``."""
    parsed = json.loads((MODELS / name / "config.json").read_text(encoding="utf-8"))
    assert isinstance(parsed, dict)
    return parsed


# Fixture builders, by name. Each writes one model's checkpoint into the directory it is given.
# Other architectures register theirs here from their own sibling module.
from tests.checkpoints import dense, gemma3, gpt_oss, hybrid, mla  # noqa: E402

FIXTURES: dict[str, Callable[[Path], None]] = {
    "llama-3.1-8b": dense.llama_3_1_8b,
    "llama-3.1-70b": dense.llama_3_1_70b,
    "llama-3.1-70b-awq": dense.llama_3_1_70b_awq,
    "llama-3-8b-fp8": dense.llama_3_8b_fp8,
    "qwen2.5-32b": dense.qwen2_5_32b,
    "mixtral-8x7b": dense.mixtral_8x7b,
    "mistral-small-24b": dense.mistral_small_24b,
    "deepseek-v2-lite": mla.deepseek_v2_lite,
    "deepseek-v3": mla.deepseek_v3,
    "gemma-3-27b-it": gemma3.gemma_3_27b_it,
    "gpt-oss-20b": gpt_oss.gpt_oss_20b,
    "gpt-oss-120b": gpt_oss.gpt_oss_120b,
    "qwen3-next-80b-a3b": hybrid.qwen3_next_80b_a3b,
}


def checkpoint(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory of fixture ``name``, written once per test session."""
    directory = tmp_path_factory.getbasetemp() / "checkpoints" / name
    if not (directory / INDEX_NAME).is_file():
        FIXTURES[name](directory)
    return directory
