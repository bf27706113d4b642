"""Config errors that name every offending field by its path, before any machine is touched."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a stack: where (``hosts[2].gpu.count``) and what was expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


# Longest value an error message may quote; longer ones are named by their field only (a value
# that long may be a secret or key material pasted into the wrong field).
MAX_ECHO = 24


def echo(value: object, *, quote: bool = True) -> str:
    """`` 'value'`` to splice into a message when the value is short, else nothing."""
    text = str(value)
    if len(text) > MAX_ECHO or not text.isprintable():
        return ""
    return f" {text!r}" if quote else f" {text}"


class CrossFieldProblems(ValueError):
    """Raised by model validators that check rules spanning several fields.

    It carries one :class:`Problem` per violation, each with a path relative to the model that
    raised it, so the caller can report all of them with full paths instead of one vague message.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


class StackConfigError(Exception):
    """A stack file or Pulumi config that cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


def format_path(loc: Iterable[int | str]) -> str:
    """Turn a pydantic location tuple into ``hosts[2].gpu.count``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in {"list", "dict", "[key]"}:
            continue  # pydantic internals for union branches and wrappers, not user paths
        else:
            out += f".{part}" if out else part
    return out


def join_path(prefix: str, rest: str) -> str:
    if not prefix:
        return rest
    if not rest:
        return prefix
    return prefix + rest if rest.startswith("[") else f"{prefix}.{rest}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds, itself or inside ``X | None``, ``tuple[X, ...]``..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        args = args[:1]  # the annotated type; the rest are validators
    for arg in args:  # X | None, tuple[X, ...], dict[str, X]
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def keys_at(model: type[BaseModel], loc: Iterable[int | str]) -> list[str]:
    """The keys a stack file may write in the mapping at ``loc`` below ``model`` (camelCase, as
    in the file); empty when ``loc`` leads to no model."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or part.startswith("function-"):
            continue
        fields = current.model_fields if current else {}
        field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        current = _model_in(field.annotation) if field else None
    if current is None:
        return []
    return [field.alias or name for name, field in current.model_fields.items()]


def unknown_field_message(key: str, allowed: Sequence[str]) -> str:
    """What to say about a key the model does not know: the closest allowed key, when one is
    close enough to be a misspelling of it."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field (check the spelling; see the README's config table)"


def _number_for_text(value: object) -> str | None:
    """The hint for a number where text is expected: YAML reads ``cudaVersion: 12.8`` as the float
    12.8 (and ``12.10`` as 12.1, losing the written digits), so the value must be quoted."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return (
        f"expected text, got the number {value!r}: YAML reads an unquoted {value!r} as a number "
        f'(and 12.10 as 12.1); put the value in quotes, e.g. "{value}"'
    )


def problems_from_validation_error(
    exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None
) -> list[Problem]:
    """Flatten a pydantic error into problems, expanding cross-field problem lists.

    ``model``: the model that was validated; with it, an unknown key is answered with the closest
    key the model allows at that place."""
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        path = join_path(prefix, format_path(err["loc"]))
        ctx = err.get("ctx") or {}
        inner = ctx.get("error")
        if isinstance(inner, CrossFieldProblems):
            problems.extend(Problem(join_path(path, p.path), p.message) for p in inner.problems)
            continue
        message = err["msg"]
        hint = _number_for_text(err.get("input")) if err["type"] == "string_type" else None
        if err["type"] == "extra_forbidden":
            *parent, key = err["loc"]
            allowed = keys_at(model, parent) if model is not None else []
            message = unknown_field_message(str(key), allowed)
        elif hint is not None and not _is_sensitive(err["loc"]):
            problems.append(Problem(path, hint))
            continue
        elif err["type"] == "missing":
            message = "required field is missing"
        elif message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        elif message.startswith("Assertion failed, "):
            message = message.removeprefix("Assertion failed, ")
        if (
            err["type"] not in {"extra_forbidden", "missing"}
            and "input" in err
            and not _is_sensitive(err["loc"])
        ):
            shown = _short_repr(err["input"])
            if shown is not None:
                message = f"{message} (got {shown})"
        problems.append(Problem(path, message))
    return problems


_SENSITIVE_MARKERS = ("token", "secret", "password", "privatekey", "passphrase")


def _is_sensitive(loc: Iterable[int | str]) -> bool:
    """Never echo the input of a field that may hold a secret, even when it is invalid."""
    return any(
        isinstance(part, str) and any(m in part.lower() for m in _SENSITIVE_MARKERS) for part in loc
    )


def _short_repr(value: object) -> str | None:
    if isinstance(value, str | int | float | bool) or value is None:
        return repr(value) if echo(value) else None
    return None  # containers and other objects: the path already says where
