"""``sovereign render``'s output directory: the plan's review files, written to disk.

The plan builds the files (``components.plan.render``, pure); this module is the only place that
writes them. A directory is replaced as a whole, so no file of an earlier render survives, and
only when an earlier render wrote it: a directory holding anything else is refused untouched.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from components.config.models import StackConfig
from components.plan.render import RenderedFile, render_files

MARKER = ".sovereign-render"


class RenderTargetNotEmpty(Exception):
    """The output directory holds files this tool did not write; nothing is overwritten."""


def _prepare_out_dir(out: Path) -> None:
    """Start from an empty tree so no stale file survives; never clear a foreign directory."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise RenderTargetNotEmpty(
                f"{out} is not empty and was not written by 'sovereign render'; "
                "choose an empty or new directory"
            )
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "written by sovereign render; the whole tree is replaced on each run\n"
    )


def write_tree(files: Iterable[RenderedFile], out: Path) -> list[Path]:
    """Replace the tree under ``out`` with ``files``; return the paths written, in their order."""
    _prepare_out_dir(out)
    written = []
    for file in files:
        path = out / file.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file.text)
        path.chmod(file.mode)
        written.append(path)
    return written


def render_stack(config: StackConfig, out: Path) -> list[Path]:
    """Write the review tree of ``config`` under ``out`` (layout: ``render_files``)."""
    return write_tree(render_files(config), out)
