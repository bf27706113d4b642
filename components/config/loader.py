"""The config boundary: stack files and Pulumi config in, validated :class:`StackConfig` out.

Two entry points read the same data the same way:

* :func:`load_stack_file` reads ``stacks/Pulumi.<env>.yaml`` exactly as the Pulumi CLI stores it
  (``config:`` with ``<project>:<key>`` entries, ``secure:`` values for secrets), for ``sovereign
  validate`` and ``render`` which run without the Pulumi CLI.
* :func:`load_pulumi_config` reads the running program's config (values JSON-encoded by the engine,
  secrets already decrypted and listed as secret keys), for ``__main__.py``.

Optionally a stack names an ``inventory`` (a JSON file written by ``sovereign lab up`` or by an
ordering step) whose per-host connection facts fill in what the file leaves open.

Whatever a file holds, loading it ends in a :class:`StackConfigError` naming the line or the field,
never in another exception: only a regular file under :data:`MAX_FILE_BYTES` is read, it must be
UTF-8, YAML nesting and alias expansion are bounded (:data:`MAX_DEPTH`, :data:`MAX_NODES`), and
every string is checked for control characters and key material before the models see it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import ValidationError

from components.config.errors import (
    Problem,
    StackConfigError,
    echo,
    join_path,
    problems_from_validation_error,
)
from components.config.models import PUBLIC_KEY_TYPES, SecretInput, StackConfig

if TYPE_CHECKING:
    from components.sources.inventory import Inventory

PROJECT = "sovereign-inference"
SECRET_KEYS = frozenset({"k3sToken"})
# Keys other namespaces may legitimately set in the same stack file (providers, Pulumi itself).
_FOREIGN_NAMESPACES = ("pulumi", "kubernetes", "aws", "gcp", "azure", "hcloud", "ovh", "scaleway")
# Provider credentials a stack file may carry only as Pulumi secrets (the providers' config keys),
# each with the environment variable the provider reads instead.
PROVIDER_SECRETS: dict[str, str] = {
    "scaleway:secretKey": "SCW_SECRET_KEY",
    "ovh:applicationSecret": "OVH_APPLICATION_SECRET",
    "ovh:consumerKey": "OVH_CONSUMER_KEY",
    "ovh:clientSecret": "OVH_CLIENT_SECRET",
    "ovh:accessToken": "OVH_ACCESS_TOKEN",
    "hcloud:token": "HCLOUD_TOKEN",
}

# Limits on what is read: a stack file is a few KiB; these leave room and bound time and memory.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 32  # nesting of mappings and lists
MAX_NODES = 20_000  # YAML nodes after alias expansion (prod-fra: about 400)
MAX_PROBLEMS = 100  # reported per file; the rest are counted
LAB_UP_HINT = "sovereign lab up --hosts 2 --nvme 2"
InventoryT = TypeVar("InventoryT", bound="Inventory")


# --- reading files ---------------------------------------------------------------------------


def read_bounded(path: Path, source: str, field: str = "") -> str:
    """The text of a regular UTF-8 file under :data:`MAX_FILE_BYTES`, or a StackConfigError."""

    def refuse(message: str) -> StackConfigError:
        return StackConfigError(source, [Problem(field, message)])

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise refuse(f"cannot read file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse("cannot read file: not a regular file")
        too_big = f"file is larger than {MAX_FILE_BYTES // 1024} KiB; expected a stack file"
        if info.st_size > MAX_FILE_BYTES:
            raise refuse(too_big)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:  # the size can change while the file is read
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise refuse(f"cannot read file: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_FILE_BYTES:
        raise refuse(too_big)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise refuse(
            f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line}, column {column}; "
            "expected a UTF-8 text file"
        ) from None
    text = text.removeprefix("\ufeff")
    bad = _NOT_YAML_TEXT.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise refuse(
            f"the character U+{ord(bad.group()):04X} at line {line}, column {column} is not "
            "allowed in YAML; expected printable text"
        )
    return text


# Characters YAML 1.1 does not allow in a document (its "printable" set, inverted).
_NOT_YAML_TEXT = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# --- parsing YAML ----------------------------------------------------------------------------


class _BoundedComposer(yaml.composer.Composer):
    """PyYAML's composer with nesting depth and alias expansion bounded.

    Aliases are allowed, but every alias counts the nodes it stands for, so a small file that
    expands into millions of nodes ("billion laughs") is refused while it is being read.
    """

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}
        self._open_anchors: set[str] = set()

    peek_event: Callable[[], Any]  # from the parser it is mixed with

    def _count(self, nodes: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"the document expands to more than {MAX_NODES} values (aliases included); "
                "expected a stack file",
                mark,
            )

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            mark: Any = event.start_mark
            if event.anchor in self._open_anchors:
                raise yaml.composer.ComposerError(
                    None, None, "found a recursive alias; expected a finite document", mark
                )
            node = super().compose_node(parent, index)
            self._count(self._sizes.get(id(node), 1), event.start_mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels; expected a stack file",
                event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open_anchors.add(anchor)
        before = self._nodes
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        if anchor is not None:
            self._open_anchors.discard(anchor)
        self._count(1, event.start_mark)
        if node is not None:
            self._sizes[id(node)] = self._nodes - before
        return node


class _SafeConstructor(yaml.constructor.SafeConstructor):
    """SafeConstructor that refuses duplicate keys and turns any value error into a marked one."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, ArithmeticError):
            # e.g. an integer of 5000 digits, a timestamp with month 13
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this {_node_kind(node)} value", node.start_mark
            ) from None


def _node_kind(node: yaml.Node) -> str:
    return node.tag.rsplit(":", 1)[-1] if node.tag.startswith("tag:yaml.org,2002:") else "tagged"


class _DuplicateKey(yaml.constructor.ConstructorError):
    """A key given twice in one mapping (PyYAML would silently keep the last one)."""


def _construct_mapping(loader: Any, node: yaml.MappingNode) -> Any:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping below refuses it with its line
        if duplicate:
            shown = repr(key) if len(str(key)) <= 64 and str(key).isprintable() else "a key"
            raise _DuplicateKey(
                "first given", seen[key].start_mark, f"duplicate key {shown}", key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node)


_SafeConstructor.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

if yaml.__with_libyaml__:  # libyaml scans and parses; composing stays in Python to bound it
    from yaml._yaml import CParser as _CParser

    class _LineLoader(_BoundedComposer, _CParser, _SafeConstructor, yaml.resolver.Resolver):
        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            _SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml

    class _LineLoader(  # type: ignore[no-redef]
        yaml.reader.Reader,
        yaml.scanner.Scanner,
        yaml.parser.Parser,
        _BoundedComposer,
        _SafeConstructor,
        yaml.resolver.Resolver,
    ):
        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            _BoundedComposer.__init__(self)
            _SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)


def _at(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


_QUOTED = re.compile(r"'[^']{25,}'|\"[^\"]{25,}\"")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or "invalid YAML"
        if not isinstance(exc, _DuplicateKey):  # PyYAML's own texts may quote content
            problem = _QUOTED.sub("(value not shown)", problem)
        where = _at(exc.problem_mark) if exc.problem_mark else "an unknown position"
        message = f"YAML syntax error at {where}: {problem}"
        if isinstance(exc, _DuplicateKey) and exc.context_mark:
            message += f" (first given at {_at(exc.context_mark)})"
        elif exc.context and exc.context_mark:
            message += f" ({exc.context} that began at {_at(exc.context_mark)})"
        elif exc.context_mark and exc.context_mark is not exc.problem_mark:
            message += f" (the construct began at {_at(exc.context_mark)})"
        return message
    text = str(exc)
    return "YAML error: " + (
        _QUOTED.sub("(value not shown)", text) if len(text) < 300 else text[:300]
    )


def parse_stack_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse a stack file; a syntax error is reported with its line and column."""
    loader = _LineLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise StackConfigError(source, [Problem("", _yaml_problem(exc))]) from None
    except (RecursionError, MemoryError):
        raise StackConfigError(
            source, [Problem("", "the document is too deeply nested or too large to read")]
        ) from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise StackConfigError(source, [Problem("", "expected a mapping with a 'config:' section")])
    return data


# --- every string, before the models see it ----------------------------------------------------

# PEM/RFC 4716 armor of any private key (RSA, EC, DSA, OpenSSH, PKCS#8, encrypted, PGP), PuTTY key
# files, and the body of an OpenSSH private key without its armor (base64 of "openssh-key-v1\0").
_OPENSSH_PRIVATE_BLOB = "b3BlbnNzaC1rZXktdjE"
# The start of an SSH public-key blob (uint32 length + key type, base64): no stack field holds
# one; pasted into a stack file it is key material in the wrong place.
# every SSH public-key type: those an ordered host's ssh.publicKey may be, and those the toolkit
# does not take but that are key material all the same
_SSH_KEY_TYPES = (
    *PUBLIC_KEY_TYPES,
    "ssh-dss",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def _blob_prefix(key_type: str) -> str:
    raw = len(key_type).to_bytes(4, "big") + key_type.encode()
    whole = len(raw) // 3 * 3
    return base64.b64encode(raw[:whole]).decode()


_PUBLIC_KEY_BLOBS = tuple(_blob_prefix(t) for t in _SSH_KEY_TYPES)


def holds_key_material(value: str, *, public_keys: bool = True) -> bool:
    """True when ``value`` holds a private key (any armor, or an OpenSSH key body), or with
    ``public_keys`` an SSH public-key blob. Substring tests: this runs on every string."""
    upper = value.upper()
    if ("PRIVATE KEY" in upper and "BEGIN" in upper) or "PUTTY-USER-KEY-FILE-" in upper:
        return True
    if _OPENSSH_PRIVATE_BLOB in value:
        return True
    return public_keys and "AAAA" in value and any(b in value for b in _PUBLIC_KEY_BLOBS)


_NOT_TEXT = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_PLAIN = re.compile(r"[ -~]*")  # printable ASCII: the common case, checked fast


def string_problem(value: str, *, public_keys: bool = True) -> str | None:
    """What is wrong with a string anywhere in a stack file, or None."""
    if holds_key_material(value, public_keys=public_keys):
        return (
            "holds key material; never put key material in a stack file: give a reference "
            "such as file:PATH or env:VARIABLE, or a Pulumi secret"
        )
    if not _PLAIN.fullmatch(value):
        for char in value:
            if unicodedata.category(char) in _NOT_TEXT:
                return (
                    f"contains the control or invisible character U+{ord(char):04X}; "
                    "expected printable text"
                )
    return None


# SecretInput: a value the engine gave decrypted, already wrapped (its text is not scanned)
_SCALARS = (str, bool, int, float, type(None), SecretInput)


def scan_value(value: Any, path: str, problems: list[Problem], *, public_keys: bool = True) -> None:
    """Check every key and value below ``path``: types YAML/JSON can hold, text, secrets' shape."""
    if isinstance(value, str):
        found = string_problem(value, public_keys=public_keys)
        if found:
            problems.append(Problem(path, found))
    elif isinstance(value, dict):
        if _is_secure(value):
            secret = value["secure"]
            if not isinstance(secret, str) or not secret:
                problems.append(
                    Problem(
                        path,
                        "secure: expected a non-empty string (the ciphertext that "
                        "pulumi config set --secret writes)",
                    )
                )
                return
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(
                    Problem(
                        path,
                        f"has a {type(key).__name__} key; expected string keys "
                        "(quote keys such as yes, no, on, off, null and numbers)",
                    )
                )
                continue
            found = string_problem(key, public_keys=public_keys)
            if found:
                problems.append(Problem(path, f"a key {found}"))
                continue
            # an ordered host's ssh.publicKey is the one place a public key belongs
            public_here = public_keys and not (key == "publicKey" and path.endswith(".ssh"))
            scan_value(item, join_path(path, key), problems, public_keys=public_here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            scan_value(item, f"{path}[{i}]", problems, public_keys=public_keys)
    elif not isinstance(value, _SCALARS):
        problems.append(
            Problem(
                path,
                f"is a YAML {type(value).__name__}; expected a string, number, boolean, list or "
                "mapping (quote dates and binary values)",
            )
        )


def _scan_entries(entries: Mapping[Any, Any], problems: list[Problem], *, in_config: bool) -> None:
    for key, value in entries.items():
        if not isinstance(key, str):
            problems.append(Problem("", f"a {type(key).__name__} key; expected string keys"))
            continue
        found = string_problem(key)
        if found:
            problems.append(Problem("", f"a key {found}"))
            continue
        if key == "config" and not in_config and isinstance(value, dict):
            _scan_entries(value, problems, in_config=True)
            continue
        namespace, _, field = key.partition(":")
        scan_value(value, field if in_config and namespace == PROJECT else key, problems)


def scan_document(data: Mapping[Any, Any]) -> list[Problem]:
    """Scan a whole stack file; paths inside our namespace are the models' paths."""
    problems: list[Problem] = []
    _scan_entries(data, problems, in_config=False)
    return problems


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
                Problem(str(key), f"config keys are namespaced; expected {PROJECT}:<key>")
            )
            continue
        if namespace != PROJECT:
            if str(key) in PROVIDER_SECRETS and not _is_secure(value):
                problems.append(
                    Problem(
                        str(key),
                        "a provider credential in plain text; expected a Pulumi secret "
                        f"(pulumi config set --secret {key} ...) or the provider's environment "
                        f"variable {PROVIDER_SECRETS[str(key)]}",
                    )
                )
            if namespace not in _FOREIGN_NAMESPACES:
                problems.append(
                    Problem(
                        str(key), f"unknown namespace{echo(namespace)}; expected {PROJECT}:<key>"
                    )
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


def _secure(value: dict[str, Any]) -> Any:
    secret = value["secure"]
    # anything but a non-empty string is left for the model to refuse (scan_value names it)
    return SecretInput(secret, encrypted=True) if isinstance(secret, str) else value


def _wrap_secure_values(value: Any) -> Any:
    """Wrap every ``{secure: ...}`` value in a stack file's structured setting."""
    if _is_secure(value):
        return _secure(value)
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
            section[key] = _secure(value)
        elif from_engine and key in secret_keys and key in NESTED_SECRET_PATHS:
            for path in NESTED_SECRET_PATHS[key]:
                section[key] = _wrap_path(section[key], path)
        elif from_engine and key in secret_keys:
            section[key] = SecretInput(str(value), encrypted=False)
        else:
            section[key] = _wrap_secure_values(value)


def read_inventory(path: Path, model: type[InventoryT]) -> InventoryT:
    """An inventory file (:mod:`components.sources.inventory`) validated as ``model``, or a
    :class:`StackConfigError` whose problems, reported under ``inventory``, name each field.

    Read like a stack file (bounded, UTF-8, nesting bounded); key material anywhere in it is
    refused before the model sees any field (public host keys excepted: the lab records them)."""
    # imported here, not at the top: the model builds on components.config, whose package
    # imports this module, so a program that imports the model first would find it half-built
    from components.sources.inventory import (  # noqa: PLC0415
        INVENTORY_FIELD,
        inventory_from_document,
    )

    text = read_bounded(path, INVENTORY_FIELD, INVENTORY_FIELD)
    try:
        document = json.loads(text)
    except RecursionError:
        raise StackConfigError(
            INVENTORY_FIELD,
            [Problem(INVENTORY_FIELD, "nested too deeply; expected a host inventory")],
        ) from None
    except ValueError as exc:
        raise StackConfigError(
            INVENTORY_FIELD, [Problem(INVENTORY_FIELD, f"not JSON: {str(exc)[:120]}")]
        ) from None
    found: list[Problem] = []
    scan_value(document, "", found, public_keys=False)
    if found:
        raise StackConfigError(
            INVENTORY_FIELD,
            [Problem(INVENTORY_FIELD, f"{p.path or 'file'}: {p.message}") for p in found],
        )
    return inventory_from_document(document, model)


def _apply_inventory(
    section: dict[str, Any], base_dir: Path, problems: list[Problem], *, required: bool
) -> None:
    """Fill per-host connection facts from the inventory file, when the stack names one."""
    from components.sources.inventory import (  # noqa: PLC0415 - see read_inventory
        INVENTORY_FIELD,
        Inventory,
    )

    ref = section.get(INVENTORY_FIELD)
    if not isinstance(ref, str) or not isinstance(section.get("hosts"), list):
        return
    path = (base_dir / ref).absolute()
    if not os.path.lexists(path):
        if required:
            problems.append(
                Problem(
                    INVENTORY_FIELD,
                    f"file{echo(ref)} not found: the stack takes its hosts' addresses, ports and "
                    f"pinned host keys from it; for the lab stack start the lab first: "
                    f"{LAB_UP_HINT} (other stacks: run the step that writes it)",
                )
            )
        # not required (render for review, tests without a lab): pins stay required at rollout
        return
    try:
        inventory = read_inventory(path, Inventory)
    except StackConfigError as exc:
        problems.extend(exc.problems)
        return
    hosts = []
    for host in section["hosts"]:
        name = host.get("name") if isinstance(host, dict) else None
        entry = inventory.by_name(name) if isinstance(name, str) else None
        given_ssh = host.get("ssh") if entry is not None else None
        if entry is None or (given_ssh is not None and not isinstance(given_ssh, dict)):
            hosts.append(host)  # not in the inventory, or the model names the broken ssh section
            continue
        ssh = {
            **(given_ssh or {}),
            "port": entry.port,
            "user": entry.user,
            "privateKey": f"file:{entry.private_key}",
            "hostKey": entry.host_key,
        }
        hosts.append({**host, "address": entry.address, "ssh": ssh})
    section["hosts"] = hosts


def _covered(path: str, scanned: set[str]) -> bool:
    return any(p and (path == p or path.startswith((p + ".", p + "["))) for p in scanned)


def build_stack_config(
    section: dict[str, Any],
    source: str,
    problems: list[Problem],
    scanned: list[Problem] | None = None,
) -> StackConfig:
    """Validate a config section; ``problems`` found so far and ``scanned`` (string and type
    problems from :func:`scan_value`) are reported with the models' own, each field once."""
    scanned = scanned or []
    try:
        config = StackConfig.model_validate(section)
    except ValidationError as exc:
        problems = problems + problems_from_validation_error(exc, model=StackConfig)
        config = None
    if scanned:
        # a field refused for its characters is not also reported for its grammar
        paths = {p.path for p in scanned}
        problems = scanned + [p for p in problems if not _covered(p.path, paths)]
    if problems or config is None:
        raise StackConfigError(source, _capped(problems))
    return config


def _capped(problems: list[Problem]) -> list[Problem]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    more = len(problems) - MAX_PROBLEMS
    return [*problems[:MAX_PROBLEMS], Problem("", f"... and {more} more problem(s) not shown")]


def load_stack_file(path: str | Path, *, require_inventory: bool = False) -> StackConfig:
    """Read and validate ``stacks/Pulumi.<env>.yaml``; raises :class:`StackConfigError`.

    ``require_inventory``: a stack that names an ``inventory`` file that does not exist is refused
    (``sovereign validate``); without it the stack loads with what the file itself says (``render``
    for review, tests that use the lab stack as a template), and pins stay required at rollout.
    """
    path = Path(path)
    source = str(path)
    data = parse_stack_yaml(read_bounded(path, source), source)
    return load_stack_data(data, source, project_dir_for(path), require_inventory=require_inventory)


def load_stack_data(
    data: Mapping[Any, Any], source: str, project_dir: Path, *, require_inventory: bool = False
) -> StackConfig:
    """Validate a parsed stack file (what :func:`parse_stack_yaml` returns)."""
    scanned = scan_document(data)
    section, problems = _stack_config_section(data, source)
    _wrap_secrets(section, from_engine=False, secret_keys=SECRET_KEYS)
    _apply_inventory(section, project_dir, problems, required=require_inventory)
    return build_stack_config(section, source, problems, scanned)


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
            except (ValueError, RecursionError):
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


def load_pulumi_config(
    project_dir: Path | None = None, *, require_inventory: bool = False
) -> StackConfig:
    """Read the running Pulumi program's config (call only inside a Pulumi program or mocks)."""
    from pulumi.runtime import config as runtime_config  # noqa: PLC0415 - only under Pulumi

    raw: dict[str, Any] = dict(runtime_config.get_config_env())
    raw.update(runtime_config.CONFIG.get())
    secret = {k for k in raw if runtime_config.is_config_secret(k)}
    secret |= set(runtime_config.get_config_secret_keys_env())
    section, problems = section_from_engine(raw, frozenset(secret))
    scanned: list[Problem] = []
    for key, value in section.items():
        if not isinstance(value, SecretInput):
            scan_value(value, key, scanned)
    _apply_inventory(section, project_dir or Path.cwd(), problems, required=require_inventory)
    return build_stack_config(section, "pulumi config", problems, scanned)


def encrypted_keys(path: str | Path) -> frozenset[str]:
    """Keys whose values the stack file holds encrypted (``secure:``), without the namespace."""
    data = parse_stack_yaml(read_bounded(Path(path), str(path)), str(path))
    section, _ = _stack_config_section(data, str(path))
    return frozenset(k for k, v in section.items() if _is_secure(v))
