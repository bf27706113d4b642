"""The warmer: bring one model revision into the node cache, verified, resumable, once.

``ensure`` is the init container of every vLLM pod and the body of each ``prefetch`` round:

1. a complete revision (``<cache>/<model>/<revision>/``) is used as it is, without a request;
2. otherwise the revision's lock is taken (``flock``), so a second warmer on the node waits and
   then finds the revision complete instead of fetching it again;
3. the manifest is read, the room the missing bytes need is checked (evicting least recently used
   revisions first when allowed), before any weight byte is fetched;
4. every file is fetched as ranged parts in parallel into ``<file>.part``, each part's progress
   recorded in ``<file>.part.progress``, so a killed run resumes where each part stopped;
5. each file is checked against the manifest's size and sha256, refetched whole when it does not
   match, and renamed to its final name once it does;
6. the staging directory is renamed to ``<revision>/`` in one atomic step once all files verify.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sovereign_weights.cache import (
    EvictionRefused,
    clear_abandoned_evictions,
    evict_lru,
    free_bytes,
    require_cache_filesystem,
)
from sovereign_weights.errors import (
    LockTimeout,
    NoRoom,
    UsageError,
    VerificationFailed,
    WeightsError,
)
from sovereign_weights.layout import CachePaths, ObjectLocation
from sovereign_weights.lookup import fetch_manifest
from sovereign_weights.manifest import Manifest, ManifestError, ManifestFile
from sovereign_weights.report import Reporter, human_bytes
from sovereign_weights.store import error_code
from sovereign_weights.units import MIB

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_PROGRESS_MAGIC = b"SWPROG01"
_PROGRESS_HEADER = struct.Struct("<8sQQ")  # magic, file size, part size
_U64 = struct.Struct("<Q")
_HASH_READ_BYTES = 8 * MIB


@dataclass(frozen=True)
class WarmSettings:
    """Tuning of one warmer run; every timeout and retry count lives here."""

    jobs: int = 8
    part_bytes: int = 64 * MIB
    read_chunk_bytes: int = 1 * MIB
    refetches: int = 1  # whole-file refetches after a sha256 or size mismatch
    part_attempts: int = 4  # tries per part on a dropped connection (botocore retries requests)
    retry_backoff_seconds: float = 1.0
    lock_timeout_seconds: float = 3600.0
    lock_poll_seconds: float = 0.5
    evict_lru: bool = False
    # refuse a cache directory that lacks the marker the host's cache step writes on the
    # filesystem it mounts (a bare mount point when the array is missing); off for caches the
    # toolkit did not build, which carry no marker
    require_cache_filesystem: bool = False

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise UsageError("--jobs: expected at least 1")
        if self.part_bytes < MIB:
            raise UsageError("--part-size: expected at least 1 MiB")
        if self.refetches < 0:
            raise UsageError("--refetches: expected 0 or more")


@dataclass(frozen=True)
class Target:
    """One model revision in one object store."""

    model: str
    location: ObjectLocation
    revision: str


@dataclass
class WarmResult:
    model: str
    revision: str
    path: Path
    outcome: str  # "present", "fetched", "fetched-by-other"
    files: int = 0
    total_bytes: int = 0
    fetched_bytes: int = 0
    seconds: float = 0.0
    evicted: list[str] = field(default_factory=list)


# --- the lock ------------------------------------------------------------------------------


@contextmanager
def revision_lock(
    lock_file: Path, settings: WarmSettings, reporter: Reporter, what: str
) -> Iterator[None]:
    """Hold ``flock`` on ``lock_file``; the kernel drops it if this process dies."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + settings.lock_timeout_seconds
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    reporter.event("lock-wait", f"{what}: another warmer is fetching it; waiting")
                    told = True
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{what}: another warmer held {lock_file} for more than "
                        f"{settings.lock_timeout_seconds:.0f}s"
                    ) from None
                time.sleep(settings.lock_poll_seconds)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- progress records ----------------------------------------------------------------------


class PartFile:
    """A ``.part`` file and its progress record: how many bytes of each part are on disk."""

    def __init__(self, paths: CachePaths, entry: ManifestFile, part_bytes: int):
        self.entry = entry
        self.part_bytes = part_bytes
        self.data_path = paths.part_file(entry.path)
        self.progress_path = paths.progress_file(entry.path)
        self.parts = max(1, -(-entry.size // part_bytes))
        self.lock = threading.Lock()
        self.data_fd = -1
        self.progress_fd = -1
        self.done: list[int] = [0] * self.parts
        # sha256 of the contiguous fetched prefix, advanced as parts complete, so verification
        # overlaps the download instead of re-reading the whole file at the end
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.hash_lock = threading.Lock()

    def part_range(self, index: int) -> tuple[int, int]:
        begin = index * self.part_bytes
        return begin, min(self.entry.size, begin + self.part_bytes)

    def open(self) -> None:
        """Open (or start) the record; a record made for another size or part size is dropped."""
        self.data_path.parent.mkdir(parents=True, exist_ok=True)
        header = _PROGRESS_HEADER.pack(_PROGRESS_MAGIC, self.entry.size, self.part_bytes)
        record_size = _PROGRESS_HEADER.size + _U64.size * self.parts
        valid = False
        if self.progress_path.is_file() and self.data_path.is_file():
            raw = self.progress_path.read_bytes()
            if len(raw) == record_size and raw.startswith(header):
                self.done = [
                    min(_U64.unpack_from(raw, _PROGRESS_HEADER.size + 8 * i)[0], self._len(i))
                    for i in range(self.parts)
                ]
                valid = True
        if not valid:
            self.done = [0] * self.parts
            self.progress_path.unlink(missing_ok=True)
            self.data_path.unlink(missing_ok=True)
            self.progress_path.write_bytes(header + bytes(record_size - len(header)))
        self.data_fd = os.open(self.data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.progress_fd = os.open(self.progress_path, os.O_RDWR | os.O_CLOEXEC)
        self._reserve()

    def _len(self, index: int) -> int:
        begin, end = self.part_range(index)
        return end - begin

    def _reserve(self) -> None:
        """Allocate the whole file now, so a full disk shows up here and not mid-download."""
        try:
            os.posix_fallocate(self.data_fd, 0, self.entry.size) if self.entry.size else None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            if exc.errno not in {errno.EOPNOTSUPP, errno.EINVAL}:
                raise
            os.ftruncate(self.data_fd, self.entry.size)

    def missing(self) -> list[int]:
        return [i for i in range(self.parts) if self.done[i] < self._len(i)]

    @property
    def bytes_done(self) -> int:
        return sum(self.done)

    def write(self, index: int, offset_in_part: int, data: bytes) -> None:
        begin, _ = self.part_range(index)
        os.pwrite(self.data_fd, data, begin + offset_in_part)
        # the data is written before the count that covers it: a SIGKILL between the two
        # writes only means the bytes are fetched again
        end = offset_in_part + len(data)
        os.pwrite(self.progress_fd, _U64.pack(end), _PROGRESS_HEADER.size + _U64.size * index)
        with self.lock:
            self.done[index] = end

    def advance_hash(self) -> None:
        """Hash the file's fetched prefix as far as it is contiguous (called as parts finish)."""
        with self.hash_lock:
            while self.hashed < self.entry.size:
                index = self.hashed // self.part_bytes
                begin, end = self.part_range(index)
                if self.done[index] < end - begin or not self._hash_range(end):
                    return

    def digest(self) -> str:
        """sha256 of the whole file: the running hash, finished from what is on disk."""
        with self.hash_lock:
            self._hash_range(self.entry.size)
            return self.hasher.hexdigest()

    def _hash_range(self, end: int) -> bool:
        """Hash from :attr:`hashed` to ``end``; False when the file ends first."""
        while self.hashed < end:
            chunk = os.pread(self.data_fd, min(_HASH_READ_BYTES, end - self.hashed), self.hashed)
            if not chunk:
                return False
            self.hasher.update(chunk)
            self.hashed += len(chunk)
        return True

    def reset(self) -> None:
        """Forget everything fetched (after a mismatch): the next round fetches it whole."""
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.close()
        self.progress_path.unlink(missing_ok=True)
        self.data_path.unlink(missing_ok=True)
        self.open()

    def close(self) -> None:
        for fd in (self.data_fd, self.progress_fd):
            if fd >= 0:
                os.close(fd)
        self.data_fd = self.progress_fd = -1


# --- the warmer ----------------------------------------------------------------------------


class Warmer:
    """Fetches one target into one cache. ``client_factory`` is called only when a fetch is due."""

    def __init__(
        self,
        target: Target,
        cache: Path,
        client_factory: Callable[[], S3Client],
        settings: WarmSettings,
        reporter: Reporter,
    ) -> None:
        self.target = target
        self.cache = cache
        self.paths = CachePaths(cache, target.model, target.revision)
        self.client_factory = client_factory
        self.settings = settings
        self.reporter = reporter
        self.what = f"{target.model}@{target.revision}"
        self._cancel = threading.Event()
        self._fetched = 0
        self._fetched_lock = threading.Lock()

    # public ------------------------------------------------------------------------------

    def ensure(self) -> WarmResult:
        started = time.monotonic()
        if self.settings.require_cache_filesystem:
            require_cache_filesystem(self.cache)
        if self._complete():
            return self._present("present", started)
        self.paths.model_dir.mkdir(parents=True, exist_ok=True)
        with revision_lock(self.paths.lock_file, self.settings, self.reporter, self.what):
            if self._complete():
                return self._present("fetched-by-other", started)
            clear_abandoned_evictions(self.paths.model_dir)
            client = self.client_factory()
            manifest = self._read_manifest(client)
            return self._fetch(client, manifest, started)

    def cancel(self) -> None:
        """Stop between chunks (SIGTERM); what is on disk stays resumable."""
        self._cancel.set()

    # steps -------------------------------------------------------------------------------

    def _complete(self) -> bool:
        return self.paths.complete_dir.is_dir()

    def _present(self, outcome: str, started: float) -> WarmResult:
        manifest = self._local_manifest()
        # ensure runs before every pod start: the directory's mtime is its last use, for LRU;
        # best effort, so a cache mounted read-only still starts its pod
        with contextlib.suppress(OSError):
            os.utime(self.paths.complete_dir)
        return WarmResult(
            self.target.model,
            self.target.revision,
            self.paths.complete_dir,
            outcome,
            files=len(manifest.files) if manifest else 0,
            total_bytes=manifest.total_bytes if manifest else 0,
            seconds=time.monotonic() - started,
        )

    def _local_manifest(self) -> Manifest | None:
        try:
            return Manifest.from_json(self.paths.manifest_file.read_bytes())
        except (OSError, ManifestError):
            return None

    def _read_manifest(self, client: S3Client) -> Manifest:
        try:
            return fetch_manifest(client, self.target.location, self.target.revision)
        except WeightsError as exc:
            raise WeightsError(f"{self.what}: {exc}") from exc

    def _fetch(self, client: S3Client, manifest: Manifest, started: float) -> WarmResult:
        self.paths.partial_dir.mkdir(exist_ok=True)
        todo = [e for e in manifest.files if not self._verified_in_staging(e)]
        evicted = self._make_room(manifest, todo)
        todo_bytes = sum(e.size for e in todo)
        self.reporter.event(
            "fetch",
            f"{self.what}: fetching {len(todo)} of {len(manifest.files)} file(s) "
            f"({human_bytes(todo_bytes)}) into {self.paths.complete_dir}",
            model=self.target.model,
            revision=self.target.revision,
            files=len(todo),
            bytes=todo_bytes,
        )
        parts: list[PartFile] = []
        try:
            for entry in todo:
                part = PartFile(self.paths, entry, self.settings.part_bytes)
                try:
                    part.open()
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise NoRoom(
                            f"{self.what}: cache {self.cache} filled up while reserving "
                            f"{entry.path}; nothing was marked complete"
                        ) from exc
                    raise
                parts.append(part)
            self._fetch_and_verify(client, parts)
        finally:
            for part in parts:
                part.close()
        self._finish(manifest)
        return WarmResult(
            self.target.model,
            self.target.revision,
            self.paths.complete_dir,
            "fetched",
            files=len(manifest.files),
            total_bytes=manifest.total_bytes,
            fetched_bytes=self._fetched,
            seconds=time.monotonic() - started,
            evicted=evicted,
        )

    def _verified_in_staging(self, entry: ManifestFile) -> bool:
        """A file renamed to its final name in the staging directory was verified before."""
        final = self.paths.partial_file(entry.path)
        try:
            return final.stat().st_size == entry.size
        except FileNotFoundError:
            return False

    def _make_room(self, manifest: Manifest, todo: list[ManifestFile]) -> list[str]:
        needed = 0
        for entry in todo:
            part = self.paths.part_file(entry.path)
            allocated = part.stat().st_blocks * 512 if part.exists() else 0
            needed += max(0, entry.size - allocated)
        needed += len(manifest.to_json().encode())
        free = free_bytes(self.cache)
        if free >= needed:
            return []
        if not self.settings.evict_lru:
            raise NoRoom(
                f"{self.what}: cache {self.cache} has {human_bytes(free)} free, needs "
                f"{human_bytes(needed)} more; nothing was fetched (free space or allow "
                "--evict-lru)"
            )
        try:
            eviction = evict_lru(
                self.cache, needed, protect=[(self.target.model, self.target.revision)]
            )
        except EvictionRefused as exc:
            raise NoRoom(f"{self.what}: needs {human_bytes(needed)} more; {exc}") from exc
        names = [f"{s.model}@{s.revision}" for s in eviction.evicted]
        for name in names:
            self.reporter.event("evict", f"evicted {name} (least recently used)", revision=name)
        if eviction.free_after < needed:
            busy = ", ".join(f"{s.model}@{s.revision}" for s in eviction.kept_in_use) or "none"
            raise NoRoom(
                f"{self.what}: cache {self.cache} has {human_bytes(eviction.free_after)} free "
                f"after eviction, needs {human_bytes(needed)}; in use and kept: {busy}"
            )
        return names

    def _fetch_and_verify(self, client: S3Client, parts: list[PartFile]) -> None:
        pending = list(parts)
        mismatched: list[tuple[PartFile, str]] = []
        for round_ in range(self.settings.refetches + 1):
            if not pending:
                return
            self._download(client, pending)
            mismatched = self._verify(pending)
            if mismatched and round_ < self.settings.refetches:
                for part, reason in mismatched:
                    self.reporter.event(
                        "mismatch",
                        f"{part.entry.path}: {reason}; fetching it again",
                        file=part.entry.path,
                        reason=reason,
                    )
                    part.reset()
            pending = [part for part, _ in mismatched]
        if mismatched:
            detail = "; ".join(f"{part.entry.path}: {reason}" for part, reason in mismatched)
            raise VerificationFailed(
                f"{self.what}: {len(mismatched)} file(s) do not match the manifest after "
                f"{self.settings.refetches + 1} fetch(es): {detail}; not marked complete"
            )

    def _download(self, client: S3Client, parts: list[PartFile]) -> None:
        started = {id(p): time.monotonic() for p in parts}
        work = [(part, i) for part in parts for i in part.missing()]
        with ThreadPoolExecutor(self.settings.jobs, thread_name_prefix="fetch") as pool:
            futures: list[Future[None]] = [
                pool.submit(self._fetch_part, client, part, i, started[id(part)])
                for part, i in work
            ]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                self._cancel.set()
                wait(futures)
                error = failed[0].exception()
                assert error is not None
                if isinstance(error, WeightsError):
                    raise error
                raise WeightsError(f"{self.what}: {error}") from error
        if self._cancel.is_set():
            raise WeightsError(f"{self.what}: stopped; a later run resumes where this one stopped")

    def _fetch_part(self, client: S3Client, part: PartFile, index: int, started: float) -> None:
        """Fetch what is missing of one part, resuming from its recorded progress."""
        from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415

        begin, end = part.part_range(index)
        key = self.target.location.object_key(self.target.revision, part.entry.path)
        for attempt in range(1, self.settings.part_attempts + 1):
            try:
                self._stream_part(client, key, part, index, started)
            except ClientError as exc:
                code = error_code(exc)
                if code in {"InvalidRange", "416"}:
                    return  # shorter than the manifest: verification names it
                if code in {"NoSuchKey", "404", "AccessDenied", "403"}:
                    raise WeightsError(
                        f"{self.what}: {part.entry.path}: {code} for s3://"
                        f"{self.target.location.bucket}/{key}"
                    ) from exc
                error: Exception = exc
            except (BotoCoreError, OSError) as exc:
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise NoRoom(
                        f"{self.what}: cache {self.cache} is full writing {part.entry.path}; "
                        "nothing was marked complete"
                    ) from exc
                error = exc
            else:
                if part.done[index] == end - begin:
                    part.advance_hash()
                return
            if attempt == self.settings.part_attempts:
                raise WeightsError(
                    f"{self.what}: {part.entry.path}: bytes {begin}-{end - 1} failed "
                    f"{attempt} times: {error}"
                ) from error
            time.sleep(self.settings.retry_backoff_seconds * attempt)

    def _stream_part(
        self, client: S3Client, key: str, part: PartFile, index: int, started: float
    ) -> None:
        """One ranged GET from the part's recorded progress to its end, written as it arrives.

        Returns early when cancelled, or when the object ends before the part does (a short
        object is left for verification to name).
        """
        begin, end = part.part_range(index)
        offset = part.done[index]
        if begin + offset >= end:
            return
        response = client.get_object(
            Bucket=self.target.location.bucket,
            Key=key,
            Range=f"bytes={begin + offset}-{end - 1}",
        )
        body = response["Body"]
        try:
            for chunk in body.iter_chunks(self.settings.read_chunk_bytes):
                if self._cancel.is_set():
                    return
                data = chunk[: end - begin - offset]
                if not data:
                    return
                part.write(index, offset, data)
                offset += len(data)
                self._count(len(data))
                self.reporter.progress(part.entry.path, part.bytes_done, part.entry.size, started)
        finally:
            body.close()

    def _count(self, n: int) -> None:
        with self._fetched_lock:
            self._fetched += n

    def _mismatch(self, part: PartFile) -> str:
        size = part.data_path.stat().st_size
        fetched = part.bytes_done
        if fetched != part.entry.size:
            return f"the object gave {fetched} of {part.entry.size} bytes"
        if size != part.entry.size:
            return f"size {size}, expected {part.entry.size}"
        return "sha256 differs from the manifest"

    def _verify(self, parts: list[PartFile]) -> list[tuple[PartFile, str]]:
        def check(part: PartFile) -> tuple[PartFile, str] | None:
            if part.bytes_done != part.entry.size:
                return part, self._mismatch(part)
            digest = part.digest()
            if digest != part.entry.sha256:
                return part, "sha256 differs from the manifest"
            final = self.paths.partial_file(part.entry.path)
            os.chmod(part.data_path, 0o444)
            os.replace(part.data_path, final)
            part.progress_path.unlink(missing_ok=True)
            self.reporter.event(
                "verified",
                f"{part.entry.path}: {human_bytes(part.entry.size)} verified",
                file=part.entry.path,
                bytes=part.entry.size,
            )
            return None

        with ThreadPoolExecutor(min(self.settings.jobs, 4), thread_name_prefix="verify") as pool:
            results = list(pool.map(check, parts))
        return [r for r in results if r is not None]

    def _finish(self, manifest: Manifest) -> None:
        staging = self.paths.partial_dir
        for entry in manifest.files:
            if not self._verified_in_staging(entry):
                raise WeightsError(f"{self.what}: {entry.path} is missing from {staging}")
        manifest_path = staging / self.paths.manifest_file.name
        manifest_path.write_text(manifest.to_json(), encoding="utf-8")
        _fsync_dir_tree(staging)
        os.rename(staging, self.paths.complete_dir)
        _fsync_dir(self.paths.model_dir)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_tree(root: Path) -> None:
    for base, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(base, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(base))
