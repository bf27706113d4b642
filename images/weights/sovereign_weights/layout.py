"""Where weights live: object keys in the store and directories in a node's cache.

The one home of both layouts. The warmer, the publisher, the inference stack (which mounts the
cache into vLLM pods) and the sizing CLI (which caches manifests locally) all import it.

Object store, for ``--uri s3://BUCKET/PREFIX --revision REV``::

    s3://BUCKET/PREFIX/REV/<relative path of each file>
    s3://BUCKET/PREFIX/REV/sovereign-manifest.json

Node cache, for ``--cache DIR --model NAME --revision REV``::

    DIR/NAME/REV/                    complete, verified copy only (made by one atomic rename)
    DIR/NAME/REV/sovereign-manifest.json
    DIR/NAME/.REV.partial/           the copy being fetched: ``<file>.part`` (with its
                                     ``<file>.part.progress``) then ``<file>`` once verified
    DIR/NAME/.REV.lock               flock(2) held by the warmer that fetches this revision
    DIR/NAME/.REV.compile/sha256-HEX/
                                     the serving image's compile caches (torch inductor, triton,
                                     vLLM's torch.compile) for this revision, one directory per
                                     image digest, owned by the server's user; evicted with REV

Entries whose names start with a dot are never revisions, so listing ``DIR/NAME`` is enough to
tell what is complete. Pure and stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

MANIFEST_NAME = "sovereign-manifest.json"
PART_SUFFIX = ".part"
PROGRESS_SUFFIX = ".part.progress"
PARTIAL_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"
COMPILE_SUFFIX = ".compile"
# Written at the cache filesystem's root by the host's cache step once it has mounted it, never by
# this tool: a cache directory without it is a bare mount point (the array missing at boot, the
# mount skipped by nofail), whose writes would land on the root disk.
CACHE_FILESYSTEM_MARKER = ".sovereign-cache-filesystem"

# A model name or a revision becomes one path segment and one key segment.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
# An OCI image digest as a pinned reference ends: ``...@sha256:<64 hex>``.
_IMAGE_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class LayoutError(ValueError):
    """A name, revision, URI or file path that cannot be placed in the layout."""


def check_segment(value: str, what: str) -> str:
    """``value`` if it is usable as one path segment, else a :class:`LayoutError` naming ``what``."""
    if not _SEGMENT.match(value):
        raise LayoutError(
            f"{what} {value!r}: expected 1-128 of [A-Za-z0-9._-], not starting with '.' or '-'"
        )
    return value


@dataclass(frozen=True)
class ObjectLocation:
    """``s3://bucket/prefix`` split into its bucket and its key prefix (no slashes at the ends)."""

    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def revision_prefix(self, revision: str) -> str:
        """The key prefix, ending in ``/``, under which ``revision``'s objects live."""
        check_segment(revision, "revision")
        return f"{self.prefix}/{revision}/" if self.prefix else f"{revision}/"

    def object_key(self, revision: str, relative_path: str) -> str:
        """The key of one file of the model, from its path relative to the model directory."""
        return self.revision_prefix(revision) + check_relative_path(relative_path)

    def manifest_key(self, revision: str) -> str:
        return self.revision_prefix(revision) + MANIFEST_NAME


def parse_object_uri(uri: str) -> ObjectLocation:
    """``s3://BUCKET/PREFIX`` as an :class:`ObjectLocation`; a clear error for anything else."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise LayoutError(f"uri {uri!r}: expected s3://BUCKET/PREFIX")
    prefix = parts.path.strip("/")
    if prefix and any(seg in {"", ".", ".."} for seg in prefix.split("/")):
        raise LayoutError(f"uri {uri!r}: the prefix has an empty, '.' or '..' segment")
    return ObjectLocation(bucket=parts.netloc, prefix=prefix)


def default_model_name(uri: str) -> str:
    """The model name used when none is given: the last segment of the URI's prefix."""
    location = parse_object_uri(uri)
    if not location.prefix:
        raise LayoutError(f"uri {uri!r} has no prefix to name the model after; pass --model NAME")
    return check_segment(location.prefix.rsplit("/", 1)[-1], "model name (from the uri)")


def check_relative_path(relative_path: str) -> str:
    """A file path inside a model directory: relative, POSIX, no '.', '..' or empty segments."""
    path = PurePosixPath(relative_path)
    if (
        not relative_path
        or path.is_absolute()
        or relative_path.endswith("/")
        or "\\" in relative_path
        or any(part in {".", ".."} for part in relative_path.split("/"))
        or "" in relative_path.split("/")
    ):
        raise LayoutError(f"file path {relative_path!r}: expected a relative path inside the model")
    if path.name == MANIFEST_NAME or path.name.endswith((PART_SUFFIX, PROGRESS_SUFFIX)):
        raise LayoutError(f"file path {relative_path!r}: the name is reserved by the cache layout")
    return relative_path


@dataclass(frozen=True)
class CachePaths:
    """The paths of one model revision in a node cache."""

    cache: Path
    model: str
    revision: str

    def __post_init__(self) -> None:
        check_segment(self.model, "model name")
        check_segment(self.revision, "revision")

    @property
    def model_dir(self) -> Path:
        return self.cache / self.model

    @property
    def complete_dir(self) -> Path:
        """Exists only once every file verified; vLLM is pointed here."""
        return self.model_dir / self.revision

    @property
    def partial_dir(self) -> Path:
        return self.model_dir / f".{self.revision}{PARTIAL_SUFFIX}"

    @property
    def lock_file(self) -> Path:
        return self.model_dir / f".{self.revision}{LOCK_SUFFIX}"

    @property
    def manifest_file(self) -> Path:
        return self.complete_dir / MANIFEST_NAME

    @property
    def compile_root(self) -> Path:
        """Every compile cache of this revision: removed when the revision is evicted."""
        return self.model_dir / f".{self.revision}{COMPILE_SUFFIX}"

    def compile_dir(self, image_digest: str) -> Path:
        """The compile caches one serving image (``sha256:<hex>``) builds for this revision.

        Compiled kernels depend on the model's shapes and on the exact torch, triton and vLLM of
        the image, so the directory is keyed by both and a new image starts from an empty one."""
        if not _IMAGE_DIGEST.match(image_digest):
            raise LayoutError(f"image digest {image_digest!r}: expected sha256:<64 hex digits>")
        return self.compile_root / image_digest.replace(":", "-")

    def partial_file(self, relative_path: str) -> Path:
        """A file that has been fully fetched and verified, waiting for the final rename."""
        return self.partial_dir / check_relative_path(relative_path)

    def part_file(self, relative_path: str) -> Path:
        """A file being fetched: ranged writes land here until it is complete and verified."""
        return self.partial_dir / (check_relative_path(relative_path) + PART_SUFFIX)

    def progress_file(self, relative_path: str) -> Path:
        """How far each ranged part of :meth:`part_file` got: one little-endian u64 per part."""
        return self.partial_dir / (check_relative_path(relative_path) + PROGRESS_SUFFIX)


def complete_revisions(cache: Path, model: str) -> list[str]:
    """Revisions of ``model`` that are complete in ``cache`` (sorted), from the layout alone."""
    model_dir = cache / check_segment(model, "model name")
    if not model_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in model_dir.iterdir()
        if not entry.name.startswith(".") and entry.is_dir() and _SEGMENT.match(entry.name)
    )


def local_manifest_path(manifest_cache: Path, model: str, revision: str) -> Path:
    """Where a workstation keeps a copy of a manifest it read (``sovereign size``, ``validate``)."""
    check_segment(model, "model name")
    check_segment(revision, "revision")
    return manifest_cache / model / f"{revision}.json"
