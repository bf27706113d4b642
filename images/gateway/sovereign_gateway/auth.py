"""API keys: a file of ``tenant:sha256hex`` lines, checked in constant time, never logged.

One home for the file's format: the plan writes it with :func:`api_key_line`, ``sovereign render``
shows it with :func:`redacted_api_keys`, and the gateway reads it with :func:`parse_api_keys`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from sovereign_gateway.routes import TENANT_NAME

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_SEPARATOR = ":"

ANONYMOUS = "anonymous"
"""The tenant that requests are counted under when authentication is off."""


class ApiKeyFileError(ValueError):
    """The key file is unreadable or a line is malformed (the message never holds a key hash)."""


@dataclass(frozen=True)
class ApiKeys:
    """The digests of the accepted keys, each with its tenant."""

    entries: tuple[tuple[str, bytes], ...]

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant of a ``Bearer <key>`` header, or None for a missing or unknown key.

        Every digest is compared, with ``hmac.compare_digest``, so the time taken does not depend
        on which entry (if any) matches or on how much of a digest matches.
        """
        if not authorization:
            return None
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest = hashlib.sha256(key.strip().encode()).digest()
        found: str | None = None
        for tenant, expected in self.entries:
            if hmac.compare_digest(digest, expected) and found is None:
                found = tenant
        return found

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(tenant for tenant, _ in self.entries)


def api_key_line(tenant: str, key: str) -> str:
    """The key file's line for ``tenant``'s ``key``: only the key's SHA-256 is written."""
    return f"{tenant}{_SEPARATOR}{hashlib.sha256(key.encode()).hexdigest()}\n"


def redacted_api_keys(text: str, marker: str) -> str:
    """A key file as a reviewer sees it: each line's tenant, its digest replaced by ``marker``."""
    return "".join(
        f"{line.partition(_SEPARATOR)[0]}{_SEPARATOR}{marker}\n" for line in text.splitlines()
    )


def parse_api_keys(text: str, source: str) -> ApiKeys:
    """Parse ``tenant:sha256hex`` lines; blank lines and ``#`` comments are skipped."""
    entries: list[tuple[str, bytes]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tenant, sep, digest = line.partition(_SEPARATOR)
        if not sep or not TENANT_NAME.fullmatch(tenant):
            raise ApiKeyFileError(
                f"{source} line {number}: expected tenant:sha256hex with the tenant a DNS label"
            )
        if not _SHA256_HEX.fullmatch(digest.lower()):
            raise ApiKeyFileError(
                f"{source} line {number}: expected the key's SHA-256 as 64 hex digits after "
                f"'{tenant}:'"
            )
        entries.append((tenant, bytes.fromhex(digest)))
    if not entries:
        raise ApiKeyFileError(f"{source}: expected at least one tenant:sha256hex line")
    return ApiKeys(tuple(entries))


def load_api_keys(path: Path) -> ApiKeys:
    """Read the key file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ApiKeyFileError(f"api key file {path}: cannot read: {error.strerror}") from None
    return parse_api_keys(text, f"api key file {path}")
