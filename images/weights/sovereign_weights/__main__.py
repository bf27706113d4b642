"""``sovereign-weights {publish,ensure,prefetch,noop-program,status}``: one line on exit, progress meanwhile.

Exit codes are in :mod:`sovereign_weights.errors`. Every command that talks to a store checks the
endpoint against ``--allowed-endpoints`` (when given) before it builds a client.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from sovereign_weights.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError, WeightsError
from sovereign_weights.layout import (
    CACHE_FILESYSTEM_MARKER,
    LayoutError,
    default_model_name,
    parse_object_uri,
)
from sovereign_weights.manifest import ManifestError
from sovereign_weights.report import Reporter, human_bytes
from sovereign_weights.units import GIB, MIB

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from sovereign_weights.warm import WarmSettings

PROG = "sovereign-weights"
_SIZE = re.compile(r"^(\d+)\s*(B|K|KB|KIB|M|MB|MIB|G|GB|GIB)?$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1024, "M": MIB, "G": GIB}


def parse_size(text: str) -> int:
    """``64MiB``, ``5M``, ``1GiB`` or plain bytes (binary units)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a size such as 64MiB or 5242880")
    unit = (match.group(2) or "").upper()[:1]
    return int(match.group(1)) * _UNITS[unit]


def _endpoints(text: str) -> list[str]:
    return [e for e in (part.strip() for part in text.split(",")) if e]


def _add_store_flags(parser: argparse.ArgumentParser, *, target: bool = True) -> None:
    if target:
        parser.add_argument("--endpoint", required=True, metavar="URL", help="S3 endpoint URL")
        parser.add_argument("--uri", required=True, metavar="s3://BUCKET/PREFIX")
        parser.add_argument("--revision", required=True, metavar="REV")
        parser.add_argument(
            "--model", metavar="NAME", help="default: the last segment of the URI's prefix"
        )
    parser.add_argument(
        "--allowed-endpoints",
        type=_endpoints,
        metavar="URL[,URL...]",
        help="refuse any other endpoint before making a request (the stack's residency policy)",
    )
    parser.add_argument("--region", help="signing region (default: the AWS config chain)")
    parser.add_argument(
        "--credentials-file",
        type=Path,
        metavar="FILE",
        help="AWS shared-credentials file, e.g. a mounted secret (default: AWS_* variables)",
    )
    parser.add_argument("--profile", help="profile in the credentials file")
    parser.add_argument("--jobs", type=int, default=8, help="parallel requests (default 8)")
    parser.add_argument(
        "--part-size", type=parse_size, default=64 * MIB, help="bytes per part (64MiB)"
    )


def _add_warm_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, type=Path, metavar="DIR", help="node cache")
    parser.add_argument(
        "--evict-lru",
        action="store_true",
        help="evict least recently used complete revisions (never one in use) to make room",
    )
    parser.add_argument("--refetches", type=int, default=1, help="refetches of a bad file (1)")
    parser.add_argument(
        "--lock-timeout", type=float, default=3600.0, help="seconds to wait for another warmer"
    )
    parser.add_argument(
        "--require-cache-filesystem",
        action="store_true",
        help=f"refuse a cache directory without {CACHE_FILESYSTEM_MARKER} (written by the host's "
        "cache step on the filesystem it mounts): never fill the root disk when the array is missing",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Publish model weights to an EU object store and warm a node's NVMe cache.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    publish = sub.add_parser("publish", help="upload a model directory and its manifest")
    publish.add_argument("directory", type=Path, metavar="DIR")
    _add_store_flags(publish)
    publish.set_defaults(func=_cmd_publish)

    ensure = sub.add_parser("ensure", help="make one revision complete in the cache")
    _add_store_flags(ensure)
    _add_warm_flags(ensure)
    ensure.add_argument(
        "--compile-image",
        metavar="sha256:HEX",
        help="also make the revision's compile cache directory for this serving image digest",
    )
    ensure.add_argument(
        "--compile-owner",
        type=int,
        metavar="UID",
        help="the serving user (uid and gid) that owns the compile cache directory",
    )
    ensure.set_defaults(func=_cmd_ensure)

    prefetch = sub.add_parser("prefetch", help="ensure every model of a models file")
    prefetch.add_argument("--models-file", required=True, type=Path, metavar="FILE")
    prefetch.add_argument(
        "--watch", type=float, metavar="SECONDS", help="run again every SECONDS until stopped"
    )
    _add_store_flags(prefetch, target=False)
    _add_warm_flags(prefetch)
    prefetch.set_defaults(func=_cmd_prefetch)

    noop = sub.add_parser(
        "noop-program", help="write a static program that exits 0 (for pre-pulling images)"
    )
    noop.add_argument("--out", required=True, type=Path, metavar="FILE")
    noop.set_defaults(func=_cmd_noop_program)

    status = sub.add_parser("status", help="models in the cache: complete, partial or absent")
    status.add_argument("--cache", required=True, type=Path, metavar="DIR")
    status.add_argument("--models-file", type=Path, metavar="FILE")
    status.add_argument("--uri", metavar="s3://BUCKET/PREFIX")
    status.add_argument("--revision", metavar="REV")
    status.add_argument("--model", metavar="NAME")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(func=_cmd_status)
    return parser


# --- helpers -------------------------------------------------------------------------------


def _client_factory(args: argparse.Namespace) -> Callable[[str], S3Client]:
    """Clients per endpoint, each checked against the allowed list before it is built."""
    from sovereign_weights.store import (  # noqa: PLC0415
        StoreSettings,
        check_endpoint_allowed,
        make_client,
    )

    clients: dict[str, S3Client] = {}
    lock = threading.Lock()

    def client_for(endpoint: str) -> S3Client:
        normalized = check_endpoint_allowed(endpoint, args.allowed_endpoints)
        with lock:
            if normalized not in clients:
                clients[normalized] = make_client(
                    StoreSettings(
                        endpoint=normalized,
                        region=args.region,
                        credentials_file=args.credentials_file,
                        profile=args.profile,
                        max_connections=max(10, args.jobs * 2),
                    )
                )
            return clients[normalized]

    return client_for


def _model_name(args: argparse.Namespace) -> str:
    return str(args.model) if args.model else default_model_name(args.uri)


def _warm_settings(args: argparse.Namespace) -> WarmSettings:
    from sovereign_weights.warm import WarmSettings  # noqa: PLC0415

    return WarmSettings(
        jobs=args.jobs,
        part_bytes=args.part_size,
        refetches=args.refetches,
        lock_timeout_seconds=args.lock_timeout,
        evict_lru=args.evict_lru,
        require_cache_filesystem=args.require_cache_filesystem,
    )


def _on_sigterm(callback: Callable[[], None]) -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        callback()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# --- commands ------------------------------------------------------------------------------


def _cmd_publish(args: argparse.Namespace) -> int:
    from sovereign_weights.publish import Publisher, PublishSettings  # noqa: PLC0415
    from sovereign_weights.store import check_endpoint_allowed  # noqa: PLC0415

    location = parse_object_uri(args.uri)
    model = _model_name(args)
    check_endpoint_allowed(args.endpoint, args.allowed_endpoints)
    settings = PublishSettings(jobs=args.jobs, part_bytes=args.part_size)
    client = _client_factory(args)(args.endpoint)
    reporter = Reporter("publish")
    result = Publisher(client, location, args.revision, model, settings, reporter).publish(
        args.directory
    )
    manifest = result.manifest
    state = "already published; " if result.already_published else ""
    print(
        f"published {model}@{args.revision} to {location.uri}/{args.revision}: {state}"
        f"{len(manifest.files)} file(s), {human_bytes(manifest.total_bytes)}; "
        f"{human_bytes(result.uploaded_bytes)} sent, {result.skipped_files} file(s) and "
        f"{result.resumed_parts} part(s) already there"
        + (f"; left out {len(result.left_out)} file(s) not in the index" if result.left_out else "")
    )
    return EXIT_OK


def _cmd_ensure(args: argparse.Namespace) -> int:
    from sovereign_weights.store import check_endpoint_allowed  # noqa: PLC0415
    from sovereign_weights.warm import Target, Warmer  # noqa: PLC0415

    target = Target(_model_name(args), parse_object_uri(args.uri), args.revision)
    if (args.compile_image is None) != (args.compile_owner is None):
        raise UsageError("--compile-image and --compile-owner: expected both or neither")
    client_for = _client_factory(args)
    # refuse a disallowed endpoint even when the cache already holds the revision
    check_endpoint_allowed(args.endpoint, args.allowed_endpoints)
    if args.compile_image is not None:
        from sovereign_weights.cache import (  # noqa: PLC0415
            prepare_compile_dir,
            require_cache_filesystem,
        )
        from sovereign_weights.layout import CachePaths  # noqa: PLC0415

        # before the fetch: a missing capability shows at once, not after a long download
        paths = CachePaths(args.cache, target.model, target.revision)
        if args.require_cache_filesystem:
            require_cache_filesystem(args.cache)
        prepare_compile_dir(paths, args.compile_image, args.compile_owner)
    warmer = Warmer(
        target,
        args.cache,
        lambda: client_for(args.endpoint),
        _warm_settings(args),
        Reporter("ensure"),
    )
    _on_sigterm(warmer.cancel)
    result = warmer.ensure()
    if result.outcome == "fetched":
        rate = result.fetched_bytes / max(result.seconds, 1e-6)
        print(
            f"{target.model}@{target.revision}: complete in {result.path} "
            f"({result.files} file(s), {human_bytes(result.total_bytes)}; fetched "
            f"{human_bytes(result.fetched_bytes)} in {result.seconds:.1f}s, "
            f"{human_bytes(rate)}/s)"
        )
    else:
        how = "by another warmer" if result.outcome == "fetched-by-other" else "already"
        print(f"{target.model}@{target.revision}: complete in {result.path} ({how})")
    return EXIT_OK


def _cmd_prefetch(args: argparse.Namespace) -> int:
    from sovereign_weights.prefetch import (  # noqa: PLC0415
        PrefetchEntry,
        RoundResult,
        load_models_file,
        prefetch_round,
    )
    from sovereign_weights.warm import Warmer  # noqa: PLC0415

    stop = threading.Event()
    current: list[Warmer] = []

    def cancel() -> None:
        stop.set()
        for warmer in current:
            warmer.cancel()

    def track(warmer: object) -> None:
        current.clear()
        if isinstance(warmer, Warmer):
            current.append(warmer)

    _on_sigterm(cancel)
    reporter = Reporter("prefetch")
    settings = _warm_settings(args)
    client_for = _client_factory(args)
    if args.watch is not None and args.watch <= 0:
        raise WeightsError("--watch: expected a positive number of seconds")
    entries: list[PrefetchEntry] = []
    result = RoundResult([], [])
    while True:
        try:
            entries = load_models_file(args.models_file)
        except WeightsError as exc:
            if args.watch is None:
                raise
            # a ConfigMap being rewritten: report it and keep the last good list
            reporter.event("failed", str(exc), exit_code=exc.exit_code)
        result = prefetch_round(entries, args.cache, client_for, settings, reporter, stop, track)
        if args.watch is None or stop.is_set():
            break
        if stop.wait(args.watch):
            break
    if stop.is_set():
        print(f"prefetch: stopped; {len(result.ok)} model(s) complete in the last round")
        # under --watch a stop is how the DaemonSet's pod ends; a single run cut short failed
        return EXIT_OK if args.watch is not None else EXIT_FAILED
    if result.failed:
        names = ", ".join(f"{e.model}@{e.revision}" for e, _ in result.failed)
        worst = max(exc.exit_code for _, exc in result.failed)
        print(
            f"prefetch: {len(result.failed)} of {len(entries)} model(s) failed: {names}; "
            f"first: {result.failed[0][1]}",
            file=sys.stderr,
        )
        return worst
    print(f"prefetch: {len(result.ok)} model(s) complete in {args.cache}")
    return EXIT_OK


def _cmd_noop_program(args: argparse.Namespace) -> int:
    from sovereign_weights.noop import UnsupportedMachine, write_exit_zero_program  # noqa: PLC0415

    try:
        path = write_exit_zero_program(args.out)
    except UnsupportedMachine as exc:
        raise UsageError(str(exc)) from exc
    print(f"noop-program: wrote {path}")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from sovereign_weights.cache import list_cache, revision_state  # noqa: PLC0415
    from sovereign_weights.prefetch import load_models_file  # noqa: PLC0415

    wanted: list[tuple[str, str]] = []
    if args.models_file:
        wanted += [(e.model, e.revision) for e in load_models_file(args.models_file)]
    if args.uri or args.model:
        if not args.revision:
            raise WeightsError("--revision is required with --uri or --model")
        wanted.append((_model_name(args), args.revision))
    states = (
        [revision_state(args.cache, m, r) for m, r in wanted] if wanted else list_cache(args.cache)
    )
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "model": s.model,
                        "revision": s.revision,
                        "state": s.state,
                        "bytesOnDisk": s.bytes_on_disk,
                    }
                    for s in states
                ],
                indent=2,
            )
        )
    else:
        for s in states:
            print(f"{s.model:<32} {s.revision:<42} {s.state:<9} {human_bytes(s.bytes_on_disk)}")
        if not states:
            print(f"{args.cache}: no models")
    if wanted and any(s.state != "complete" for s in states):
        return EXIT_FAILED
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except WeightsError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (LayoutError, ManifestError) as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        # the store client's own errors (no credentials, endpoint unreachable, access denied)
        # are reported as one line like every other failure; anything else is a bug: traceback
        if not type(exc).__module__.startswith(("botocore", "boto3")):
            raise
        print(f"{PROG} {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
