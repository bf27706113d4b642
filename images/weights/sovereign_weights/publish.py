"""Publish a local model directory to the object store, resumably, with its manifest.

Each file is hashed once (sha256 for the manifest, MD5 per upload part for S3's ETag), then:

- an object that already has the file's size and expected ETag is skipped;
- a file of one part is sent with one PUT;
- a larger file is sent as a multipart upload; an upload left by an earlier run for the same key
  is resumed: its parts whose ETag equals the local part's MD5 are kept, the others sent again.

Where ``model.safetensors.index.json`` names a sharded set and a consolidated copy of the same
weights sits beside it, only the index's set is published (the rule and why are in
:func:`sovereign_weights.manifest.select_weight_set`), and one ``left-out`` event says which files
stayed behind.

The manifest is written last, so a warmer never sees a revision whose objects are not all there.
A revision is immutable: a manifest already published with other content is never overwritten.

Skipping relies on S3's ETag being the MD5 of a part (of the object for a single PUT; the MD5 of
the parts' MD5s followed by ``-N`` for a multipart upload). Stores that compute it otherwise (for
instance with SSE-KMS) get every part sent again: slower, never wrong.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sovereign_weights.errors import UsageError, WeightsError
from sovereign_weights.layout import ObjectLocation
from sovereign_weights.manifest import (
    SAFETENSORS_INDEX_NAME,
    Manifest,
    ManifestError,
    ManifestFile,
    describe_directory,
    model_files,
    select_weight_set,
)
from sovereign_weights.report import Reporter, human_bytes
from sovereign_weights.store import error_code
from sovereign_weights.units import GIB, MIB

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

# S3's multipart limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000.
S3_MIN_PART_BYTES = 5 * MIB
S3_MAX_PART_BYTES = 5 * GIB
S3_MAX_PARTS = 10_000
_READ_BYTES = 8 * MIB


@dataclass(frozen=True)
class PublishSettings:
    jobs: int = 8
    part_bytes: int = 64 * MIB

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UsageError("--jobs: expected at least 1")
        if not S3_MIN_PART_BYTES <= self.part_bytes <= S3_MAX_PART_BYTES:
            raise UsageError("--part-size: expected 5 MiB to 5 GiB (S3 multipart limits)")


@dataclass(frozen=True)
class LocalFile:
    """One file to publish: its manifest entry and the MD5 of each upload part."""

    entry: ManifestFile
    path: Path
    part_md5: tuple[bytes, ...]

    @property
    def multipart(self) -> bool:
        return len(self.part_md5) > 1

    @property
    def expected_etag(self) -> str:
        if not self.multipart:
            return self.part_md5[0].hex()
        combined = hashlib.md5(b"".join(self.part_md5), usedforsecurity=False).hexdigest()
        return f"{combined}-{len(self.part_md5)}"


@dataclass
class PublishResult:
    manifest: Manifest
    uploaded_bytes: int = 0
    skipped_files: int = 0
    resumed_parts: int = 0
    already_published: bool = False
    left_out: tuple[str, ...] = ()
    """Safetensors files of the directory not published: a second copy of the index's set."""


def hash_file(directory: Path, relative: str, part_bytes: int) -> LocalFile:
    """sha256 of the file and MD5 of each ``part_bytes`` slice, in one read."""
    path = directory / relative
    size = path.stat().st_size
    if -(-size // part_bytes) > S3_MAX_PARTS:
        raise UsageError(
            f"{relative}: {human_bytes(size)} needs more than {S3_MAX_PARTS} parts of "
            f"{human_bytes(part_bytes)}; raise --part-size"
        )
    sha = hashlib.sha256()
    md5s: list[bytes] = []
    with path.open("rb") as handle:
        while True:
            part = hashlib.md5(usedforsecurity=False)
            left = part_bytes
            while left and (chunk := handle.read(min(_READ_BYTES, left))):
                sha.update(chunk)
                part.update(chunk)
                left -= len(chunk)
            if left == part_bytes and md5s:
                break
            md5s.append(part.digest())
            if left:
                break
    entry = ManifestFile(path=relative, size=size, sha256=sha.hexdigest())
    return LocalFile(entry, path, tuple(md5s))


class Publisher:
    def __init__(
        self,
        client: S3Client,
        location: ObjectLocation,
        revision: str,
        model: str,
        settings: PublishSettings,
        reporter: Reporter,
    ) -> None:
        self.client = client
        self.location = location
        self.revision = revision
        self.model = model
        self.settings = settings
        self.reporter = reporter
        self.bucket = location.bucket

    def publish(self, directory: Path) -> PublishResult:
        if not directory.is_dir():
            raise UsageError(f"{directory}: not a directory")
        weight_set = select_weight_set(directory, model_files(directory))
        if weight_set.left_out:
            self.reporter.event(
                "left-out",
                f"left out {', '.join(weight_set.left_out)}: not named by "
                f"{SAFETENSORS_INDEX_NAME}, a second copy of its weights that the streamer "
                "would load as well",
                files=list(weight_set.left_out),
            )
        relatives = weight_set.files
        self.reporter.event(
            "hash", f"hashing {len(relatives)} file(s) in {directory}", files=len(relatives)
        )
        with ThreadPoolExecutor(min(self.settings.jobs, 4), thread_name_prefix="hash") as pool:
            files = list(
                pool.map(lambda rel: hash_file(directory, rel, self.settings.part_bytes), relatives)
            )
        facts = describe_directory(directory, weight_set)
        try:
            manifest = facts.manifest(self.model, self.revision, [f.entry for f in files])
        except ValueError as exc:
            raise ManifestError(f"{directory}: {exc}") from exc
        result = PublishResult(manifest, left_out=weight_set.left_out)
        published = self._published_manifest()
        if published is not None:
            if published.files != manifest.files:
                raise UsageError(
                    f"{self.location.uri} revision {self.revision} is already published with "
                    "other files; revisions are immutable, publish under a new --revision"
                )
            result.already_published = True
        for local in files:
            self._upload(local, result)
        if not result.already_published:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.location.manifest_key(self.revision),
                Body=manifest.to_json().encode(),
                ContentType="application/json",
            )
        return result

    def _published_manifest(self) -> Manifest | None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        key = self.location.manifest_key(self.revision)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if error_code(exc) in {"NoSuchKey", "404"}:
                return None
            raise
        return Manifest.from_json(body, source=f"s3://{self.bucket}/{key}")

    def _remote_etag(self, key: str, size: int) -> str | None:
        from botocore.exceptions import ClientError  # noqa: PLC0415

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise
        if head["ContentLength"] != size:
            return None
        return head["ETag"].strip('"')

    def _upload(self, local: LocalFile, result: PublishResult) -> None:
        key = self.location.object_key(self.revision, local.entry.path)
        if self._remote_etag(key, local.entry.size) == local.expected_etag:
            result.skipped_files += 1
            self.reporter.event(
                "skip", f"{local.entry.path}: already uploaded", file=local.entry.path
            )
            return
        if not local.multipart:
            with local.path.open("rb") as handle:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=handle.read())
            result.uploaded_bytes += local.entry.size
        else:
            self._upload_multipart(key, local, result)
        etag = self._remote_etag(key, local.entry.size)
        if etag != local.expected_etag:
            raise WeightsError(
                f"{local.entry.path}: the store reports ETag {etag}, expected "
                f"{local.expected_etag}; the upload did not land intact"
            )
        self.reporter.event(
            "uploaded",
            f"{local.entry.path}: {human_bytes(local.entry.size)} uploaded",
            file=local.entry.path,
            bytes=local.entry.size,
        )

    def _existing_upload(self, key: str) -> tuple[str | None, dict[int, str]]:
        """The newest unfinished multipart upload of ``key`` and its parts' ETags."""
        uploads = [
            u
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=key
            )
            for u in page.get("Uploads", [])
            if u.get("Key") == key
        ]
        if not uploads:
            return None, {}
        uploads.sort(key=lambda u: u["Initiated"])
        newest = uploads[-1]
        for stale in uploads[:-1]:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=stale["UploadId"]
            )
        parts: dict[int, str] = {}
        for page in self.client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=key, UploadId=newest["UploadId"]
        ):
            for part in page.get("Parts", []):
                parts[part["PartNumber"]] = part["ETag"].strip('"')
        return newest["UploadId"], parts

    def _upload_multipart(self, key: str, local: LocalFile, result: PublishResult) -> None:
        upload_id, existing = self._existing_upload(key)
        if upload_id is None:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        todo = [
            number
            for number, md5 in enumerate(local.part_md5, start=1)
            if existing.get(number) != md5.hex()
        ]
        kept = len(local.part_md5) - len(todo)
        result.resumed_parts += kept
        if kept:
            self.reporter.event(
                "resume",
                f"{local.entry.path}: {kept} of {len(local.part_md5)} part(s) already uploaded",
                file=local.entry.path,
                kept=kept,
            )
        size = local.entry.size
        part_bytes = self.settings.part_bytes

        def send(number: int) -> int:
            offset = (number - 1) * part_bytes
            length = min(part_bytes, size - offset)
            fd = os.open(local.path, os.O_RDONLY)
            try:
                data = os.pread(fd, length, offset)
            finally:
                os.close(fd)
            self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
            )
            return length

        with ThreadPoolExecutor(self.settings.jobs, thread_name_prefix="upload") as pool:
            result.uploaded_bytes += sum(pool.map(send, todo))
        parts: list[CompletedPartTypeDef] = [
            {"PartNumber": n, "ETag": f'"{md5.hex()}"'}
            for n, md5 in enumerate(local.part_md5, start=1)
        ]
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
