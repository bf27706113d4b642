"""One check's verdict, named the way a failure must read: layer, host, check, observed, expected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from components.plan.checks import check_id

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Finding:
    layer: str
    host: str
    check: str
    status: Status
    observed: str
    expected: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """The planned check's id (``components.plan.checks``); the host is a column of its own."""
        return check_id(self.layer, self.check)

    def message(self) -> str:
        return (
            f"[{self.layer}] {self.host} {self.check}: observed {self.observed}, "
            f"expected {self.expected}"
        )


def verdict(
    layer: str,
    host: str,
    check: str,
    ok: bool,
    observed: object,
    expected: object,
    **evidence: Any,
) -> Finding:
    return Finding(
        layer, host, check, "pass" if ok else "fail", str(observed), str(expected), evidence
    )


def skipped(layer: str, host: str, check: str, reason: str) -> Finding:
    return Finding(layer, host, check, "skip", reason, "-", {})
