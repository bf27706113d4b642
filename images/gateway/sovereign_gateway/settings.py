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
    parser.add_argument("--listen", default=f":{PUBLIC_PORT}", help="public HTTP HOST:PORT")
    parser.add_argument(
        "--scaler-listen",
        default=f":{SCALER_GRPC_PORT}",
        help="KEDA scaler and peer gRPC HOST:PORT",
    )
    parser.add_argument(
        "--admin-listen",
        default=f":{ADMIN_HTTP_PORT}",
        help="admin HTTP (/metrics, /usage) HOST:PORT",
    )
    parser.add_argument(
        "--peers", default="", help="other replicas' scaler listeners, comma-separated"
    )
    parser.add_argument(
        "--peers-dns", default=None, help="headless Service NAME:PORT of the replicas"
    )
    parser.add_argument("--api-keys", default=None, help="file of tenant:sha256hex lines")
    parser.add_argument("--max-body-bytes", default="8388608", help="largest request body accepted")
    parser.add_argument("--cold-probe-interval", default="0.05")
    parser.add_argument("--warm-probe-interval", default="1.0")
    parser.add_argument("--probe-timeout", default="1.0", help="a cold model's /health probe")
    parser.add_argument("--warm-probe-timeout", default="5.0", help="a ready model's /health probe")
    parser.add_argument(
        "--probe-failure-threshold",
        default="3",
        help="failed probes in a row before a ready replica counts as gone",
    )
    parser.add_argument("--default-cold-start-seconds", default="30")
    parser.add_argument("--reload-interval", default="1.0")
    parser.add_argument("--peer-dns-interval", default="5.0")
    parser.add_argument("--drain-seconds", default="30", help="how long SIGTERM waits for requests")
    parser.add_argument(
        "--scaler-max-connection-age",
        default="3600",
        help="seconds before a scaler connection is sent GOAWAY",
    )
    parser.add_argument(
        "--scaler-max-connection-age-grace",
        default="30",
        help="seconds calls still open on it may run after that",
    )
    parser.add_argument("--records", default=None, help="request records file (default: stdout)")
    parser.add_argument(
        "--record-client-address",
        action="store_true",
        help="put the client's address in request records (off by default)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from command-line arguments; a bad value raises SettingsError naming the flag."""
    args = _parser().parse_args(argv)
    peers = tuple(
        parse_host_port(item.strip(), "--peers") for item in args.peers.split(",") if item.strip()
    )
    if not args.max_body_bytes.isdigit() or int(args.max_body_bytes) < 1:
        raise SettingsError(
            f"--max-body-bytes: expected a positive number of bytes, got {args.max_body_bytes!r}"
        )
    if not args.probe_failure_threshold.isdigit() or int(args.probe_failure_threshold) < 1:
        raise SettingsError(
            "--probe-failure-threshold: expected a positive whole number, "
            f"got {args.probe_failure_threshold!r}"
        )
    return Settings(
        routes=Path(args.routes),
        listen=parse_host_port(args.listen, "--listen", "0.0.0.0"),  # noqa: S104
        scaler_listen=parse_host_port(args.scaler_listen, "--scaler-listen", "0.0.0.0"),  # noqa: S104
        admin_listen=parse_host_port(args.admin_listen, "--admin-listen", "0.0.0.0"),  # noqa: S104
        peers=peers,
        peers_dns=parse_host_port(args.peers_dns, "--peers-dns") if args.peers_dns else None,
        api_keys=Path(args.api_keys) if args.api_keys else None,
        max_body_bytes=int(args.max_body_bytes),
        cold_probe_interval=_positive("--cold-probe-interval", args.cold_probe_interval),
        warm_probe_interval=_positive("--warm-probe-interval", args.warm_probe_interval),
        probe_timeout=_positive("--probe-timeout", args.probe_timeout),
        warm_probe_timeout=_positive("--warm-probe-timeout", args.warm_probe_timeout),
        probe_failure_threshold=int(args.probe_failure_threshold),
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
        records=Path(args.records) if args.records else None,
        record_client_address=bool(args.record_client_address),
        log_level=str(args.log_level),
    )
