"""Where the host-setup templates live and how they are rendered (StrictUndefined, no logic).

Every template sees the step protocol's codes, tags and modes and the supported OS list as
variables: those are stated once, in ``step_protocol`` and ``host_os``, never in a template.
"""

from __future__ import annotations

import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from components.plan import host_os, step_protocol

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def template_dir() -> Path:
    """``host-setup/`` in a source checkout, or its copy inside an installed wheel."""
    for candidate in (_PACKAGE_DIR / "_host_setup", _PACKAGE_DIR.parent / "host-setup"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("host-setup templates not found next to the components package")


def _shell_quote(value: object) -> str:
    return shlex.quote(str(value))


def _shell_words(values: Any) -> str:
    return " ".join(shlex.quote(str(v)) for v in values)


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders shell scripts, not HTML; values go through |q
        keep_trailing_newline=True,
        # bash uses "{#" in "${#array[@]}": move Jinja comments out of its way
        comment_start_string="<#--",
        comment_end_string="--#>",
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = _shell_quote
    env.filters["words"] = _shell_words
    env.globals.update(step_protocol.template_variables())
    env.globals.update(host_os.template_variables())
    return env


def render_template(name: str, **variables: Any) -> str:
    return environment().get_template(name).render(**variables)
