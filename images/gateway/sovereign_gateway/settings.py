"""Typed settings: every knob of the gateway, parsed from the command line in this one module."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sovereign_gateway.ports import ADMIN_HTTP_PORT, PUBLIC_PORT, SCALER_GRPC_PORT
from sovereign_gateway.routes import split_host_port


class SettingsError(ValueError):
    """A command-line value is malformed; the message names the flag."""


@dataclass(frozen=True)
class HostPort:
    """A listen or peer address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, flag: str, default_host: str | None = None) -> HostPort:
    """``HOST:PORT``, ``[V6]:PORT`` or (with a default host) ``:PORT``; errors name ``flag``."""
    try:
        host, port = split_host_port(text, default_host)
    except ValueError as error:
        raise SettingsError(f"{flag}: {error}") from None
    return HostPort(host, port)


@dataclass(frozen=True)
class Settings:
    """What the process was started with. Durations are seconds."""

    routes: Path
    listen: HostPort = HostPort("0.0.0.0", PUBLIC_PORT)  # noqa: S104  (a server in a pod)
    scaler_listen: HostPort = HostPort("0.0.0.0", SCALER_GRPC_PORT)  # noqa: S104
    admin_listen: HostPort = HostPort("0.0.0.0", ADMIN_HTTP_PORT)  # noqa: S104
    peers: tuple[HostPort, ...] = ()
    peers_dns: HostPort | None = None
    api_keys: Path | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    # request bodies this replica keeps at once (arriving, held for a cold model or being
    # forwarded), counted as their bytes arrive; past it a request is refused with 429
    # queue_full. Each kept byte costs about two of memory at worst (the body, and its copy in a
    # socket buffer towards a slow backend): the default stays well inside the Deployment's 1 GiB
    max_held_bytes: int = 256 * 1024 * 1024
    # a request's whole body must arrive within this long after its headers; then 408 and close
    # (a body that never comes would otherwise keep its connection and handler forever)
    body_timeout: float = 60.0
    # how often a cold model's /health is probed while requests wait for it (the forward delay
    # after readiness is at most this plus one probe round trip)
    cold_probe_interval: float = 0.05
    # how often a model's /health is probed otherwise (notices scale-down, meters replica time)
    warm_probe_interval: float = 1.0
    # a cold model's probe: short, so a replica coming up is seen at once
    probe_timeout: float = 1.0
    # a ready model's probe: a replica busy generating may answer /health slowly
    warm_probe_timeout: float = 5.0
    # a ready replica counts as gone after this many failed probes in a row (or at once when it
    # leaves DNS, or when a forward finds nothing listening)
    probe_failure_threshold: int = 3
    # Retry-After for a cold model before any cold start of it has been observed
    default_cold_start_seconds: float = 30.0
    reload_interval: float = 1.0
    peer_dns_interval: float = 5.0
    peer_retry_interval: float = 0.5
    drain_seconds: float = 30.0
    # KEDA's push stream (and each peer stream) is opened again after this long on one
    # connection; open calls get the grace first. KEDA 2.16 waits longer before each reconnect
    # of its stream (2 s doubling to 1 min, never reset), so the age is long.
    scaler_max_connection_age: float = 3600.0
    scaler_max_connection_age_grace: float = 30.0
    # mutual TLS on the scaler listener: this replica's certificate and key, and the CA that
    # signs every caller's (KEDA's, the peers'); all three or none (then the listener is open)
    scaler_tls_cert: Path | None = None
    scaler_tls_key: Path | None = None
    scaler_tls_ca: Path | None = None
    # the replicas' name: a peer's certificate is checked for it when this replica watches
    # (peers are dialled by pod address), and a watcher's must carry it; required with TLS
    peer_tls_server_name: str | None = None
    # a peer's snapshot with a pending or in-flight count above this is refused whole (the
    # route table bounds the models and tenants it names more tightly: peers.PeerBounds)
    max_peer_count: int = 100_000
    # KEDA's StreamIsActive streams open at once on the scaler listener
    max_scaler_streams: int = 256
    # peers' WatchCounts streams open at once, apart from KEDA's (each replica opens one per
    # peer, and one to itself until it finds out)
    max_peer_streams: int = 64
    # a file holding the bearer token that /metrics and /usage ask for (none: served to anyone
    # who reaches the admin port, which the NetworkPolicy limits to the metrics scraper)
    admin_token_file: Path | None = None
    # a client has this long to send a request's headers, counted from the connection's opening
    # (first request) or from the request's first byte (later ones); then 408 and close
    header_timeout: float = 10.0
    # an idle keep-alive connection is closed after this long: longer than the 90 s after which
    # Traefik v2 (K3s's edge) drops an idle connection to a backend, so the edge always closes
    # first and never sends a request down a connection the gateway is closing
    keepalive_timeout: float = 120.0
    # public connections open at once (lowered at start to what the descriptor limit allows);
    # past it a connection gets one answer, probes served and anything else 503, then closes
    max_connections: int = 4096
    records: Path | None = None
    record_client_address: bool = False
    log_level: str = "info"


def _positive(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{flag}: expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise SettingsError(f"{flag}: expected a positive number of seconds, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sovereign-gateway",
        description="OpenAI-compatible gateway: routes by model, holds cold starts, "
        "serves KEDA's external-push scaler, meters usage.",
    )
    parser.add_argument(
        "--routes", required=True, help="route table JSON file (reloaded on change)"
    )
    parser.add_argument(
        "--listen", default=f":{Settings.listen.port}", help="public HTTP HOST:PORT"
    )
    parser.add_argument(
        "--scaler-listen",
        default=f":{Settings.scaler_listen.port}",
        help="KEDA scaler and peer gRPC HOST:PORT",
    )
    parser.add_argument(
        "--admin-listen",
        default=f":{Settings.admin_listen.port}",
        help="admin HTTP (/metrics, /usage) HOST:PORT",
    )
    parser.add_argument(
        "--peers", default="", help="other replicas' scaler listeners, comma-separated"
    )
    parser.add_argument(
        "--peers-dns", default=None, help="headless Service NAME:PORT of the replicas"
    )
    parser.add_argument("--api-keys", default=None, help="file of tenant:sha256hex lines")
    parser.add_argument(
        "--max-body-bytes",
        default=str(Settings.max_body_bytes),
        help="largest request body accepted",
    )
    parser.add_argument(
        "--max-held-bytes",
        default=str(Settings.max_held_bytes),
        help="request bodies kept at once (held or being forwarded); more are refused with 429",
    )
    parser.add_argument(
        "--body-timeout",
        default=str(Settings.body_timeout),
        help="seconds a request's whole body has to arrive after its headers; then 408",
    )
    parser.add_argument("--cold-probe-interval", default=str(Settings.cold_probe_interval))
    parser.add_argument("--warm-probe-interval", default=str(Settings.warm_probe_interval))
    parser.add_argument(
        "--probe-timeout",
        default=str(Settings.probe_timeout),
        help="a cold model's /health probe",
    )
    parser.add_argument(
        "--warm-probe-timeout",
        default=str(Settings.warm_probe_timeout),
        help="a ready model's /health probe",
    )
    parser.add_argument(
        "--probe-failure-threshold",
        default=str(Settings.probe_failure_threshold),
        help="failed probes in a row before a ready replica counts as gone",
    )
    parser.add_argument(
        "--default-cold-start-seconds", default=str(Settings.default_cold_start_seconds)
    )
    parser.add_argument("--reload-interval", default=str(Settings.reload_interval))
    parser.add_argument("--peer-dns-interval", default=str(Settings.peer_dns_interval))
    parser.add_argument(
        "--drain-seconds",
        default=str(Settings.drain_seconds),
        help="how long SIGTERM waits for requests",
    )
    parser.add_argument(
        "--scaler-max-connection-age",
        default=str(Settings.scaler_max_connection_age),
        help="seconds before a scaler connection is sent GOAWAY",
    )
    parser.add_argument(
        "--scaler-max-connection-age-grace",
        default=str(Settings.scaler_max_connection_age_grace),
        help="seconds calls still open on it may run after that",
    )
    parser.add_argument(
        "--scaler-tls-cert",
        default=None,
        help="PEM certificate of this replica on the scaler listener (also its client "
        "certificate towards peers); with --scaler-tls-key and --scaler-tls-ca",
    )
    parser.add_argument(
        "--scaler-tls-key", default=None, help="PEM private key of that certificate"
    )
    parser.add_argument(
        "--scaler-tls-ca",
        default=None,
        help="PEM CA that signs every scaler caller's client certificate and every peer's",
    )
    parser.add_argument(
        "--peer-tls-server-name",
        default=None,
        help="the replicas' certificate name: checked on the peers watched, required of "
        "watchers; needed with --scaler-tls-*",
    )
    parser.add_argument(
        "--max-peer-count",
        default=str(Settings.max_peer_count),
        help="a peer snapshot with a pending or in-flight count above this is refused",
    )
    parser.add_argument(
        "--max-scaler-streams",
        default=str(Settings.max_scaler_streams),
        help="KEDA's StreamIsActive streams open at once; more are refused",
    )
    parser.add_argument(
        "--max-peer-streams",
        default=str(Settings.max_peer_streams),
        help="peers' WatchCounts streams open at once; more are refused",
    )
    parser.add_argument(
        "--admin-token-file",
        default=None,
        help="file with the bearer token /metrics and /usage ask for (default: none asked)",
    )
    parser.add_argument(
        "--header-timeout",
        default=str(Settings.header_timeout),
        help="seconds a client has to send a request's headers; then 408 and close",
    )
    parser.add_argument(
        "--keepalive-timeout",
        default=str(Settings.keepalive_timeout),
        help="seconds an idle keep-alive connection stays open",
    )
    parser.add_argument(
        "--max-connections",
        default=str(Settings.max_connections),
        help="public connections open at once; past it probes are served, others get 503",
    )
    parser.add_argument("--records", default=None, help="request records file (default: stdout)")
    parser.add_argument(
        "--record-client-address",
        action="store_true",
        help="put the client's address in request records (off by default)",
    )
    parser.add_argument(
        "--log-level", default=Settings.log_level, choices=["debug", "info", "warning", "error"]
    )
    return parser


def _whole(flag: str, text: str, what: str = "whole number") -> int:
    if not text.isdigit() or int(text) < 1:
        raise SettingsError(f"{flag}: expected a positive {what}, got {text!r}")
    return int(text)


def _scaler_tls_files(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None]:
    given = {
        "--scaler-tls-cert": args.scaler_tls_cert,
        "--scaler-tls-key": args.scaler_tls_key,
        "--scaler-tls-ca": args.scaler_tls_ca,
    }
    missing = [flag for flag, value in given.items() if not value]
    if missing and len(missing) < len(given):
        raise SettingsError(
            f"{', '.join(missing)}: expected with the other --scaler-tls-* flags (all three or none)"
        )
    if missing:
        return None, None, None
    if not args.peer_tls_server_name:
        # peers are dialled by pod address, which no certificate names, and a watcher is told
        # from KEDA by this name alone
        raise SettingsError(
            "--peer-tls-server-name: expected with --scaler-tls-* (the name in the replicas' "
            "certificate)"
        )
    return Path(args.scaler_tls_cert), Path(args.scaler_tls_key), Path(args.scaler_tls_ca)


def _held_bytes_budget(args: argparse.Namespace, max_body_bytes: int) -> int:
    budget = _whole("--max-held-bytes", args.max_held_bytes, "number of bytes")
    # a budget below one body would refuse every request of the largest accepted size
    if budget < max_body_bytes:
        raise SettingsError(
            f"--max-held-bytes: expected at least --max-body-bytes ({max_body_bytes}), "
            f"got {args.max_held_bytes!r}"
        )
    return budget


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from command-line arguments; a bad value raises SettingsError naming the flag."""
    args = _parser().parse_args(argv)
    scaler_tls_cert, scaler_tls_key, scaler_tls_ca = _scaler_tls_files(args)
    peers = tuple(
        parse_host_port(item.strip(), "--peers") for item in args.peers.split(",") if item.strip()
    )
    max_body_bytes = _whole("--max-body-bytes", args.max_body_bytes, "number of bytes")
    return Settings(
        routes=Path(args.routes),
        listen=parse_host_port(args.listen, "--listen", "0.0.0.0"),  # noqa: S104
        scaler_listen=parse_host_port(args.scaler_listen, "--scaler-listen", "0.0.0.0"),  # noqa: S104
        admin_listen=parse_host_port(args.admin_listen, "--admin-listen", "0.0.0.0"),  # noqa: S104
        peers=peers,
        peers_dns=parse_host_port(args.peers_dns, "--peers-dns") if args.peers_dns else None,
        api_keys=Path(args.api_keys) if args.api_keys else None,
        max_body_bytes=max_body_bytes,
        max_held_bytes=_held_bytes_budget(args, max_body_bytes),
        body_timeout=_positive("--body-timeout", args.body_timeout),
        cold_probe_interval=_positive("--cold-probe-interval", args.cold_probe_interval),
        warm_probe_interval=_positive("--warm-probe-interval", args.warm_probe_interval),
        probe_timeout=_positive("--probe-timeout", args.probe_timeout),
        warm_probe_timeout=_positive("--warm-probe-timeout", args.warm_probe_timeout),
        probe_failure_threshold=_whole("--probe-failure-threshold", args.probe_failure_threshold),
        default_cold_start_seconds=_positive(
            "--default-cold-start-seconds", args.default_cold_start_seconds
        ),
        reload_interval=_positive("--reload-interval", args.reload_interval),
        peer_dns_interval=_positive("--peer-dns-interval", args.peer_dns_interval),
        drain_seconds=_positive("--drain-seconds", args.drain_seconds),
        scaler_max_connection_age=_positive(
            "--scaler-max-connection-age", args.scaler_max_connection_age
        ),
        scaler_max_connection_age_grace=_positive(
            "--scaler-max-connection-age-grace", args.scaler_max_connection_age_grace
        ),
        scaler_tls_cert=scaler_tls_cert,
        scaler_tls_key=scaler_tls_key,
        scaler_tls_ca=scaler_tls_ca,
        peer_tls_server_name=args.peer_tls_server_name or None,
        max_peer_count=_whole("--max-peer-count", args.max_peer_count),
        max_scaler_streams=_whole("--max-scaler-streams", args.max_scaler_streams),
        max_peer_streams=_whole("--max-peer-streams", args.max_peer_streams),
        admin_token_file=Path(args.admin_token_file) if args.admin_token_file else None,
        header_timeout=_positive("--header-timeout", args.header_timeout),
        keepalive_timeout=_positive("--keepalive-timeout", args.keepalive_timeout),
        max_connections=_whole("--max-connections", args.max_connections),
        records=Path(args.records) if args.records else None,
        record_client_address=bool(args.record_client_address),
        log_level=str(args.log_level),
    )
