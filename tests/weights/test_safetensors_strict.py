"""Safetensors headers are read as strictly as the reference implementation reads them, and every
tensor's name, dtype, shape and bytes reach the model's facts and its manifest.

Each test writes a real file: the 8-byte little-endian header length, the JSON header, then the
data section. The rules held here are those of safetensors 0.8.0's ``tensor.rs``
(``tests/data/safetensors-0.8.0/``): sorted by ``data_offsets``, the tensors tile the data section
exactly, and each holds ``prod(shape)`` elements of its dtype.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest
from sovereign_weights.manifest import (
    SAFETENSORS_DTYPE_BITS,
    Manifest,
    ManifestError,
    ModelFacts,
    TensorFact,
    build_manifest,
    describe_directory,
    read_safetensors_header,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "safetensors-0.8.0"


def write_raw(path: Path, header: Mapping[str, object], data_bytes: int) -> Path:
    """A safetensors file with exactly this header and ``data_bytes`` bytes after it."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data_bytes))
    return path


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def test_dtype_widths_are_the_reference_implementations() -> None:
    text = (REFERENCE / "tensor-validate.rs.txt").read_text()
    bitsize = text[text.index("pub fn bitsize") :]
    arms = dict(re.findall(r"Dtype::(\w+) => (\d+),", bitsize))
    assert {name: int(bits) for name, bits in arms.items()} == SAFETENSORS_DTYPE_BITS
    # every variant of the enum has a width, so no dtype the reference knows is refused here
    enum = text[text.index("pub enum Dtype {") : text.index("impl Dtype {")]
    variants = re.findall(r"^    ([A-Z][A-Z0-9_]*),$", enum, flags=re.MULTILINE)
    assert sorted(variants) == sorted(SAFETENSORS_DTYPE_BITS)


def test_overlapping_offsets_name_the_file_and_both_tensors(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "model.safetensors",
        {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)},
        data_bytes=24,
    )
    with pytest.raises(ManifestError, match=r"model\.safetensors: tensors 'a' and 'b' overlap"):
        read_safetensors_header(path)


def test_a_gap_between_tensors_is_refused_with_its_byte_range(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "model.safetensors",
        {"a": entry("BF16", [4], 0, 8), "b": entry("BF16", [4], 12, 20)},
        data_bytes=20,
    )
    with pytest.raises(
        ManifestError, match=r"data bytes \[8, 12\) after 'a', before 'b', belong to no tensor"
    ):
        read_safetensors_header(path)


def test_bytes_before_the_first_tensor_are_refused(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "m.safetensors", {"a": entry("U8", [4], 4, 8)}, data_bytes=8)
    with pytest.raises(ManifestError, match=r"data bytes \[0, 4\) at the start, before 'a'"):
        read_safetensors_header(path)


def test_bytes_after_the_last_tensor_are_refused(tmp_path: Path) -> None:
    # the reference's MetadataIncompleteBuffer: the last tensor must end at the end of the file
    path = write_raw(tmp_path / "m.safetensors", {"a": entry("U8", [4], 0, 4)}, data_bytes=10)
    with pytest.raises(ManifestError, match=r"data bytes \[4, 10\) after 'a', at the end"):
        read_safetensors_header(path)


def test_a_short_file_is_refused_naming_the_tensor_past_its_end(tmp_path: Path) -> None:
    path = write_raw(
        tmp_path / "model-00001-of-00002.safetensors",
        {"a": entry("F16", [8], 0, 16), "b": entry("F16", [8], 16, 32)},
        data_bytes=32,
    )
    with path.open("r+b") as handle:  # cut the file short, as an interrupted copy would
        handle.truncate(path.stat().st_size - 5)
    with pytest.raises(
        ManifestError,
        match=r"model-00001-of-00002\.safetensors: tensor 'b' ends at data byte 32, but the "
        r"file holds 27 data bytes",
    ):
        read_safetensors_header(path)


def test_offsets_that_do_not_hold_the_shape_are_refused(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "m.safetensors", {"w": entry("BF16", [2, 3], 0, 8)}, data_bytes=8)
    with pytest.raises(
        ManifestError,
        match=r"tensor 'w': data_offsets \[0, 8\] hold 8 bytes, but shape \[2, 3\] of BF16 "
        r"takes 12",
    ):
        read_safetensors_header(path)


def test_a_sub_byte_tensor_must_end_on_a_byte_boundary(tmp_path: Path) -> None:
    # three F4 values are 12 bits: the reference refuses them (MisalignedSlice)
    path = write_raw(tmp_path / "m.safetensors", {"w": entry("F4", [3], 0, 2)}, data_bytes=2)
    with pytest.raises(ManifestError, match=r"3 elements of F4 take 12 bits"):
        read_safetensors_header(path)


def test_an_unknown_dtype_is_refused_listing_the_dtypes_expected(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "m.safetensors", {"w": entry("F12", [1], 0, 2)}, data_bytes=2)
    with pytest.raises(ManifestError, match=r"dtype 'F12' is not a safetensors dtype") as caught:
        read_safetensors_header(path)
    assert all(dtype in str(caught.value) for dtype in SAFETENSORS_DTYPE_BITS)


@pytest.mark.parametrize(
    ("field", "value"),
    [("shape", [-1]), ("shape", "4"), ("data_offsets", [0]), ("data_offsets", [8, 0])],
)
def test_a_malformed_shape_or_offsets_is_refused_naming_the_field(
    tmp_path: Path, field: str, value: object
) -> None:
    tensor = entry("U8", [8], 0, 8)
    tensor[field] = value
    path = write_raw(tmp_path / "m.safetensors", {"w": tensor}, data_bytes=8)
    with pytest.raises(ManifestError, match=rf"tensor 'w': {field} "):
        read_safetensors_header(path)


def test_metadata_other_than_strings_is_refused(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": "pt", "step": 3}, "w": entry("U8", [1], 0, 1)}
    path = write_raw(tmp_path / "m.safetensors", header, data_bytes=1)
    with pytest.raises(ManifestError, match=r"__metadata__: expected an object of strings"):
        read_safetensors_header(path)


def write_multi_dtype(path: Path) -> Path:
    """Tensors of seven dtypes, listed in the header out of offset order (as older writers did),
    with an empty tensor between two others."""
    header: dict[str, object] = {
        "__metadata__": {"format": "pt"},
        "lm_head.weight": entry("BF16", [8, 4], 144, 208),
        "model.embed_tokens.weight": entry("BF16", [8, 4], 0, 64),
        "model.layers.0.mlp.experts.gate_up_proj_blocks": entry("U8", [2, 4, 2], 64, 80),
        "model.layers.0.mlp.experts.gate_up_proj_scales": entry("F8_E8M0", [2, 4], 80, 88),
        "model.layers.0.self_attn.q_proj.weight": entry("F8_E4M3", [4, 8], 88, 120),
        "model.layers.0.self_attn.q_proj.weight_scale_inv": entry("F32", [1, 1], 120, 124),
        "model.layers.0.self_attn.q_proj.input_scale": entry("F32", [0], 124, 124),
        "model.layers.0.mlp.router.packed": entry("F4", [8], 124, 128),
        "model.norm.steps": entry("I64", [2], 128, 144),
    }
    return write_raw(path, header, data_bytes=208)


def test_a_valid_multi_dtype_file_is_read_back_with_every_name(tmp_path: Path) -> None:
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["GptOssForCausalLM"]}')
    write_multi_dtype(model / "model.safetensors")
    facts = describe_directory(model)
    assert facts.tensor_source == "safetensors-headers"
    assert facts.tensor_bytes == 208
    assert facts.tensor_dtypes == {
        "BF16": 128,
        "F32": 4,
        "F4": 4,
        "F8_E4M3": 32,
        "F8_E8M0": 8,
        "I64": 16,
        "U8": 16,
    }
    assert len(facts.tensors) == 9
    assert facts.tensors["model.layers.0.self_attn.q_proj.weight"] == TensorFact(
        dtype="F8_E4M3", shape=(4, 8), bytes=32
    )
    assert facts.tensors["model.layers.0.self_attn.q_proj.input_scale"] == TensorFact(
        dtype="F32", shape=(0,), bytes=0
    )
    # the published manifest carries the names in the project's camelCase JSON, and reads back
    manifest = build_manifest(model, "tiny", "r1")
    assert manifest.tensors == facts.tensors
    document = json.loads(manifest.to_json())
    assert document["tensors"]["lm_head.weight"] == {"dtype": "BF16", "shape": [8, 4], "bytes": 64}
    assert Manifest.from_json(manifest.to_json()) == manifest
    assert ModelFacts.of(manifest) == facts


def test_a_second_copy_of_a_tensor_counts_its_bytes_and_keeps_its_name_once(
    tmp_path: Path,
) -> None:
    # without an index both files are published and streamed: the bytes are read twice
    model = tmp_path / "twice"
    model.mkdir()
    for name in ("consolidated.safetensors", "model-00001-of-00001.safetensors"):
        write_raw(model / name, {"lm_head.weight": entry("U8", [4], 0, 4)}, data_bytes=4)
    facts = describe_directory(model)
    assert facts.tensor_bytes == 8
    assert facts.tensors == {"lm_head.weight": TensorFact(dtype="U8", shape=(4,), bytes=4)}


def test_a_tensor_two_files_give_different_shapes_is_refused_naming_both(tmp_path: Path) -> None:
    model = tmp_path / "clash"
    model.mkdir()
    write_raw(model / "a.safetensors", {"w": entry("U8", [4], 0, 4)}, data_bytes=4)
    write_raw(model / "b.safetensors", {"w": entry("U8", [2, 4], 0, 8)}, data_bytes=8)
    with pytest.raises(
        ManifestError,
        match=r"b\.safetensors: tensor 'w' is U8 \[2, 4\], but a\.safetensors holds it as U8 \[4\]",
    ):
        describe_directory(model)


def test_an_index_alone_gives_tensor_names_without_shapes(tmp_path: Path) -> None:
    model = tmp_path / "index-only"
    model.mkdir()
    (model / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": 1000},
                "weight_map": {
                    "model.layers.61.eh_proj.weight": "model-00002-of-00002.safetensors",
                    "lm_head.weight": "model-00001-of-00002.safetensors",
                },
            }
        )
    )
    facts = describe_directory(model)
    assert facts.tensor_source == "safetensors-index"
    assert facts.tensor_bytes == 1000
    assert facts.tensors == {
        "lm_head.weight": TensorFact(),
        "model.layers.61.eh_proj.weight": TensorFact(),
    }


def test_a_manifest_written_before_tensor_names_still_parses() -> None:
    text = json.dumps(
        {
            "schemaVersion": 1,
            "model": "m",
            "revision": "r1",
            "files": [{"path": "model.safetensors", "size": 24, "sha256": "0" * 64}],
            "config": None,
            "tensorBytes": 16,
            "tensorDtypes": {"BF16": 16},
            "tensorSource": "safetensors-headers",
        }
    )
    manifest = Manifest.from_json(text)
    assert manifest.tensors == {}
    assert ModelFacts.of(manifest).tensor_bytes == 16


def test_a_tensor_fact_is_all_header_fields_or_a_name_only() -> None:
    with pytest.raises(ValueError, match="dtype, shape and bytes are given together"):
        TensorFact(dtype="BF16")
