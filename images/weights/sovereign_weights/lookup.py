"""Finding a revision's manifest: in the object store, or in a workstation's local copy.

A revision is immutable once published, so a manifest read once can be kept locally
(``<manifest cache>/<model>/<revision>.json``, see :func:`layout.local_manifest_path`) and used
offline afterwards: ``sovereign validate`` and the Pulumi program's preview size models from it
without touching the network.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sovereign_weights.errors import WeightsError
from sovereign_weights.layout import ObjectLocation, local_manifest_path
from sovereign_weights.manifest import Manifest, ManifestError
from sovereign_weights.store import error_code

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def fetch_manifest(client: S3Client, location: ObjectLocation, revision: str) -> Manifest:
    """The published manifest of ``revision``; a :class:`WeightsError` saying what is wrong."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

    key = location.manifest_key(revision)
    uri = f"s3://{location.bucket}/{key}"
    try:
        body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = error_code(exc)
        if code in {"NoSuchKey", "404"}:
            raise WeightsError(f"no manifest at {uri}; was the revision published?") from exc
        raise WeightsError(f"reading {uri}: {code}") from exc
    except BotoCoreError as exc:
        raise WeightsError(f"reading {uri}: {exc}") from exc
    try:
        manifest = Manifest.from_json(body, source=uri)
    except ManifestError as exc:
        raise WeightsError(str(exc)) from exc
    if manifest.revision != revision:
        raise WeightsError(f"{uri}: manifest is for revision {manifest.revision}, not {revision}")
    return manifest


def read_cached(manifest_cache: Path, model: str, revision: str) -> Manifest | None:
    """The locally kept manifest, or None when there is none (or it is unreadable)."""
    path = local_manifest_path(manifest_cache, model, revision)
    try:
        manifest = Manifest.from_json(path.read_bytes(), source=str(path))
    except (OSError, ManifestError):
        return None
    return manifest if manifest.revision == revision else None


def write_cached(manifest_cache: Path, model: str, manifest: Manifest) -> Path:
    """Keep ``manifest`` locally (written to a temporary file, then renamed into place)."""
    path = local_manifest_path(manifest_cache, model, manifest.revision)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(manifest.to_json())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
