"""``sovereign lab ...`` subcommands."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    lab: argparse.ArgumentParser = sub.add_parser("lab", help="local QEMU lab hosts")
    lab.set_defaults(func=lambda _args: lab.print_help() or 2)
