"""A static program that exits 0 at once, for pre-pulling images that may have no shell.

The warmer pre-pulls every serving image on its node with one init container per image. Such a
container must run something that exits 0, yet a bring-your-own image may be built ``FROM
scratch``: no shell, no ``true``, maybe no libc. The warmer's first init container therefore
writes this program into a shared ``emptyDir`` and every pre-pull container runs it from there.
It is one ELF segment whose code is the ``exit_group(0)`` system call: it needs nothing from the
image it runs in. Pure and stdlib only.
"""

from __future__ import annotations

import os
import platform
import struct
from pathlib import Path

# ELF machine number and the code of exit_group(0) on each Linux architecture GPU nodes run.
_EXIT_ZERO: dict[str, tuple[int, bytes]] = {
    # xor edi, edi; mov eax, 231 (exit_group); syscall
    "x86_64": (0x3E, bytes.fromhex("31ff b8e7000000 0f05")),
    # mov x0, #0; mov x8, #94 (exit_group); svc #0
    "aarch64": (0xB7, struct.pack("<3I", 0xD2800000, 0xD2800BC8, 0xD4000001)),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}
_LOAD_ADDRESS = 0x400000
_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")


class UnsupportedMachine(ValueError):
    """No exit-zero program is known for this processor architecture."""


def exit_zero_program(machine: str) -> bytes:
    """The bytes of a static ELF executable for ``machine`` that exits with status 0."""
    arch = _MACHINE_ALIASES.get(machine, machine)
    if arch not in _EXIT_ZERO:
        known = ", ".join(sorted(_EXIT_ZERO))
        raise UnsupportedMachine(f"machine {machine!r}: expected one of {known}")
    elf_machine, code = _EXIT_ZERO[arch]
    headers = _ELF_HEADER.size + _PROGRAM_HEADER.size
    size = headers + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1
    elf = _ELF_HEADER.pack(
        ident,
        2,  # ET_EXEC
        elf_machine,
        1,  # EV_CURRENT
        _LOAD_ADDRESS + headers,  # entry: the code right after the headers
        _ELF_HEADER.size,  # program headers follow the ELF header
        0,  # no section headers
        0,
        _ELF_HEADER.size,
        _PROGRAM_HEADER.size,
        1,
        0,
        0,
        0,
    )
    segment = _PROGRAM_HEADER.pack(
        1,  # PT_LOAD
        5,  # readable and executable
        0,
        _LOAD_ADDRESS,
        _LOAD_ADDRESS,
        size,
        size,
        0x1000,
    )
    return elf + segment + code


def write_exit_zero_program(path: Path, machine: str | None = None) -> Path:
    """Write the program for ``machine`` (this one's by default) to ``path``, executable by all."""
    path.write_bytes(exit_zero_program(machine or platform.machine()))
    # every pre-pull container runs it, under whatever user its image or the pod names
    os.chmod(path, 0o755)  # noqa: S103
    return path
