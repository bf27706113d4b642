"""Mutual TLS on the scaler listener: who may read counts (KEDA, the peers) and push them (peers).

The listener asks every caller for a client certificate signed by ``--scaler-tls-ca`` and refuses
the handshake without one, so a caller that merely reaches the port reads nothing and pushes
nothing. Replicas present their own serving certificate when they watch each other, and check the
peer's against the same CA under ``--peer-tls-server-name`` (peers are dialled by pod address,
which no certificate names). The same name tells a replica from KEDA on the listener: only a
caller whose certificate carries it may watch the counts (``GatewayPeers.WatchCounts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

SERVER_NAME_OVERRIDE_OPTION: Final = "grpc.ssl_target_name_override"
"""The channel option under which a peer's certificate is checked for a name other than the
address dialled."""


def caller_names(context: grpc.aio.ServicerContext[object, object]) -> set[str]:
    """The DNS names (subject alternative names and common name) of the caller's certificate,
    as the handshake verified it; empty on a plaintext listener."""
    auth = context.auth_context()
    names = [*auth.get("x509_subject_alternative_name", ()), *auth.get("x509_common_name", ())]
    return {n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names}


class ScalerTlsError(ValueError):
    """A certificate, key or CA file is unreadable or not PEM; the message names the flag."""


@dataclass(frozen=True)
class ScalerTls:
    """The PEM material of one replica: its certificate and key, and the CA of its callers."""

    certificate: bytes
    private_key: bytes
    ca: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate)],
            root_certificates=self.ca,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca,
            private_key=self.private_key,
            certificate_chain=self.certificate,
        )


def _read_pem(path: Path, flag: str, marker: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ScalerTlsError(f"{flag}: cannot read {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data or marker not in data:
        raise ScalerTlsError(f"{flag}: expected a PEM {marker.decode()} in {path}")
    return data


def load_scaler_tls(certificate: Path, private_key: Path, ca: Path) -> ScalerTls:
    """Read the three PEM files named by ``--scaler-tls-cert``, ``-key`` and ``-ca``."""
    return ScalerTls(
        certificate=_read_pem(certificate, "--scaler-tls-cert", b"CERTIFICATE"),
        private_key=_read_pem(private_key, "--scaler-tls-key", b"PRIVATE KEY"),
        ca=_read_pem(ca, "--scaler-tls-ca", b"CERTIFICATE"),
    )
