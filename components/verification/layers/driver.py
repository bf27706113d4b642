"""The driver layer: the NVML health probe's reading and the kernel's XID log, judged by
:mod:`components.verification.gpu_health`."""

from __future__ import annotations

import json
from typing import Any

from components.verification.gpu_health import evaluate_gpu_probe
from components.verification.layers.facts import Context
from components.verification.results import Finding

# The sections each check reads (a per-GPU check reads the probe too).
SOURCES: dict[str, tuple[str, ...]] = {"xid-fatal": ("kernel_xid",), "*": ("gpu_probe",)}


def parse_probe(text: str) -> dict[str, Any]:
    """The probe's JSON (its last line), or a reading that says why there is none (pure)."""
    try:
        reading: dict[str, Any] = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        return {"nvml": "unreadable", "error": text[:200] or "no probe output"}
    return reading


def judge(ctx: Context) -> list[Finding]:
    return evaluate_gpu_probe(
        ctx.host.name,
        parse_probe(ctx.facts.get("gpu_probe")),
        ctx.host.gpu,
        ctx.config.nvidia,
        ctx.config.verification.gpu,
        ctx.facts.get("kernel_xid"),
    )
