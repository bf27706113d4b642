"""The operating systems a host may run: the one list the host steps and verification agree on.

Each entry is ``<ID>-<VERSION_ID>`` as ``/etc/os-release`` spells them. Preflight refuses any other
system, the NVIDIA repository name is derived from the entry (``debian12``, ``ubuntu2404``), and
verification's ``host.os`` check expects one of them. Templates get them rendered in through
:func:`template_variables`.
"""

from __future__ import annotations

from typing import Any

from components.config.systems import SUPPORTED_OS
from components.plan.step_protocol import in_words

__all__ = ["SUPPORTED_OS", "nvidia_repository", "os_name", "template_variables"]


def os_name(os_id: str) -> str:
    """``Debian 12`` for ``debian-12``: how a message names the system."""
    distribution, _, version = os_id.partition("-")
    return f"{distribution.capitalize()} {version}"


def nvidia_repository(os_id: str) -> str:
    """The directory of NVIDIA's CUDA network repository for the system (``ubuntu2204``)."""
    distribution, _, version = os_id.partition("-")
    return distribution + version.replace(".", "")


def template_variables() -> dict[str, Any]:
    """The list as the templates use it: ids, names in words, and NVIDIA repository names."""
    return {
        "supported_os": SUPPORTED_OS,
        "supported_os_in_words": in_words(tuple(os_name(o) for o in SUPPORTED_OS)),
        "nvidia_repositories": {o: nvidia_repository(o) for o in SUPPORTED_OS},
    }
