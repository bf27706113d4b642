"""Typed settings: every knob of the gateway, parsed from the command line in this one module.

Each setting is declared once, as a field of :class:`Settings` with its default and its help; the
command line is generated from those fields (flag ``--some-name`` for field ``some_name``), and
``--help`` shows each default as the field states it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from sovereign_gateway.ports import ADMIN_HTTP_PORT, PUBLIC_PORT, SCALER_GRPC_PORT
from sovereign_gateway.routes import split_host_port

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_ANY_ADDRESS: Final = "0.0.0.0"  # noqa: S104  (a server in a pod listens on every address)


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


# ---- how one flag's text becomes a field's value (each raises SettingsError naming the flag) ----

_Parse = Callable[[str, str], Any]


def _seconds(flag: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{flag}: expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise SettingsError(f"{flag}: expected a positive number of seconds, got {text!r}")
    return value


def _whole_of(what: str) -> _Parse:
    def parse(flag: str, text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise SettingsError(f"{flag}: expected a positive {what}, got {text!r}")
        return int(text)

    return parse


_count = _whole_of("whole number")
_bytes = _whole_of("number of bytes")


def _listen_address(flag: str, text: str) -> HostPort:
    return parse_host_port(text, flag, _ANY_ADDRESS)


def _address(flag: str, text: str) -> HostPort:
    return parse_host_port(text, flag)


def _addresses(flag: str, text: str) -> tuple[HostPort, ...]:
    return tuple(parse_host_port(item.strip(), flag) for item in text.split(",") if item.strip())


def _path(flag: str, text: str) -> Path:
    return Path(text)


def _text(flag: str, text: str) -> str:
    return text


@dataclass(frozen=True)
class _Flag:
    """A field's command-line side: what it is for, how its text is read, and (for a setting
    that is off unless given) what leaving it out means."""

    help: str
    parse: _Parse
    when_left_out: str | None = None
    choices: tuple[str, ...] | None = None


def _flag(
    help: str,
    parse: _Parse,
    when_left_out: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> dict[str, _Flag]:
    """A field's metadata: its side on the command line."""
    return {"flag": _Flag(help, parse, when_left_out, choices)}


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Settings:
    """What the process was started with. Durations are seconds."""

    routes: Path = field(metadata=_flag("route table JSON file (reloaded on change)", _path))
    listen: HostPort = field(
        default=HostPort(_ANY_ADDRESS, PUBLIC_PORT),
        metadata=_flag("public HTTP HOST:PORT", _listen_address),
    )
    scaler_listen: HostPort = field(
        default=HostPort(_ANY_ADDRESS, SCALER_GRPC_PORT),
        metadata=_flag("KEDA scaler and peer gRPC HOST:PORT", _listen_address),
    )
    admin_listen: HostPort = field(
        default=HostPort(_ANY_ADDRESS, ADMIN_HTTP_PORT),
        metadata=_flag("admin HTTP (/metrics, /usage) HOST:PORT", _listen_address),
    )
    peers: tuple[HostPort, ...] = field(
        default=(),
        metadata=_flag("other replicas' scaler listeners, comma-separated", _addresses, "none"),
    )
    peers_dns: HostPort | None = field(
        default=None, metadata=_flag("headless Service NAME:PORT of the replicas", _address, "none")
    )
    api_keys: Path | None = field(
        default=None,
        metadata=_flag(
            "file of tenant:sha256hex lines",
            _path,
            "authentication off, every request served as tenant 'anonymous'",
        ),
    )
    max_body_bytes: int = field(
        default=8 * 1024 * 1024, metadata=_flag("largest request body accepted", _bytes)
    )
    # each kept byte costs about two of memory at worst (the body, and its copy in a socket buffer
    # towards a slow backend): the default stays well inside the Deployment's 1 GiB
    max_held_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata=_flag(
            "request bodies kept at once (arriving, held for a cold model or being forwarded); more "
            "are refused with 429 queue_full; at least --max-body-bytes",
            _bytes,
        ),
    )
    # a body that never comes would otherwise keep its connection and handler forever
    body_timeout: float = field(
        default=60.0,
        metadata=_flag(
            "seconds a request's whole body has to arrive after its headers; then 408 and close",
            _seconds,
        ),
    )
    cold_probe_interval: float = field(
        default=0.05,
        metadata=_flag(
            "seconds between probes of a cold model's /health while requests wait for it (the "
            "forward delay after readiness is at most this plus one probe round trip)",
            _seconds,
        ),
    )
    warm_probe_interval: float = field(
        default=1.0,
        metadata=_flag(
            "seconds between probes of a model's /health otherwise (notices scale-down, meters "
            "replica time)",
            _seconds,
        ),
    )
    probe_timeout: float = field(
        default=1.0,
        metadata=_flag(
            "a cold model's /health probe: short, so a replica coming up is seen at once", _seconds
        ),
    )
    warm_probe_timeout: float = field(
        default=5.0,
        metadata=_flag(
            "a ready model's /health probe: a replica busy generating may answer slowly", _seconds
        ),
    )
    probe_failure_threshold: int = field(
        default=3,
        metadata=_flag(
            "failed probes in a row before a ready replica counts as gone (at once when it leaves "
            "DNS, or when a forward finds nothing listening)",
            _count,
        ),
    )
    default_cold_start_seconds: float = field(
        default=30.0,
        metadata=_flag(
            "Retry-After for a cold model before any cold start of it was observed", _seconds
        ),
    )
    reload_interval: float = field(
        default=1.0,
        metadata=_flag("seconds between looks at the route table and key file", _seconds),
    )
    peer_dns_interval: float = field(
        default=5.0, metadata=_flag("seconds between lookups of --peers-dns", _seconds)
    )
    peer_retry_interval: float = field(
        default=0.5, metadata=_flag("seconds before a lost peer stream is opened again", _seconds)
    )
    drain_seconds: float = field(
        default=30.0, metadata=_flag("how long SIGTERM waits for requests", _seconds)
    )
    # KEDA 2.16 waits longer before each reconnect of its stream (2 s doubling to 1 min, never
    # reset), so the age is long
    scaler_max_connection_age: float = field(
        default=3600.0,
        metadata=_flag(
            "seconds before a scaler connection (KEDA's push stream, each peer stream) is sent GOAWAY",
            _seconds,
        ),
    )
    scaler_max_connection_age_grace: float = field(
        default=30.0, metadata=_flag("seconds calls still open on it may run after that", _seconds)
    )
    scaler_tls_cert: Path | None = field(
        default=None,
        metadata=_flag(
            "PEM certificate of this replica on the scaler listener (also its client certificate "
            "towards peers); with --scaler-tls-key and --scaler-tls-ca",
            _path,
            "the scaler listener is open",
        ),
    )
    scaler_tls_key: Path | None = field(
        default=None, metadata=_flag("PEM private key of that certificate", _path, "none")
    )
    scaler_tls_ca: Path | None = field(
        default=None,
        metadata=_flag(
            "PEM CA that signs every scaler caller's client certificate (KEDA's, the peers') and "
            "every peer's",
            _path,
            "none",
        ),
    )
    peer_tls_server_name: str | None = field(
        default=None,
        metadata=_flag(
            "the replicas' certificate name: checked on the peers watched, required of watchers; "
            "needed with --scaler-tls-*",
            _text,
            "none",
        ),
    )
    max_peer_count: int = field(
        default=100_000,
        metadata=_flag(
            "a peer snapshot with a pending or in-flight count above this is refused (the route "
            "table bounds the models and tenants it names more tightly)",
            _count,
        ),
    )
    max_scaler_streams: int = field(
        default=256,
        metadata=_flag("KEDA's StreamIsActive streams open at once; more are refused", _count),
    )
    max_peer_streams: int = field(
        default=64,
        metadata=_flag(
            "peers' WatchCounts streams open at once, apart from KEDA's; more are refused", _count
        ),
    )
    admin_token_file: Path | None = field(
        default=None,
        metadata=_flag(
            "file with the bearer token /metrics and /usage ask for",
            _path,
            "none asked: the NetworkPolicy limits the admin port to the metrics scraper",
        ),
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_flag(
            "seconds a client has to send a request's headers, from the connection's opening (first "
            "request) or the request's first byte (later ones); then 408 and close",
            _seconds,
        ),
    )
    # longer than the 90 s after which Traefik v2 (K3s's edge) drops an idle connection to a
    # backend, so the edge always closes first and never sends a request down a connection the
    # gateway is closing
    keepalive_timeout: float = field(
        default=120.0, metadata=_flag("seconds an idle keep-alive connection stays open", _seconds)
    )
    max_connections: int = field(
        default=4096,
        metadata=_flag(
            "public connections open at once (lowered at start to what the descriptor limit "
            "allows); past it probes are served, others get 503",
            _count,
        ),
    )
    records: Path | None = field(
        default=None, metadata=_flag("request records file", _path, "stdout")
    )
    record_client_address: bool = field(
        default=False, metadata=_flag("put the client's address in request records", _text)
    )
    log_level: str = field(default="info", metadata=_flag("log level", _text, choices=LOG_LEVELS))


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sovereign-gateway",
        description="OpenAI-compatible gateway: routes by model, holds cold starts, "
        "serves KEDA's external-push scaler, meters usage.",
    )
    for item in fields(Settings):
        flag: _Flag = item.metadata["flag"]
        name = _flag_name(item.name)
        if item.default is MISSING:
            parser.add_argument(name, required=True, help=flag.help)
            continue
        default = (
            flag.when_left_out if flag.when_left_out is not None else _shown(item.default) or "none"
        )
        if isinstance(item.default, bool):
            parser.add_argument(name, action="store_true", help=f"{flag.help} (default: off)")
        else:
            parser.add_argument(
                name, default=None, choices=flag.choices, help=f"{flag.help} (default: {default})"
            )
    return parser


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The fields set on the command line, parsed; a field left out keeps its declared default."""
    values: dict[str, Any] = {}
    for item in fields(Settings):
        text = getattr(args, item.name)
        if isinstance(text, bool):
            if text:
                values[item.name] = True
        elif text is not None:
            flag: _Flag = item.metadata["flag"]
            values[item.name] = flag.parse(_flag_name(item.name), text)
    return values


def _check_scaler_tls(settings: Settings) -> None:
    given = {
        "--scaler-tls-cert": settings.scaler_tls_cert,
        "--scaler-tls-key": settings.scaler_tls_key,
        "--scaler-tls-ca": settings.scaler_tls_ca,
    }
    missing = [flag for flag, value in given.items() if not value]
    if missing and len(missing) < len(given):
        raise SettingsError(
            f"{', '.join(missing)}: expected with the other --scaler-tls-* flags (all three or none)"
        )
    if not missing and not settings.peer_tls_server_name:
        # peers are dialled by pod address, which no certificate names, and a watcher is told
        # from KEDA by this name alone
        raise SettingsError(
            "--peer-tls-server-name: expected with --scaler-tls-* (the name in the replicas' "
            "certificate)"
        )


def _check_held_bytes(settings: Settings) -> None:
    # a budget below one body would refuse every request of the largest accepted size
    if settings.max_held_bytes < settings.max_body_bytes:
        raise SettingsError(
            f"--max-held-bytes: expected at least --max-body-bytes ({settings.max_body_bytes}), "
            f"got {str(settings.max_held_bytes)!r}"
        )


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Settings from command-line arguments; a bad value raises SettingsError naming the flag."""
    settings = Settings(**_given(_parser().parse_args(argv)))
    _check_scaler_tls(settings)
    _check_held_bytes(settings)
    return settings
