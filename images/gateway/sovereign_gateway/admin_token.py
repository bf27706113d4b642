"""The admin listener's optional bearer token: read from a file, compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MIN_TOKEN_CHARS: Final = 16


class AdminTokenError(ValueError):
    """The token file is unreadable or holds no usable token (the message never holds it)."""


@dataclass(frozen=True)
class AdminToken:
    """What ``Authorization: Bearer <token>`` must carry for ``/metrics`` and ``/usage``."""

    value: bytes

    def admits(self, authorization: str | None) -> bool:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self.value)


def load_admin_token(path: Path) -> AdminToken:
    """The token in ``path`` (``--admin-token-file``), surrounding whitespace removed."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise AdminTokenError(f"--admin-token-file: cannot read {path}: {reason}") from None
    if len(text) < MIN_TOKEN_CHARS or any(c.isspace() for c in text):
        raise AdminTokenError(
            f"--admin-token-file: expected one token of at least {MIN_TOKEN_CHARS} characters "
            f"without spaces in {path}"
        )
    return AdminToken(text.encode())
