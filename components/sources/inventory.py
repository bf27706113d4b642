"""The host inventory: one typed, versioned file of connection facts (``inventory.json``).

``sovereign lab up`` writes one for its guests; a stack names it (``inventory: .lab/inventory.json``)
and the config loader fills each host the inventory knows by name with its address, SSH port, user,
private key and pinned host-key fingerprint. An inventory written for hosts other than lab guests
carries the same connection facts without the lab's bookkeeping (``pid``, ``index``, ``hostDir``).

The file is JSON with the config models' conventions: camelCase keys, unknown keys refused, every
value checked by the same field types the stack file uses. It never holds key material: the private
key is named by its path, the host key by its fingerprint and its public key line.

This module is the format's one home; the lab (``components.lab.inventory``) writes through it and
the loader (``components.config.loader``) reads through it. It imports neither pulumi nor paramiko.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from components.config.errors import (
    CrossFieldProblems,
    Problem,
    StackConfigError,
    echo,
    format_path,
    problems_from_validation_error,
)
from components.config.models import (
    KEY_FILE_PATH,
    DiskId,
    DnsLabel,
    Fingerprint,
    HostOrIp,
    Model,
    Port,
    PublicKey,
    SshUser,
)

INVENTORY_VERSION: Final = 1
INVENTORY_FILE: Final = "inventory.json"
# the stack field that names the file: every problem with the file is reported under it
INVENTORY_FIELD: Final = "inventory"

# The grammar of a path in a ``file:PATH`` key reference (components.config.models), so that the
# loader's ``file:<privateKey>`` is a valid reference; it has no room for key material (no spaces,
# no line breaks).
FILE_PATH = KEY_FILE_PATH


def _file_path(value: object) -> object:
    """A file path as the inventory writes it: text in the key-reference path grammar."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        return value  # the Path type names the wrong type
    if not FILE_PATH.fullmatch(value):
        raise ValueError("expected a file path of letters, digits and ._/~+@- (1-4096 characters)")
    return value


FilePath = Annotated[Path, BeforeValidator(_file_path)]


class InventoryHost(Model):
    """One host as an inventory records it: how to reach it, its pinned key, its NVMe drives.

    ``pid``, ``index`` and ``hostDir`` are the lab's bookkeeping (its guest process, its number and
    its files); an inventory written for other hosts has none of them.
    """

    name: DnsLabel
    address: HostOrIp
    port: Port
    user: SshUser  # the loader copies it into ssh.user
    private_key: FilePath  # the key file's path, never the key
    host_key: Fingerprint
    host_key_public: PublicKey | None = None  # the line a known_hosts entry carries
    nvme: tuple[DiskId, ...] = ()
    pid: int | None = Field(default=None, ge=1)
    index: int | None = Field(default=None, ge=0)
    host_dir: FilePath | None = None


class Inventory(Model):
    """The whole file: ``{"version": 1, "hosts": [...]}``, host names unique."""

    version: Literal[1]
    hosts: tuple[InventoryHost, ...] = ()

    @model_validator(mode="after")
    def _unique_names(self) -> Inventory:
        seen: dict[str, int] = {}
        problems = []
        for i, host in enumerate(self.hosts):
            if host.name in seen:
                problems.append(
                    Problem(
                        f"hosts[{i}].name",
                        f"duplicate host name {host.name!r} (also hosts[{seen[host.name]}]); "
                        "expected each host once",
                    )
                )
            seen.setdefault(host.name, i)
        if problems:
            raise CrossFieldProblems(problems)
        return self

    def by_name(self, name: str) -> InventoryHost | None:
        return next((host for host in self.hosts if host.name == name), None)

    def document(self) -> dict[str, Any]:
        """The file's content as JSON data (absent optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


InventoryT = TypeVar("InventoryT", bound=Inventory)


# pydantic's words for JSON's types, in the file's terms
_TYPE_WORDS = {
    "tuple_type": "expected a list",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "dict_type": "expected an object",
}


def inventory_from_document(document: object, model: type[InventoryT]) -> InventoryT:
    """Validate a parsed inventory file as ``model`` (:class:`Inventory`, or the lab's stricter
    one); raises :class:`StackConfigError` with one problem per offending field, each reported
    under ``inventory`` with the field's path in the file (``inventory: hosts[1].port: ...``)."""
    if not isinstance(document, Mapping):
        raise StackConfigError(
            INVENTORY_FIELD,
            [Problem(INVENTORY_FIELD, 'expected a JSON object {"version": 1, "hosts": [...]}')],
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        reworded = _reworded(exc)
        problems = [
            Problem(INVENTORY_FIELD, f"{p.path or 'file'}: {reworded.get(p.path, p.message)}")
            for p in problems_from_validation_error(exc, model=model)
        ]
        raise StackConfigError(INVENTORY_FIELD, problems) from None


def _reworded(exc: ValidationError) -> dict[str, str]:
    """Messages said in the file's terms, by field path: JSON's types, the version."""
    messages = {}
    for err in exc.errors(include_url=False):
        path = format_path(err["loc"])
        if path == "version" and err["type"] == "literal_error":
            found = f" {err['input']!r}" if echo(err["input"]) else ""
            messages[path] = (
                f"is{found}; expected the number {INVENTORY_VERSION}, the inventory version this "
                "toolkit reads"
            )
        elif err["type"] in _TYPE_WORDS:
            messages[path] = _TYPE_WORDS[err["type"]]
    return messages
