"""The operating systems a host may run: the one list the config, the host steps, the machine
sources and verification agree on.

Each entry is ``<ID>-<VERSION_ID>`` as ``/etc/os-release`` spells them. Preflight refuses any other
system, an ordered machine is installed with one of them, and verification's ``host.os`` check
expects one of them.
"""

from __future__ import annotations

from typing import Literal, get_args

# Ubuntu 22.04 (OpenSSH 8.9), Debian 12 (OpenSSH 9.2) and Ubuntu 24.04 (OpenSSH 9.6): the releases
# NVIDIA's CUDA repository serves the pinned driver branches for, and whose sshd knows every
# algorithm the base step configures.
OsId = Literal["debian-12", "ubuntu-22.04", "ubuntu-24.04"]
SUPPORTED_OS: tuple[str, ...] = get_args(OsId)
