"""When two spellings name the same registry, object-store endpoint or country.

The config boundary (``sovereign validate``), the policy pack (``pulumi preview``), the plan's
network policies and post-deploy verification all decide whether something lies inside a stack's
residency policy. They compare through these functions only, so that ``Registry.EU.example`` and
``registry.eu.example:443``, or ``[2001:DB8:0::1]`` and ``2001:db8::1``, get the same answer in
every one of them; a stack that passes ``validate`` then passes the pack and verification too.

Where a location lies is :func:`region_country` (the provider location table in
:mod:`components.config.catalog`), re-exported here so that callers import residency rules from
one module.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from sovereign_weights.errors import UsageError
from sovereign_weights.store import normalize_endpoint as runtime_normalize_endpoint

from components.config.catalog import region_country

__all__ = [
    "DEFAULT_REGISTRY",
    "country_allowed",
    "endpoint_allowed",
    "endpoint_port",
    "normalize_endpoint",
    "normalize_registry",
    "region_country",
    "registry_allowed",
    "registry_of",
]

# distribution/reference (normalize.go): images without a registry come from Docker Hub, and its
# legacy "Docker Index" name is the same registry.
DEFAULT_REGISTRY = "docker.io"
_LEGACY_DEFAULT_REGISTRY = "index.docker.io"
_LOCALHOST = "localhost"
# Registries speak HTTPS (the OCI distribution spec); ``host:443`` is ``host``.
REGISTRY_DEFAULT_PORT = 443
_DEFAULT_PORTS = {"http": 80, "https": 443}
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)
_ALPHA_2 = re.compile(r"[A-Za-z]{2}", re.ASCII)


def _canonical_host(host: str) -> str:
    """A host name lower-cased, an address in its canonical form, IPv6 in brackets."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not host or any(c in host for c in "[]/@: "):
            raise ValueError(f"{host!r} is not a host name or address") from None
        return host.lower()
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _registry_parts(text: str) -> tuple[str, int | None]:
    """``HOST[:PORT]`` split into a canonical host and the port when one is given."""
    if text.startswith("["):
        address, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"registry {text!r}: expected [IPV6] or [IPV6]:PORT")
        host, port = address, rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"registry {text!r}: brackets hold an IPv6 address") from None
    elif text.count(":") > 1:
        host, port = text, None  # an IPv6 address written without brackets has no port
    else:
        host, _, given = text.partition(":")
        port = given if ":" in text else None
    if port is not None and (not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535):
        raise ValueError(f"registry {text!r}: expected a port from 1 to 65535")
    canonical = _canonical_host(host)
    if canonical == _LEGACY_DEFAULT_REGISTRY:
        canonical = DEFAULT_REGISTRY
    return canonical, None if port is None else int(port)


def normalize_registry(host: str) -> str:
    """The one spelling of a registry: ``HOST[:PORT]`` with the name lower-cased, an IPv6 address
    compressed and in brackets, the default port 443 dropped and ``index.docker.io`` read as
    ``docker.io``. A ``ValueError`` when ``host`` is no registry host."""
    name, port = _registry_parts(host)
    return name if port in (None, REGISTRY_DEFAULT_PORT) else f"{name}:{port}"


def _names_registry(component: str) -> bool:
    # distribution/reference splitDockerDomain: the first component of a name is a registry when
    # it is localhost, contains a '.' or ':' (a domain, an address, a port), or has capitals
    # (repository names are lower case, so a capitalized component can only be a host).
    return (
        component in (_LOCALHOST, _LEGACY_DEFAULT_REGISTRY)
        or any(c in component for c in ".:")
        or component.lower() != component
    )


def registry_of(image: str) -> str:
    """The registry an image reference is pulled from, normalized (Docker's rules: the first
    component names a registry only if :func:`_names_registry` says so; else ``docker.io``).
    A ``ValueError`` when that component is no registry host."""
    first, slash, _ = image.partition("/")
    if slash and _names_registry(first):
        return normalize_registry(first)
    return DEFAULT_REGISTRY


def _as_registry(image_or_registry: str) -> str:
    if "/" in image_or_registry or "@" in image_or_registry:
        return registry_of(image_or_registry)
    try:
        registry = normalize_registry(image_or_registry)
    except ValueError:
        return DEFAULT_REGISTRY  # "nginx:1.25": a Docker Hub image with a tag, not host:port
    return registry if _names_registry(image_or_registry) else DEFAULT_REGISTRY


def registry_allowed(image_or_registry: str, allowed: Iterable[str]) -> bool:
    """Whether an image (anything with a ``/`` or ``@``) or a registry ``HOST[:PORT]`` is on the
    ``allowed`` list. A bare word without a dot, colon or capital (``nginx``) is a Docker Hub
    image, as Docker reads it.

    Residency is a property of the machine, so an allowed entry without a port (or with 443)
    allows its host on any port; an entry with another port allows that port only. Entries that
    are no registry host allow nothing; an image whose registry is no host is not allowed."""
    try:
        host, port = _registry_parts(_as_registry(image_or_registry))
    except ValueError:
        return False
    for entry in allowed:
        try:
            entry_host, entry_port = _registry_parts(normalize_registry(entry))
        except ValueError:
            continue
        if entry_host == host and entry_port in (None, port or REGISTRY_DEFAULT_PORT):
            return True
    return False


def normalize_endpoint(url: str) -> str:
    """The one spelling of an object-store endpoint: ``scheme://host[:port]`` with the scheme and
    host lower-cased, an IPv6 address compressed, the scheme's default port dropped and no
    trailing slash. A ``ValueError`` when ``url`` is no ``http(s)://HOST[:PORT]``.

    The weights runtime's own normalization (what the warmer checks before any request) is the
    base; IPv6 compression is added so that two spellings of one address are one endpoint."""
    try:
        normalized = runtime_normalize_endpoint(url)
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    parts = urlsplit(normalized)
    host = _canonical_host(parts.hostname or "")
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def endpoint_port(url: str) -> int:
    """The TCP port an endpoint is reached on (its scheme's default when none is given)."""
    parts = urlsplit(normalize_endpoint(url))
    return parts.port or _DEFAULT_PORTS[parts.scheme]


def endpoint_allowed(url: str, allowed: Iterable[str]) -> bool:
    """Whether ``url`` is one of the ``allowed`` endpoints, both compared normalized; a value that
    is no endpoint is not allowed, and entries that are no endpoint allow nothing."""
    try:
        wanted = normalize_endpoint(url)
    except ValueError:
        return False
    for entry in allowed:
        try:
            if normalize_endpoint(entry) == wanted:
                return True
        except ValueError:
            continue
    return False


def country_allowed(country: object, allowed: Iterable[str]) -> bool:
    """Whether an ISO 3166-1 alpha-2 ``country`` is among ``allowed`` (letter case ignored);
    anything that is no two-letter code is not allowed."""
    if not isinstance(country, str) or not _ALPHA_2.fullmatch(country):
        return False
    return country.upper() in {a.upper() for a in allowed if isinstance(a, str)}
