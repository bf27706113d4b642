"""The models file that ``prefetch`` and ``status`` read, and the prefetch loop.

The inference stack renders the file into a ConfigMap from the stack's models (a JSON list)::

    [{"model": "llama-70b", "endpoint": "https://s3.example.eu", "uri": "s3://bucket/prefix",
      "revision": "6f60..."}]

The schema is pydantic + stdlib so the plan layer can import it to write the file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sovereign_weights.errors import UsageError, WeightsError
from sovereign_weights.layout import check_segment, parse_object_uri
from sovereign_weights.report import Reporter, human_bytes

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from sovereign_weights.warm import WarmResult, WarmSettings


class PrefetchEntry(BaseModel):
    """One model revision a node should hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(min_length=1)
    endpoint: str = Field(min_length=1)
    uri: str = Field(min_length=1)
    revision: str = Field(min_length=1)

    def checked(self) -> PrefetchEntry:
        check_segment(self.model, "model")
        check_segment(self.revision, "revision")
        parse_object_uri(self.uri)
        return self


_ENTRIES = TypeAdapter(list[PrefetchEntry])


def load_models_file(path: Path) -> list[PrefetchEntry]:
    """The entries of a models file; a :class:`UsageError` naming the file and the bad field."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"--models-file {path}: {exc.strerror}") from exc
    try:
        entries = _ENTRIES.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise UsageError(
            f"--models-file {path}: [{where}] {first['msg']}; expected a JSON list of "
            '{"model", "endpoint", "uri", "revision"}'
        ) from exc
    try:
        return [e.checked() for e in entries]
    except ValueError as exc:
        raise UsageError(f"--models-file {path}: {exc}") from exc


def ensure_args(
    entry: PrefetchEntry, cache: str, allowed_endpoints: Sequence[str] | None = None
) -> list[str]:
    """Arguments of ``sovereign-weights`` (the image's entrypoint) for a vLLM pod's init
    container: make ``entry`` complete under ``cache`` (instant when it already is)."""
    args = [
        "ensure",
        "--endpoint",
        entry.endpoint,
        "--uri",
        entry.uri,
        "--revision",
        entry.revision,
        "--model",
        entry.model,
        "--cache",
        cache,
    ]
    if allowed_endpoints is not None:
        args += ["--allowed-endpoints", ",".join(allowed_endpoints)]
    return args


def prefetch_args(
    models_file: str,
    cache: str,
    *,
    watch_seconds: int | None = None,
    evict_lru: bool = False,
    allowed_endpoints: Sequence[str] | None = None,
) -> list[str]:
    """Arguments of ``sovereign-weights`` for the node DaemonSet that keeps the cache warm.

    ``evict_lru`` needs the pod to run as root with ``hostPID: true`` (see ``cache.py``)."""
    args = ["prefetch", "--models-file", models_file, "--cache", cache]
    if watch_seconds is not None:
        args += ["--watch", str(watch_seconds)]
    if evict_lru:
        args.append("--evict-lru")
    if allowed_endpoints is not None:
        args += ["--allowed-endpoints", ",".join(allowed_endpoints)]
    return args


def render_models_file(entries: list[PrefetchEntry]) -> str:
    """The file's text, as the inference stack puts it into its ConfigMap."""
    return json.dumps([e.model_dump() for e in entries], indent=2) + "\n"


def _bind(client_for: Callable[[str], S3Client], endpoint: str) -> Callable[[], S3Client]:
    return lambda: client_for(endpoint)


@dataclass
class RoundResult:
    ok: list[WarmResult]
    failed: list[tuple[PrefetchEntry, WeightsError]]


def prefetch_round(
    entries: list[PrefetchEntry],
    cache: Path,
    client_for: Callable[[str], S3Client],
    settings: WarmSettings,
    reporter: Reporter,
    stop: threading.Event,
    on_warmer: Callable[[object], None] | None = None,
) -> RoundResult:
    """Ensure every entry, one after the other; a failure is reported and the next one tried."""
    from sovereign_weights.warm import Target, Warmer  # noqa: PLC0415

    result = RoundResult([], [])
    for entry in entries:
        if stop.is_set():
            break
        target = Target(entry.model, parse_object_uri(entry.uri), entry.revision)
        warmer = Warmer(target, cache, _bind(client_for, entry.endpoint), settings, reporter)
        if on_warmer is not None:
            on_warmer(warmer)
        try:
            done = warmer.ensure()
        except WeightsError as exc:
            reporter.event(
                "failed",
                str(exc),
                model=entry.model,
                revision=entry.revision,
                exit_code=exc.exit_code,
            )
            result.failed.append((entry, exc))
            continue
        reporter.event(
            done.outcome,
            f"{entry.model}@{entry.revision}: {done.outcome} "
            f"({human_bytes(done.fetched_bytes)} fetched)",
            model=entry.model,
            revision=entry.revision,
            fetched=done.fetched_bytes,
        )
        result.ok.append(done)
    return result
