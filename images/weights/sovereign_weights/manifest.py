"""The manifest of a published model revision, and how it is built from a model directory.

A manifest sits beside the model's objects (see :mod:`sovereign_weights.layout`). It lists every
file with its size and sha256, so the warmer can verify what it fetched, and carries the facts the
sizing rule needs (the parsed ``config.json``, total tensor bytes and their dtypes), so a model can
be sized from its manifest alone, without its weights.

Tensor bytes come from the safetensors headers of the files themselves (8-byte little-endian
header length, then a JSON object mapping each tensor to ``dtype``, ``shape`` and
``data_offsets``). A directory without weight files but with ``model.safetensors.index.json`` (as
published beside every sharded Hugging Face checkpoint) is described from the index's
``metadata.total_size`` instead.

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
# The safetensors reference implementation refuses headers above 100 MB (N_MAX in its
# ``tensor.rs``); so does this reader, so a corrupt length cannot make it allocate gigabytes.
SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
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
    tensor_source: Literal["safetensors-headers", "safetensors-index", "none"] = "none"

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
    """What sizing reads from a model directory or a manifest: config and tensor bytes."""

    config: dict[str, JsonValue] | None
    tensor_bytes: int
    tensor_dtypes: dict[str, int]
    tensor_source: Literal["safetensors-headers", "safetensors-index", "none"]

    @classmethod
    def of(cls, manifest: Manifest) -> ModelFacts:
        return cls(
            config=manifest.config,
            tensor_bytes=manifest.tensor_bytes,
            tensor_dtypes=manifest.tensor_dtypes,
            tensor_source=manifest.tensor_source,
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
    """One tensor in a safetensors header: its dtype and byte range in the data section."""

    dtype: str
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors listed in a safetensors file's header (``__metadata__`` left out).

    Reads only the header. Checks what sizing relies on: each entry has a dtype and a
    ``data_offsets`` pair inside the file's data section.
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
    data_bytes = size - 8 - length
    tensors: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        match offsets:
            case [int(begin), int(end)] if (
                isinstance(dtype, str) and 0 <= begin <= end <= data_bytes
            ):
                tensors[name] = TensorEntry(dtype=dtype, begin=begin, end=end)
            case _:
                raise ManifestError(
                    f"{path.name}: tensor {name!r}: expected dtype and data_offsets "
                    f"[begin, end] within the {data_bytes} data bytes"
                )
    return tensors


def safetensors_bytes(path: Path) -> dict[str, int]:
    """Bytes of tensor data per dtype in one safetensors file."""
    by_dtype: dict[str, int] = {}
    for entry in read_safetensors_header(path).values():
        by_dtype[entry.dtype] = by_dtype.get(entry.dtype, 0) + entry.nbytes
    return by_dtype


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


def _index_total_size(directory: Path) -> int | None:
    path = directory / SAFETENSORS_INDEX_NAME
    if not path.is_file():
        return None
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
        total = parsed["metadata"]["total_size"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ManifestError(
            f"{SAFETENSORS_INDEX_NAME}: expected metadata.total_size (bytes): {exc}"
        ) from exc
    if not isinstance(total, int) or total < 0:
        raise ManifestError(f"{SAFETENSORS_INDEX_NAME}: metadata.total_size must be bytes (int)")
    return total


def describe_directory(directory: Path, weight_set: WeightSet | None = None) -> ModelFacts:
    """Sizing facts of a local model directory, from headers (or the index), without hashing.

    ``weight_set`` is the selection being published; by default, the one
    :func:`select_weight_set` makes. A directory with an index and no weight files at all (the
    index alone, for sizing) is described from the index's ``metadata.total_size``.
    """
    relatives = model_files(directory)
    if weight_set is None and any(rel.endswith(SAFETENSORS_SUFFIX) for rel in relatives):
        weight_set = select_weight_set(directory, relatives)
    kept = weight_set.files if weight_set is not None else relatives
    weights = [directory / rel for rel in kept if rel.endswith(SAFETENSORS_SUFFIX)]
    config = _read_config(directory)
    if weights:
        by_dtype: dict[str, int] = {}
        for path in weights:
            for dtype, count in safetensors_bytes(path).items():
                by_dtype[dtype] = by_dtype.get(dtype, 0) + count
        return ModelFacts(
            config=config,
            tensor_bytes=sum(by_dtype.values()),
            tensor_dtypes=dict(sorted(by_dtype.items())),
            tensor_source="safetensors-headers",
        )
    total = _index_total_size(directory)
    if total is not None:
        return ModelFacts(
            config=config, tensor_bytes=total, tensor_dtypes={}, tensor_source="safetensors-index"
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
