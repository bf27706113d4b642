"""The config boundary: stack files and Pulumi config in, validated :class:`StackConfig` out.

Two entry points read the same data the same way:

* :func:`load_stack_file` reads ``stacks/Pulumi.<env>.yaml`` exactly as the Pulumi CLI stores it
  (``config:`` with ``<project>:<key>`` entries, ``secure:`` values for secrets), for ``sovereign
  validate`` and ``render`` which run without the Pulumi CLI.
* :func:`load_pulumi_config` reads the running program's config (values JSON-encoded by the engine,
  secrets already decrypted and listed as secret keys), for ``__main__.py``.

Optionally a stack names an ``inventory`` (a JSON file written by ``sovereign lab up`` or by an
ordering step) whose per-host connection facts fill in what the file leaves open.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from components.config.errors import Problem, StackConfigError, problems_from_validation_error
from components.config.models import SecretInput, StackConfig

PROJECT = "sovereign-inference"
SECRET_KEYS = frozenset({"k3sToken"})
# Keys other namespaces may legitimately set in the same stack file (providers, Pulumi itself).
_FOREIGN_NAMESPACES = ("pulumi", "kubernetes", "aws", "gcp", "azure", "hcloud", "ovh", "scaleway")


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen[key] = key_node
    return loader.construct_mapping(node)


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_stack_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse a stack file; a syntax error is reported with its line and column."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = exc.problem or str(exc)
        raise StackConfigError(
            source, [Problem("", f"YAML syntax error at {where}: {what}")]
        ) from None
    except yaml.YAMLError as exc:
        raise StackConfigError(source, [Problem("", f"YAML error: {exc}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StackConfigError(source, [Problem("", "expected a mapping with a 'config:' section")])
    return data


def _stack_config_section(
    data: Mapping[str, Any], source: str
) -> tuple[dict[str, Any], list[Problem]]:
    """Strip the project namespace; report keys in our namespace we do not know."""
    config = data.get("config")
    if not isinstance(config, dict):
        raise StackConfigError(
            source, [Problem("config", "missing; expected a mapping of settings")]
        )
    section: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, value in config.items():
        namespace, sep, name = str(key).partition(":")
        if not sep:
            problems.append(
                Problem(str(key), f"config keys are namespaced; expected {PROJECT}:{key}")
            )
            continue
        if namespace != PROJECT:
            if namespace not in _FOREIGN_NAMESPACES:
                problems.append(
                    Problem(str(key), f"unknown namespace {namespace!r}; expected {PROJECT}:<key>")
                )
            continue
        section[name] = value
    return section, problems


# Secrets inside structured keys, as paths below the top-level key (``*`` is every list item). The
# engine marks the whole top-level key secret when any value inside it is; these are the leaves
# that are secrets of their own.
NESTED_SECRET_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "inference": (("gateway", "tenants", "*", "apiKey"),),
}


def _is_secure(value: object) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"}


def _wrap_secure_values(value: Any) -> Any:
    """Wrap every ``{secure: ...}`` value in a stack file's structured setting."""
    if _is_secure(value):
        return SecretInput(str(value["secure"]), encrypted=True)
    if isinstance(value, dict):
        return {k: _wrap_secure_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wrap_secure_values(v) for v in value]
    return value


def _wrap_path(value: Any, path: tuple[str, ...]) -> Any:
    """Wrap the plain strings at ``path`` (decrypted by the engine) as secrets."""
    if not path:
        return SecretInput(value, encrypted=False) if isinstance(value, str) else value
    head, rest = path[0], path[1:]
    if head == "*" and isinstance(value, list):
        return [_wrap_path(item, rest) for item in value]
    if isinstance(value, dict) and head in value:
        return {**value, head: _wrap_path(value[head], rest)}
    return value


def _wrap_secrets(
    section: dict[str, Any], *, from_engine: bool, secret_keys: frozenset[str]
) -> None:
    """Mark secret values so the model can tell a real secret from a pasted plain value."""
    for key, value in list(section.items()):
        if _is_secure(value):
            section[key] = SecretInput(str(value["secure"]), encrypted=True)
        elif from_engine and key in secret_keys and key in NESTED_SECRET_PATHS:
            for path in NESTED_SECRET_PATHS[key]:
                section[key] = _wrap_path(section[key], path)
        elif from_engine and key in secret_keys:
            section[key] = SecretInput(str(value), encrypted=False)
        else:
            section[key] = _wrap_secure_values(value)


def _apply_inventory(section: dict[str, Any], base_dir: Path, problems: list[Problem]) -> None:
    """Fill per-host connection facts from the inventory file, when the stack names one."""
    ref = section.get("inventory")
    if not isinstance(ref, str) or not isinstance(section.get("hosts"), list):
        return
    path = (base_dir / ref).resolve()
    if not path.exists():
        return  # the inventory is runtime state (e.g. a lab not yet started); pins stay required at rollout
    try:
        inventory = json.loads(path.read_text())
        by_name = {h["name"]: h for h in inventory["hosts"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problems.append(Problem("inventory", f"cannot read {path}: {exc}"))
        return
    hosts = []
    for host in section["hosts"]:
        if not isinstance(host, dict) or host.get("name") not in by_name:
            hosts.append(host)
            continue
        entry = by_name[host["name"]]
        merged = dict(host)
        merged["address"] = entry.get("address", host.get("address"))
        ssh = dict(host.get("ssh") or {})
        for field in ("port", "user", "hostKey"):
            if field in entry:
                ssh[field] = entry[field]
        if "privateKey" in entry:
            ssh["privateKey"] = f"file:{entry['privateKey']}"
        merged["ssh"] = ssh
        hosts.append(merged)
    section["hosts"] = hosts


def build_stack_config(
    section: dict[str, Any], source: str, problems: list[Problem]
) -> StackConfig:
    try:
        config = StackConfig.model_validate(section)
    except ValidationError as exc:
        problems = problems + problems_from_validation_error(exc)
        raise StackConfigError(source, problems) from None
    if problems:
        raise StackConfigError(source, problems)
    return config


def load_stack_file(path: str | Path) -> StackConfig:
    """Read and validate ``stacks/Pulumi.<env>.yaml``; raises :class:`StackConfigError`."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise StackConfigError(source, [Problem("", f"cannot read file: {exc.strerror}")]) from None
    data = parse_stack_yaml(text, source)
    section, problems = _stack_config_section(data, source)
    _wrap_secrets(section, from_engine=False, secret_keys=SECRET_KEYS)
    _apply_inventory(section, project_dir_for(path), problems)
    return build_stack_config(section, source, problems)


def project_dir_for(stack_file: Path) -> Path:
    """The directory holding Pulumi.yaml for a stack file (stacks/ sits inside it)."""
    here = stack_file.resolve().parent
    for candidate in (here, *here.parents):
        if (candidate / "Pulumi.yaml").exists():
            return candidate
    return here


def section_from_engine(
    raw: Mapping[str, Any], secret_keys: frozenset[str]
) -> tuple[dict[str, Any], list[Problem]]:
    """Turn the engine's flat ``project:key -> JSON string`` map into a config section."""
    section: dict[str, Any] = {}
    problems: list[Problem] = []
    for full_key, value in raw.items():
        namespace, _, name = full_key.partition(":")
        if namespace != PROJECT:
            continue
        decoded: Any = value
        if isinstance(value, str) and value[:1] in "{[":
            try:
                decoded = json.loads(value)
            except ValueError:
                problems.append(Problem(name, "structured value is not valid JSON"))
                continue
        section[name] = decoded
    _wrap_secrets(
        section,
        from_engine=True,
        secret_keys=frozenset(
            k.partition(":")[2] for k in secret_keys if k.startswith(PROJECT + ":")
        ),
    )
    return section, problems


def load_pulumi_config(project_dir: Path | None = None) -> StackConfig:
    """Read the running Pulumi program's config (call only inside a Pulumi program or mocks)."""
    from pulumi.runtime import config as runtime_config  # noqa: PLC0415 - only under Pulumi

    raw: dict[str, Any] = dict(runtime_config.get_config_env())
    raw.update(runtime_config.CONFIG.get())
    secret = {k for k in raw if runtime_config.is_config_secret(k)}
    secret |= set(runtime_config.get_config_secret_keys_env())
    section, problems = section_from_engine(raw, frozenset(secret))
    _apply_inventory(section, project_dir or Path.cwd(), problems)
    return build_stack_config(section, "pulumi config", problems)


def encrypted_keys(path: str | Path) -> frozenset[str]:
    """Keys whose values the stack file holds encrypted (``secure:``), without the namespace."""
    data = parse_stack_yaml(Path(path).read_text(), str(path))
    section, _ = _stack_config_section(data, str(path))
    return frozenset(k for k, v in section.items() if isinstance(v, dict) and set(v) == {"secure"})
