"""Typed settings: every knob of the gateway, parsed from the command line in this one module."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sovereign_gateway.ports import ADMIN_HTTP_PORT, PUBLIC_PORT, SCALER_GRPC_PORT


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
    expected = f"{flag}: expected HOST:PORT (IPv6 as [ADDR]:PORT), got {text!r}"
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            raise SettingsError(expected)
    if not sep or not port_text.isdigit():
        raise SettingsError(expected)
    if not host:
        if default_host is None:
            raise SettingsError(expected)
        host = default_host
    port = int(port_text)
    if not 0 < port < 65536:
        raise SettingsError(f"{flag}: expected a port between 1 and 65535, got {port}")
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
    probe_timeout: float = 1.0
    # Retry-After for a cold model before any cold start of it has been observed
    default_cold_start_seconds: float = 30.0
    reload_interval: float = 1.0
    peer_dns_interval: float = 5.0
    peer_retry_interval: float = 0.5
    drain_seconds: float = 30.0
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
    parser.add_argument("--probe-timeout", default="1.0")
    parser.add_argument("--default-cold-start-seconds", default="30")
    parser.add_argument("--reload-interval", default="1.0")
    parser.add_argument("--peer-dns-interval", default="5.0")
    parser.add_argument("--drain-seconds", default="30", help="how long SIGTERM waits for requests")
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
        default_cold_start_seconds=_positive(
            "--default-cold-start-seconds", args.default_cold_start_seconds
        ),
        reload_interval=_positive("--reload-interval", args.reload_interval),
        peer_dns_interval=_positive("--peer-dns-interval", args.peer_dns_interval),
        drain_seconds=_positive("--drain-seconds", args.drain_seconds),
        records=Path(args.records) if args.records else None,
        record_client_address=bool(args.record_client_address),
        log_level=str(args.log_level),
    )
