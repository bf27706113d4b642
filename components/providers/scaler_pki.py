"""The ``ScalerPki`` dynamic provider: the CA and certificates of the gateway's scaler listener.

One private CA per stack signs two certificates: the gateway replicas' (server and client: they
serve KEDA and each other, and present it when they watch a peer) and KEDA's client certificate.
The CA's own key signs them in ``create`` and is then thrown away, so nobody, this program
included, can mint another certificate the gateway would accept; a change of the names (or a
``pulumi up --replace``) issues a new set. Keys leave ``create`` only as Pulumi secrets.

This module path and the class names are part of every stack's state (Pulumi pickles the provider
by reference): keep them.
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pulumi import Input, Output, ResourceOptions
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

VALIDITY_DAYS: Final = 3650
"""Ten years: the set is replaced by reissuing it, not by expiry, which no one would watch."""

SECRET_OUTPUTS: Final = ("serverKey", "kedaKey")


@dataclass(frozen=True)
class ScalerCertificates:
    """PEM text of the CA certificate, the gateway's certificate and key, KEDA's and its key."""

    caCert: str  # noqa: N815  (the output names Pulumi state keeps)
    serverCert: str  # noqa: N815
    serverKey: str  # noqa: N815
    kedaCert: str  # noqa: N815
    kedaKey: str  # noqa: N815


def ca_fingerprint(ca_pem: str) -> str:
    """The CA certificate's SHA-256 fingerprint (hex of its DER form): the set's resource id,
    and the pod annotation that restarts the gateway and KEDA when the CA changes."""
    cert = x509.load_pem_x509_certificate(ca_pem.encode())
    return cert.fingerprint(hashes.SHA256()).hex()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue_scaler_certificates(
    server_names: list[str], now: datetime.datetime | None = None
) -> ScalerCertificates:
    """A fresh CA and the two certificates it signs; ``server_names`` go in the gateway's SANs.

    ECDSA P-256: what Go's crypto/tls (KEDA) and gRPC's BoringSSL (the gateway) both accept.
    """
    if not server_names:
        raise ValueError(
            "server_names: expected at least one DNS name for the gateway's certificate"
        )
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=VALIDITY_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("sovereign-gateway scaler CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        common_name: str, usages: list[x509.ObjectIdentifier], names: list[str]
    ) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
        return _cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key)

    server_cert, server_key = leaf(
        server_names[0],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        server_names,
    )
    keda_cert, keda_key = leaf("keda-operator", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    return ScalerCertificates(
        caCert=_cert_pem(ca),
        serverCert=server_cert,
        serverKey=server_key,
        kedaCert=keda_cert,
        kedaKey=keda_key,
    )


class ScalerPkiProvider(ResourceProvider):
    """Issues the set in ``create``; any change of the names replaces it."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        names = [str(n) for n in props["serverNames"]]
        issued = issue_scaler_certificates(names)
        return CreateResult(id_=ca_fingerprint(issued.caCert), outs={**props, **asdict(issued)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = list(olds.get("serverNames") or []) != list(news.get("serverNames") or [])
        return DiffResult(
            changes=changed,
            replaces=["serverNames"] if changed else [],
            delete_before_replace=False,
        )


class ScalerPki(Resource, module="sovereign", name="ScalerPki"):
    """The scaler listener's certificates (outputs named as :class:`ScalerCertificates`)."""

    caCert: Output[str]  # noqa: N815
    serverCert: Output[str]  # noqa: N815
    serverKey: Output[str]  # noqa: N815
    kedaCert: Output[str]  # noqa: N815
    kedaKey: Output[str]  # noqa: N815

    def __init__(
        self, name: str, server_names: Input[list[str]], opts: ResourceOptions | None = None
    ) -> None:
        secret = ResourceOptions(additional_secret_outputs=list(SECRET_OUTPUTS))
        super().__init__(
            ScalerPkiProvider(),
            name,
            {
                "serverNames": server_names,
                **dict.fromkeys(ScalerCertificates.__dataclass_fields__),
            },
            ResourceOptions.merge(opts, secret),
        )
