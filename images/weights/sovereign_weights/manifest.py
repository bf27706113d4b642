"""The manifest of a published model revision, and how it is built from a model directory.

A manifest sits beside the model's objects (see :mod:`sovereign_weights.layout`). It lists every
file with its size and sha256, so the warmer can verify what it fetched, and carries the facts the
sizing rule needs (the parsed ``config.json``, total tensor bytes and their dtypes, each tensor by
name), so a model can be sized from its manifest alone, without its weights.

Tensor bytes come from the safetensors headers of the files themselves (8-byte little-endian
header length, then a JSON object mapping each tensor to ``dtype``, ``shape`` and
``data_offsets``). Headers are read as strictly as the safetensors reference implementation reads
them (``Metadata::validate`` and ``SafeTensors::read_metadata`` in its ``tensor.rs``, 0.8.0; the
excerpt is under ``tests/data/safetensors-0.8.0/``): the tensors' byte ranges tile the data
section exactly, and each range holds ``prod(shape)`` elements of its dtype. A file the
reference implementation would refuse to open is refused here, before it is published or sized.
Each tensor's name, dtype, shape and bytes are kept (:class:`TensorFact`), so sizing can tell the
language model's tensors from a vision tower's or a multi-token-prediction layer's.

A directory without weight files but with ``model.safetensors.index.json`` (as published beside
every sharded Hugging Face checkpoint) is described from the index's ``metadata.total_size``
instead; its tensors are then known by name only (the index's ``weight_map``), without dtype,
shape or bytes.

Some checkpoints ship the same weights twice: a consolidated file (``consolidated.safetensors``,
``model.safetensors``) beside a sharded set listed by ``model.safetensors.index.json``. vLLM's
default loader keeps only the files the index's ``weight_map`` names
(``filter_duplicate_safetensors_files``), but its Run:ai streamer loader, which the serving pods
use, streams every ``*.safetensors`` file at the top of the model directory. So a directory with an
index is published, and described, as the index's set only (:func:`select_weight_set`).
Pydantic and the stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, model_validator
from pydantic.alias_generators import to_camel

from sovereign_weights.layout import MANIFEST_NAME, check_relative_path, check_segment

CONFIG_NAME = "config.json"
SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
# The safetensors reference implementation refuses headers above 100 MB (MAX_HEADER_SIZE in its
# ``tensor.rs``); so does this reader, so a corrupt length cannot make it allocate gigabytes.
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
SAFETENSORS_METADATA_KEY = "__metadata__"
# Bits per element of every dtype the safetensors reference implementation knows (``Dtype`` and
# ``Dtype::bitsize`` in ``tensor.rs``, safetensors 0.8.0). F4 and F6 pack several elements into a
# byte: a tensor of them must end on a byte boundary.
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_HASH_CHUNK_BYTES = 8 * 1024 * 1024

_SHA256_PATTERN = r"^[0-9a-f]{64}$"


class ManifestError(ValueError):
    """A manifest or a model directory that cannot be described or trusted."""


class _Schema(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


class ManifestFile(_Schema):
    """One file of the model, as published."""

    path: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256_PATTERN)

    @model_validator(mode="after")
    def _path_in_layout(self) -> ManifestFile:
        check_relative_path(self.path)
        return self


class TensorFact(_Schema):
    """One tensor of the checkpoint, as its safetensors header gives it.

    Described from an index alone (no weight files at hand), a tensor is known by name only:
    ``dtype``, ``shape`` and ``bytes`` are then all None.
    """

    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    bytes: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _all_or_nothing(self) -> TensorFact:
        given = [self.dtype is not None, self.shape is not None, self.bytes is not None]
        if any(given) and not all(given):
            raise ValueError(
                "dtype, shape and bytes are given together (from a header) or not at all "
                "(a name from an index)"
            )
        return self


TensorSource = Literal["safetensors-headers", "safetensors-index", "none"]


class Manifest(_Schema):
    """What a published revision holds, and what sizing needs to know about it."""

    schema_version: Literal[1] = 1
    model: str
    revision: str
    files: tuple[ManifestFile, ...] = Field(min_length=1)
    config: dict[str, JsonValue] | None = None
    tensor_bytes: int = Field(ge=0)
    tensor_dtypes: dict[str, int] = {}
    """Bytes of tensor data per safetensors dtype (``BF16``, ``F8_E4M3``...)."""
    tensor_source: TensorSource = "none"
    tensors: dict[str, TensorFact] = {}
    """Every tensor by name, once (see :class:`ModelFacts`); empty in manifests written before
    names were kept."""

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        check_segment(self.model, "model")
        check_segment(self.revision, "revision")
        seen: set[str] = set()
        for entry in self.files:
            if entry.path in seen:
                raise ValueError(f"files: {entry.path!r} is listed twice")
            seen.add(entry.path)
        return self

    @property
    def total_bytes(self) -> int:
        """Bytes the files take on disk once fetched (the cache's room check uses this)."""
        return sum(f.size for f in self.files)

    def file(self, path: str) -> ManifestFile:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "manifest") -> Manifest:
        """Parse a manifest; a :class:`ManifestError` naming ``source`` and the bad field."""
        try:
            return cls.model_validate_json(text)
        except ValueError as exc:
            raise ManifestError(f"{source}: not a valid manifest: {_first_error(exc)}") from exc


class ModelFacts(_Schema):
    """What sizing reads from a model directory or a manifest: config, tensor bytes and names."""

    config: dict[str, JsonValue] | None
    tensor_bytes: int
    tensor_dtypes: dict[str, int]
    tensor_source: TensorSource
    tensors: dict[str, TensorFact] = {}
    """Every tensor by name, once. ``tensor_bytes`` and ``tensor_dtypes`` sum every file's
    tensors, so a name held by two files of a directory without an index (both published, both
    streamed) counts twice there and once here. Names only when described from an index; empty
    when unknown."""

    @classmethod
    def of(cls, manifest: Manifest) -> ModelFacts:
        return cls(
            config=manifest.config,
            tensor_bytes=manifest.tensor_bytes,
            tensor_dtypes=manifest.tensor_dtypes,
            tensor_source=manifest.tensor_source,
            tensors=manifest.tensors,
        )

    def manifest(self, model: str, revision: str, files: Sequence[ManifestFile]) -> Manifest:
        """The manifest of ``files`` carrying these facts; pydantic's error when it is invalid."""
        return Manifest(
            model=model,
            revision=revision,
            files=tuple(files),
            config=self.config,
            tensor_bytes=self.tensor_bytes,
            tensor_dtypes=self.tensor_dtypes,
            tensor_source=self.tensor_source,
            tensors=self.tensors,
        )


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(root)"
        return f"{where}: {first.get('msg', exc)}"
    return str(exc)


# --- safetensors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in a safetensors header: its dtype, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def fact(self) -> TensorFact:
        return TensorFact(dtype=self.dtype, shape=self.shape, bytes=self.nbytes)


def _is_count(value: object) -> bool:
    # JSON true/false parse as Python bools, which are ints: the reference reads them as neither
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_entry(file: str, name: str, entry: object) -> TensorEntry:
    """One header entry, checked on its own: a known dtype, a shape, offsets that hold it."""
    if not isinstance(entry, dict):
        raise ManifestError(
            f"{file}: tensor {name!r}: expected an object with dtype, shape and data_offsets"
        )
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPE_BITS:
        raise ManifestError(
            f"{file}: tensor {name!r}: dtype {dtype!r} is not a safetensors dtype (expected one "
            f"of {', '.join(SAFETENSORS_DTYPE_BITS)})"
        )
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise ManifestError(
            f"{file}: tensor {name!r}: shape {shape!r}: expected a list of non-negative integers"
        )
    match offsets:
        case [begin, end] if _is_count(begin) and _is_count(end) and begin <= end:
            pass
        case _:
            raise ManifestError(
                f"{file}: tensor {name!r}: data_offsets {offsets!r}: expected [begin, end] "
                "with 0 <= begin <= end"
            )
    elements = math.prod(shape)
    bits = elements * SAFETENSORS_DTYPE_BITS[str(dtype)]
    if bits % 8:
        raise ManifestError(
            f"{file}: tensor {name!r}: {elements} elements of {dtype} take {bits} bits, which "
            "do not end on a byte boundary"
        )
    if end - begin != bits // 8:
        raise ManifestError(
            f"{file}: tensor {name!r}: data_offsets [{begin}, {end}] hold {end - begin} bytes, "
            f"but shape {shape} of {dtype} takes {bits // 8}"
        )
    return TensorEntry(dtype=str(dtype), shape=tuple(shape), begin=begin, end=end)


def _check_tiling(file: str, tensors: dict[str, TensorEntry], data_bytes: int) -> None:
    """The tensors' byte ranges, sorted by offsets, cover ``[0, data_bytes)`` once each.

    The reference implementation's rule: sorted by ``data_offsets``, each tensor begins where
    the previous one ended (the first at 0), and the last ends at the end of the file.
    """
    previous: str | None = None
    covered = 0
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < covered:
            raise ManifestError(
                f"{file}: tensors {previous!r} and {name!r} overlap: {name!r} begins at byte "
                f"{entry.begin}, before {previous!r} ends at byte {covered}"
            )
        if entry.begin > covered:
            after = f"after {previous!r}" if previous is not None else "at the start"
            raise ManifestError(
                f"{file}: data bytes [{covered}, {entry.begin}) {after}, before {name!r}, "
                "belong to no tensor"
            )
        previous, covered = name, entry.end
    if covered > data_bytes:
        raise ManifestError(
            f"{file}: tensor {previous!r} ends at data byte {covered}, but the file holds "
            f"{data_bytes} data bytes (is it truncated?)"
        )
    if covered < data_bytes:
        after = f"after {previous!r}" if previous is not None else "with no tensors"
        raise ManifestError(
            f"{file}: data bytes [{covered}, {data_bytes}) {after}, at the end of the file, "
            "belong to no tensor"
        )


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors listed in a safetensors file's header (``__metadata__`` left out).

    Reads only the header, and checks it as the safetensors reference implementation does
    before loading (``SafeTensors::read_metadata`` and ``Metadata::validate``, 0.8.0): a
    length prefix within the file, a JSON object whose ``__metadata__`` maps strings to
    strings, known dtypes, byte ranges of ``prod(shape)`` elements each, and ranges that tile
    the data section exactly (no overlap, no gap, nothing left over, nothing missing).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ManifestError(f"{path.name}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", prefix)
        if length > SAFETENSORS_MAX_HEADER_BYTES or 8 + length > size:
            raise ManifestError(
                f"{path.name}: safetensors header length {length} does not fit the file "
                f"({size} bytes)"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path.name}: safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ManifestError(f"{path.name}: safetensors header is not a JSON object")
    metadata = header.get(SAFETENSORS_METADATA_KEY)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise ManifestError(
            f"{path.name}: {SAFETENSORS_METADATA_KEY}: expected an object of strings"
        )
    tensors = {
        name: _tensor_entry(path.name, name, entry)
        for name, entry in header.items()
        if name != SAFETENSORS_METADATA_KEY
    }
    _check_tiling(path.name, tensors, size - 8 - length)
    return tensors


# --- describing a directory ----------------------------------------------------------------


def model_files(directory: Path) -> list[str]:
    """Relative POSIX paths of the files to publish from ``directory``, sorted.

    Hidden entries (``.git``, ``.cache`` of huggingface-cli) are left out; symlinks are followed
    (a Hugging Face snapshot directory is made of links into its blob store).
    """
    if not directory.is_dir():
        raise ManifestError(f"{directory}: not a directory")
    found: list[str] = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            relative = Path(root, name).relative_to(directory).as_posix()
            if name == MANIFEST_NAME:
                raise ManifestError(
                    f"{relative}: a model directory must not contain {MANIFEST_NAME}; it is "
                    "written by publish"
                )
            found.append(check_relative_path(relative))
    if not found:
        raise ManifestError(f"{directory}: no files to publish")
    return sorted(found)


@dataclass(frozen=True)
class WeightSet:
    """The files of a model directory to publish, and the safetensors files left out of them."""

    files: tuple[str, ...]
    left_out: tuple[str, ...] = ()


def _streamed_by_loader(relative: str) -> bool:
    # The Run:ai streamer lists ``<model dir>/*.safetensors``: the top level only.
    return "/" not in relative and relative.endswith(SAFETENSORS_SUFFIX)


def index_weight_files(directory: Path) -> frozenset[str] | None:
    """The files named by the ``weight_map`` of ``model.safetensors.index.json``; None without one."""
    path = directory / SAFETENSORS_INDEX_NAME
    if not path.is_file():
        return None
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(
            f"{SAFETENSORS_INDEX_NAME}: expected weight_map (tensor name -> file): {exc}"
        ) from exc
    if (
        not isinstance(weight_map, dict)
        or not weight_map
        or not all(isinstance(name, str) for name in weight_map.values())
    ):
        raise ManifestError(
            f"{SAFETENSORS_INDEX_NAME}: weight_map must map each tensor name to a file name"
        )
    named: set[str] = set()
    for name in weight_map.values():
        try:
            named.add(check_relative_path(name))
        except ValueError as exc:
            raise ManifestError(f"{SAFETENSORS_INDEX_NAME}: weight_map: {exc}") from exc
    return frozenset(named)


def select_weight_set(directory: Path, relatives: Sequence[str]) -> WeightSet:
    """Which of ``relatives`` (from :func:`model_files`) to publish: vLLM's index rule.

    Without ``model.safetensors.index.json`` every file is kept. With it, every file it names
    must be present, and a top-level ``*.safetensors`` file it does not name (a consolidated copy
    of the same weights) is left out, so the streamer never loads the weights twice.
    """
    named = index_weight_files(directory)
    if named is None:
        return WeightSet(files=tuple(relatives))
    present = set(relatives)
    for name in sorted(named):
        if name not in present:
            raise ManifestError(
                f"{SAFETENSORS_INDEX_NAME}: weight_map names {name}, which is not in {directory}"
            )
    left_out = tuple(r for r in relatives if _streamed_by_loader(r) and r not in named)
    return WeightSet(
        files=tuple(r for r in relatives if r not in left_out),
        left_out=left_out,
    )


def _read_config(directory: Path) -> dict[str, JsonValue] | None:
    path = directory / CONFIG_NAME
    if not path.is_file():
        return None
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{CONFIG_NAME}: not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ManifestError(f"{CONFIG_NAME}: expected a JSON object")
    return parsed


def _read_index(directory: Path) -> dict[str, JsonValue] | None:
    path = directory / SAFETENSORS_INDEX_NAME
    if not path.is_file():
        return None
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{SAFETENSORS_INDEX_NAME}: not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise ManifestError(f"{SAFETENSORS_INDEX_NAME}: expected a JSON object")
    return parsed


def _index_total_size(index: dict[str, JsonValue]) -> int:
    metadata = index.get("metadata")
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise ManifestError(
            f"{SAFETENSORS_INDEX_NAME}: expected metadata.total_size (bytes, an integer), "
            f"got {total!r}"
        )
    return total


def _index_tensor_names(index: dict[str, JsonValue]) -> dict[str, TensorFact]:
    """Tensor names from the index's ``weight_map``, known by name only.

    Sizing needs only ``metadata.total_size`` from an index, so a ``weight_map`` left out (or
    empty) leaves the names unknown rather than failing.
    """
    weight_map = index.get("weight_map", {})
    if not isinstance(weight_map, dict):
        raise ManifestError(
            f"{SAFETENSORS_INDEX_NAME}: weight_map must map each tensor name to a file name"
        )
    return {name: TensorFact() for name in sorted(weight_map)}


def _header_tensors(
    directory: Path, weights: Sequence[str]
) -> tuple[dict[str, TensorFact], dict[str, int]]:
    """Every tensor of ``weights`` (relative paths) by name, and the bytes of every file's
    tensors per dtype.

    Without an index, a directory may hold the same weights twice (a consolidated file beside
    its shards): both are published and streamed, so their bytes count twice, while each name
    is listed once, as the files' first holder gives it. The same name with another dtype or
    shape is no copy but a broken checkpoint, and is refused."""
    tensors: dict[str, TensorFact] = {}
    holder: dict[str, str] = {}
    by_dtype: dict[str, int] = {}
    for relative in weights:
        for name, entry in read_safetensors_header(directory / relative).items():
            by_dtype[entry.dtype] = by_dtype.get(entry.dtype, 0) + entry.nbytes
            fact = entry.fact()
            if name not in tensors:
                tensors[name], holder[name] = fact, relative
            elif tensors[name] != fact:
                raise ManifestError(
                    f"{relative}: tensor {name!r} is {fact.dtype} {list(fact.shape or ())}, but "
                    f"{holder[name]} holds it as {tensors[name].dtype} "
                    f"{list(tensors[name].shape or ())}"
                )
    return dict(sorted(tensors.items())), dict(sorted(by_dtype.items()))


def describe_directory(directory: Path, weight_set: WeightSet | None = None) -> ModelFacts:
    """Sizing facts of a local model directory, from headers (or the index), without hashing.

    ``weight_set`` is the selection being published; by default, the one
    :func:`select_weight_set` makes. A directory with an index and no weight files at all (the
    index alone, for sizing) is described from the index's ``metadata.total_size``, with the
    tensors of its ``weight_map`` known by name only.
    """
    relatives = model_files(directory)
    if weight_set is None and any(rel.endswith(SAFETENSORS_SUFFIX) for rel in relatives):
        weight_set = select_weight_set(directory, relatives)
    kept = weight_set.files if weight_set is not None else relatives
    weights = [rel for rel in kept if rel.endswith(SAFETENSORS_SUFFIX)]
    config = _read_config(directory)
    if weights:
        tensors, by_dtype = _header_tensors(directory, weights)
        return ModelFacts(
            config=config,
            tensor_bytes=sum(by_dtype.values()),
            tensor_dtypes=by_dtype,
            tensor_source="safetensors-headers",
            tensors=tensors,
        )
    index = _read_index(directory)
    if index is not None:
        return ModelFacts(
            config=config,
            tensor_bytes=_index_total_size(index),
            tensor_dtypes={},
            tensor_source="safetensors-index",
            tensors=_index_tensor_names(index),
        )
    return ModelFacts(config=config, tensor_bytes=0, tensor_dtypes={}, tensor_source="none")


def sha256_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in _chunks(handle):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(_HASH_CHUNK_BYTES):
        yield chunk


def build_manifest(
    directory: Path,
    model: str,
    revision: str,
    on_file: Callable[[str, int], None] | None = None,
) -> Manifest:
    """Hash every file of ``directory`` and describe it; ``on_file(path, size)`` after each."""
    weight_set = select_weight_set(directory, model_files(directory))
    facts = describe_directory(directory, weight_set)
    entries: list[ManifestFile] = []
    for relative in weight_set.files:
        path = directory / relative
        entries.append(
            ManifestFile(path=relative, size=path.stat().st_size, sha256=sha256_of(path))
        )
        if on_file is not None:
            on_file(relative, entries[-1].size)
    try:
        return facts.manifest(model, revision, entries)
    except ValueError as exc:
        raise ManifestError(f"{directory}: {_first_error(exc)}") from exc
