"""The S3-compatible object store: endpoint policy, client settings and the client itself.

boto3 signs and retries requests; this module only decides which endpoint may be used and how the
client is configured. The endpoint check runs before a client exists, so a refused endpoint never
sees a request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sovereign_weights.errors import EndpointRefused, UsageError

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_s3 import S3Client

_DEFAULT_PORTS = {"http": 80, "https": 443}


def error_code(exc: ClientError) -> str:
    """The S3 error code of a failed request (``NoSuchKey``, ``404``...), ``?`` when it has none."""
    return exc.response.get("Error", {}).get("Code", "?")


def normalize_endpoint(url: str) -> str:
    """``scheme://host[:port]`` in lower case, default port dropped; a :class:`UsageError` else."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"endpoint {url!r}: bad port: {exc}") from exc
    if (
        parts.scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.path not in {"", "/"}
        or parts.query
        or parts.username
    ):
        raise UsageError(f"endpoint {url!r}: expected http(s)://HOST[:PORT] without a path")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def check_endpoint_allowed(endpoint: str, allowed: Iterable[str] | None) -> str:
    """The normalized endpoint, or :class:`EndpointRefused` when ``allowed`` does not list it.

    ``allowed=None`` means no policy was given (the standalone tool without
    ``--allowed-endpoints``); an empty list allows nothing.
    """
    normalized = normalize_endpoint(endpoint)
    if allowed is None:
        return normalized
    permitted = sorted({normalize_endpoint(a) for a in allowed})
    if normalized not in permitted:
        raise EndpointRefused(
            f"endpoint {normalized} is not an allowed object-store endpoint "
            f"(allowed: {', '.join(permitted) or 'none'}); no request was made"
        )
    return normalized


@dataclass(frozen=True)
class StoreSettings:
    """How to reach one object store. Credentials come from the standard AWS chain (the
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` variables, or a shared credentials file such
    as a mounted Kubernetes secret, given as ``credentials_file``)."""

    endpoint: str
    region: str | None = None
    credentials_file: Path | None = None
    profile: str | None = None
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    max_attempts: int = 5
    max_connections: int = 16


def make_client(settings: StoreSettings) -> S3Client:
    """A boto3 S3 client for ``settings.endpoint`` (path-style addressing)."""
    import boto3  # noqa: PLC0415 - keeps the pure modules importable without boto3 loaded
    import botocore.session  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    core = botocore.session.Session(profile=settings.profile)
    if settings.credentials_file is not None:
        if not settings.credentials_file.is_file():
            raise UsageError(f"--credentials-file {settings.credentials_file}: no such file")
        core.set_config_variable("credentials_file", str(settings.credentials_file))
    session = boto3.Session(botocore_session=core)
    config = Config(
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=settings.max_connections,
        # Path-style keys: EU stores (IONOS, Hetzner, OVHcloud, Scaleway) serve them, and they
        # need no wildcard DNS or certificate for bucket subdomains.
        s3={"addressing_style": "path"},
        # botocore 1.36 began adding CRC checksums to every upload by default; several
        # S3-compatible stores reject them. Send and check them only where S3 requires it: the
        # manifest's sha256 is what this tool verifies.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return session.client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=settings.region,
        config=config,
    )
