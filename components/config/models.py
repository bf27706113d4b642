"""Typed, frozen models of one stack's whole configuration.

Every component takes one of these models as its argument; nothing downstream reads raw dicts.
Field names are camelCase in stack files (Pulumi's convention) and snake_case in Python.
Rules that span several fields live in ``model_validator``s that report every violation with the
path of the field to fix (see :class:`~components.config.errors.CrossFieldProblems`).

Every string that ends up in a file on a host (resolv.conf, chrony.conf, nft rules, the K3s
config, fstab) has a strict ASCII grammar here: no whitespace, no control characters, no IPv6
zone ids, canonical IPv4 only. Patterns use ``[0-9]`` and ``re.ASCII``: Python's ``\\d`` and
``int()`` also accept other scripts' digits.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import posixpath
import re
import types
import typing
from typing import Annotated, Any, ClassVar, Final, Literal, Union, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from sovereign_gateway.ports import PUBLIC_PORT
from sovereign_gateway.routes import (
    CURRENCY,
    DEFAULT_COLD_START_TIMEOUT_SECONDS,
    DEFAULT_CURRENCY,
    DEFAULT_GPUS_PER_REPLICA,
    DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_PRICE_PER_GPU_HOUR,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    DEFAULT_TARGET_CONCURRENCY,
    TENANT_NAME,
    PricePerGpuHour,
    RequestCount,
    TargetConcurrency,
)
from sovereign_weights.layout import LayoutError, check_segment

from components.config.catalog import (
    CUDA_MIN_DRIVER_BRANCH,
    EU_EEA_COUNTRIES,
    GPU_MODELS,
    K3S_RELEASE,
    machine_type,
    machine_types_for,
    machine_types_known,
    os_image,
    packaged_traefik,
    provider_locations,
    region_country,
    unlisted_reason,
)
from components.config.errors import CrossFieldProblems, Problem, echo
from components.config.residency import (
    country_allowed,
    endpoint_allowed,
    normalize_endpoint,
    registry_allowed,
    registry_of,
)
from components.config.systems import OsId


def _scalar_types(annotation: Any) -> set[type]:
    """The plain scalar types a field annotation admits (``int | None`` -> {int, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _scalar_types(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        found: set[type] = set()
        for arg in typing.get_args(annotation):
            found |= _scalar_types(arg)
        return found
    return {annotation} if isinstance(annotation, type) else set()


_ACCEPTED: dict[tuple[type, str], set[type]] = {}


def _accepted_scalars(cls: type[BaseModel], name: str) -> set[type]:
    key = (cls, name)
    if key not in _ACCEPTED:
        field = cls.model_fields.get(name)
        _ACCEPTED[key] = _scalar_types(field.annotation) if field else set()
    return _ACCEPTED[key]


def camel_key(name: str) -> str:
    """The stack-file key of a field: ``k3s_token`` -> ``k3sToken``.

    Only a letter after an underscore is capitalized: pydantic's ``to_camel`` also capitalizes a
    letter after a digit, which made the ``k3s`` section ``k3S`` in errors and in ``render``'s
    ``stack.json`` while the stack file says ``k3s``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class Model(BaseModel):
    """Base for every config model: frozen, unknown fields refused, camelCase in files.

    Values are taken as written: no whitespace trimmed, no "8" read as a number, no "yes" read as
    a boolean, no NaN or infinity.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=camel_key,
        populate_by_name=True,
        allow_inf_nan=False,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_type_juggling(cls, value: Any, info: ValidationInfo) -> Any:
        accepted = _accepted_scalars(cls, info.field_name or "")
        if bool in accepted and not isinstance(value, bool) and value is not None:
            if str not in accepted:
                raise ValueError("expected true or false")
        elif accepted & {int, float} and str not in accepted:
            if isinstance(value, bool):
                raise ValueError("expected a number, not true/false")
            if isinstance(value, str):
                raise ValueError("expected a number, not a string (remove the quotes)")
        return value


# --- reusable field types -------------------------------------------------------------------

_A = re.ASCII
_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_DNS_LABEL = re.compile(_LABEL, _A)
# RFC 1123 host names; the last label starts with a letter (top-level domains do), so that
# nothing a resolver would read as a number (010.1.1.1, 256.1.1.1, 0x7f.1) passes as a name.
_HOST_LABEL = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(
    rf"(?=.{{1,253}}$)(?:{_HOST_LABEL}\.)*[A-Za-z](?:[-A-Za-z0-9]{{0,61}}[A-Za-z0-9])?", _A
)
_IP_CHARS = re.compile(r"[0-9A-Fa-f:.]+", _A)
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}", _A)
_BY_ID = re.compile(r"nvme-[A-Za-z0-9._:-]+", _A)
_PARTITION_SUFFIX = re.compile(r"-part[0-9]+$", _A)
# REGISTRY/REPOSITORY[:TAG]@sha256:<64 hex>: an image pinned by content, not by a movable tag.
# The registry is distribution/reference's domain (host names in any letter case, or an IPv6
# address in brackets, and a port); the repository is lower case.
_REGISTRY_HOST = (
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PINNED_IMAGE = re.compile(
    rf"(?P<name>(?:(?:{_REGISTRY_HOST}|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?@sha256:(?P<digest>[0-9a-f]{64})",
    _A,
)
_DNS_SUBDOMAIN = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*", _A)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", _A)
_LABEL_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"(?:(?P<prefix>[^/]{{1,253}})/)?{_LABEL_NAME}", _A)
_LABEL_VALUE = re.compile(rf"(?:{_LABEL_NAME})?", _A)
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/-]{0,4094}", _A)
_SERVED_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/:-]{0,126}[A-Za-z0-9])?", _A)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", _A)
_OBJECT_PREFIX = re.compile(r"[A-Za-z0-9._/=+-]{0,1024}", _A)
_TAINT = re.compile(
    rf"(?:[a-z0-9.-]{{1,253}}/)?{_LABEL_NAME}(?:=(?:{_LABEL_NAME})?)?:"
    r"(?:NoSchedule|PreferNoSchedule|NoExecute)",
    _A,
)

# Label keys the toolkit sets on nodes itself (see components.plan.cluster.node_labels), and the
# Kubernetes namespaces a kubelet refuses to take from --node-labels: a stack's labels may not
# override either.
TOOLKIT_LABEL_PREFIXES = ("sovereign-inference", "topology.kubernetes.io")
_KUBELET_REFUSED_LABEL_SUFFIXES = ("kubernetes.io", "k8s.io")
_KUBELET_ALLOWED_LABEL_PREFIXES = ("kubelet.kubernetes.io", "node.kubernetes.io")

# Private ranges a cluster may use for its pod and service networks: RFC 1918, RFC 6598 (shared
# address space) and IPv6 unique local addresses (RFC 4193).
PRIVATE_CLUSTER_RANGES = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)

# Where the weight cache may never be mounted: each of these trees, anything inside one, and any
# parent of one (mounting over /var would hide /var/lib/kubelet).
SYSTEM_TREES = (
    "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/lost+found", "/opt/cni", "/opt/sovereign", "/proc", "/root", "/run", "/sbin", "/snap",
    "/sys", "/usr", "/var/cache", "/var/lib/apt", "/var/lib/cni", "/var/lib/containerd",
    "/var/lib/docker", "/var/lib/dpkg", "/var/lib/kubelet", "/var/lib/mdadm",
    "/var/lib/rancher", "/var/lib/systemd", "/var/lock", "/var/log", "/var/run", "/var/spool",
    *("/tmp", "/var/tmp"),  # noqa: S108 - refused as mount points, never written to
)  # fmt: skip

Ip = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: str) -> Ip:
    """An IP address in its strict form: canonical IPv4, IPv6 without a zone id."""
    if "%" in value:
        raise ValueError("IPv6 zone ids (%interface) are not accepted; expected a plain address")
    if not _IP_CHARS.fullmatch(value):
        raise ValueError("expected an IPv4 or IPv6 address")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(
            "expected an IPv4 address in canonical form (four decimal octets 0-255, "
            "no leading zeros) or an IPv6 address"
        ) from None
    if ip.version == 4 and str(ip) != value:
        raise ValueError("expected an IPv4 address in canonical form (no leading zeros)")
    return ip


def parse_network(value: str) -> Network:
    """A CIDR in its strict form: canonical address, no host bits set, prefix without zeros."""
    address, slash, prefix = value.partition("/")
    ip = parse_ip(address)
    if slash and not re.fullmatch(r"0|[1-9][0-9]{0,2}", prefix, _A):
        raise ValueError("expected a CIDR: ADDRESS/PREFIX-LENGTH, e.g. 10.42.0.0/16")
    try:
        return ipaddress.ip_network(f"{ip}/{prefix or ip.max_prefixlen}")
    except ValueError as exc:
        if "host bits" in str(exc):
            raise ValueError(
                "has host bits set; expected the network address of the range"
            ) from None
        raise ValueError("expected a CIDR: ADDRESS/PREFIX-LENGTH, e.g. 10.42.0.0/16") from None


def host_key(value: str) -> str:
    """The form two host names or addresses are compared in (IPv6 normalized, names lower-cased)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value.lower()


def _tenant_name(value: str) -> str:
    """A tenant's name: the gateway's own pattern (it is the route table's key)."""
    if not TENANT_NAME.fullmatch(value):
        raise ValueError(
            "expected a tenant name: 1-63 lowercase letters, digits or '-', starting and "
            "ending with a letter or digit"
        )
    return value


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            "expected a DNS-1123 label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _looks_numeric(value: str) -> bool:
    return bool(_IP_CHARS.fullmatch(value)) and (":" in value or not re.search("[a-fA-F]", value))


def _host_or_ip(value: str) -> str:
    if _looks_numeric(value) or "%" in value:
        return str(parse_ip(value))
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(
            "expected an IP address (canonical IPv4 or IPv6, no zone id) or a DNS host name "
            "(letters, digits, '-' and '.', the last label starting with a letter)"
        )
    return value


def _ip_only(value: str) -> str:
    return str(parse_ip(value))


def _cidr(value: str) -> str:
    return str(parse_network(value))


def _not_every_address(refusal: str) -> AfterValidator:
    """Refuses a range that holds every address (0.0.0.0/0, ::/0) with ``refusal``."""

    def check(value: str) -> str:
        if ipaddress.ip_network(value).prefixlen == 0:
            raise ValueError(refusal)
        return value

    return AfterValidator(check)


def everything_covered_problems(
    field: str, ranges: tuple[str, ...], expected: str
) -> list[Problem]:
    """One problem per address family whose ranges, merged, cover every address of it."""
    nets = [ipaddress.ip_network(r) for r in ranges]
    problems = []
    for version, everything in ((4, "0.0.0.0/0"), (6, "::/0")):
        family = [n for n in nets if n.version == version]
        merged = list(ipaddress.collapse_addresses(family))  # type: ignore[type-var]
        if [str(n) for n in merged] == [everything]:
            problems.append(
                Problem(
                    field,
                    f"its IPv{version} ranges together cover every address ({everything}); "
                    f"expected {expected}",
                )
            )
    return problems


def _port(value: str) -> int:
    if not re.fullmatch(r"[1-9][0-9]{0,4}", value, _A) or int(value) > 65535:
        raise ValueError("expected a port from 1 to 65535")
    return int(value)


def _address_and_port(value: str) -> str:
    match = re.fullmatch(
        r"\[(?P<v6>[^\]]+)\]:(?P<port>[^:]+)|(?P<v4>[0-9.]+):(?P<port4>[^:]+)", value
    )
    if not match:
        raise ValueError(
            "expected ADDRESS:PORT, with an IPv6 address in brackets ([2001:db8::1]:443)"
        )
    address = match["v6"] or match["v4"]
    ip = parse_ip(address)
    if (ip.version == 6) != bool(match["v6"]):
        raise ValueError("expected ADDRESS:PORT, with an IPv6 address in brackets")
    port = _port(match["port"] or match["port4"])
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _country(value: str) -> str:
    if not re.fullmatch(r"[A-Z]{2}", value, _A):
        raise ValueError("expected an ISO 3166-1 alpha-2 country code in capitals, e.g. DE")
    return value


def _public_ip(value: str) -> str:
    ip = parse_ip(value)
    if not ip.is_global and not _is_documentation(ip):
        raise ValueError("expected a public (globally routable) egress address")
    return str(ip)


def _is_documentation(ip: Ip) -> bool:
    # RFC 5737 / RFC 3849 ranges are accepted so example stacks can be written without real
    # addresses; verification geolocates them as unknown and fails them on a live fleet.
    doc_nets = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
    return any(ip in ipaddress.ip_network(n) for n in doc_nets)


def _fingerprint(value: str) -> str:
    expected = (
        "expected an SSH host-key fingerprint as 'ssh-keygen -lf' prints it: "
        "SHA256: followed by 43 base64 characters (a 32-byte SHA-256 digest)"
    )
    if not _FINGERPRINT.fullmatch(value):
        raise ValueError(expected)
    encoded = value.removeprefix("SHA256:")
    try:
        digest = base64.b64decode(encoded + "=", validate=True)
    except binascii.Error:
        raise ValueError(expected) from None
    # 43 characters carry 258 bits: the last 2 must be zero, or two strings name one digest
    if len(digest) != 32 or base64.b64encode(digest).decode().rstrip("=") != encoded:
        raise ValueError(
            "is not canonical base64 of a 32-byte digest (its last character carries stray "
            "bits); copy the fingerprint exactly as ssh-keygen -lf prints it"
        )
    return value


# The path in a ``file:PATH`` key reference (the stack's and the inventory's): no room for key
# material (no spaces, no line breaks).
KEY_FILE_PATH = re.compile(r"[A-Za-z0-9._/~+@-]{1,4096}", _A)


def _key_reference(value: str) -> str:
    if "PRIVATE KEY" in value or value.startswith("-----"):
        raise ValueError(
            "this looks like a private key itself; never put key material in a stack file, "
            "give a reference instead: file:PATH, agent:SHA256:<fingerprint> or env:VARIABLE"
        )
    scheme, _, rest = value.partition(":")
    if scheme not in {"file", "env", "agent"} or not rest:
        raise ValueError(
            "expected a key reference: file:PATH, agent:SHA256:<fingerprint> (a key in the "
            "running ssh-agent) or env:VARIABLE"
        )
    if scheme == "agent":
        _fingerprint(rest)
    if scheme == "env" and not _ENV_NAME.fullmatch(rest):
        raise ValueError("expected env:VARIABLE with a valid environment variable name")
    if scheme == "file" and not KEY_FILE_PATH.fullmatch(rest):
        raise ValueError("expected file:PATH with a path of letters, digits and ._/~+@-")
    return value


def _disk_id(value: str) -> str:
    name = value.removeprefix("/dev/disk/by-id/")
    if value.startswith("/dev/") and not value.startswith("/dev/disk/by-id/"):
        raise ValueError(
            "kernel names like /dev/nvme0n1 are not stable across boots; "
            "expected the /dev/disk/by-id/nvme-<model>_<serial> name"
        )
    if not _BY_ID.fullmatch(name) or len(name) > 255:
        raise ValueError("expected a /dev/disk/by-id name of an NVMe drive: nvme-<model>_<serial>")
    if _PARTITION_SUFFIX.search(name):
        raise ValueError(
            "names a partition (-partN); expected the whole drive: the cache takes whole disks"
        )
    return name


def _version(pattern: str, example: str) -> AfterValidator:
    compiled = re.compile(pattern, _A)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"malformed version pin; expected the form {example}")
        return value

    return AfterValidator(check)


def _label_key(value: str) -> str:
    _selector_label_key(value)
    prefix = value.rpartition("/")[0] or None
    if prefix in TOOLKIT_LABEL_PREFIXES:
        raise ValueError(
            f"{prefix}/ labels are set by the toolkit from the host's fields; "
            "expected a key under your own prefix"
        )
    if (
        prefix is not None
        and _in_domain(prefix, _KUBELET_REFUSED_LABEL_SUFFIXES)
        and not _in_domain(prefix, _KUBELET_ALLOWED_LABEL_PREFIXES)
    ):
        raise ValueError(
            "keys under kubernetes.io and k8s.io are reserved (the kubelet refuses them); "
            "expected a key under your own prefix"
        )
    return value


def _selector_label_key(value: str) -> str:
    """A label key a selector may match: any well-formed key, reserved prefixes included (the
    pods selected carry labels such as ``app.kubernetes.io/name``)."""
    match = _LABEL_KEY.fullmatch(value)
    prefix = match["prefix"] if match else None
    if not match or (prefix is not None and not _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise ValueError(
            "expected a Kubernetes label key: [prefix/]name, the prefix a DNS subdomain, "
            "the name up to 63 of [A-Za-z0-9-_.]"
        )
    return value


def _in_domain(name: str, domains: tuple[str, ...]) -> bool:
    return any(name == d or name.endswith("." + d) for d in domains)


def _label_value(value: str) -> str:
    if not _LABEL_VALUE.fullmatch(value):
        raise ValueError(
            "expected a Kubernetes label value: up to 63 of [A-Za-z0-9-_.], "
            "starting and ending with a letter or digit"
        )
    return value


def _label_safe_name(value: str) -> str:
    """A name that also becomes a node label value (lower-cased): provider, datacenter."""
    if not value or not _LABEL_VALUE.fullmatch(value):
        raise ValueError(
            "becomes a Kubernetes label value: expected 1-63 of [A-Za-z0-9-_.], "
            "starting and ending with a letter or digit"
        )
    return value


def _check_url_host(parts: Any) -> None:
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in a URL are not accepted; expected scheme://host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("expected a port from 1 to 65535")
    _host_or_ip(parts.hostname or "")


def _https_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.path not in {"", "/"}
        or parts.query
        or parts.fragment
        or not re.fullmatch(r"https://[A-Za-z0-9.:\[\]-]+/?", value, _A)
    ):
        raise ValueError("expected an https:// endpoint URL without a path")
    _check_url_host(parts)
    # stored in its one spelling: the plan hands these to the weights warmer and the policy pack,
    # which compare strings (IPv6 compressed, host in lower case, no :443)
    return normalize_endpoint(value)


def _pinned_image(value: str) -> str:
    match = _PINNED_IMAGE.fullmatch(value)
    if not match:
        if "@sha256:" not in value:
            raise ValueError(
                "must be pinned by digest: REGISTRY/REPOSITORY[:TAG]@sha256:<64 hex digits> "
                "(a tag alone can be moved to other content)"
            )
        raise ValueError(
            "malformed image reference; expected REGISTRY/REPOSITORY[:TAG]@sha256:<64 hex>"
        )
    if match["port"] is not None:
        _port(match["port"])
    registry_of(value)  # an IPv6 registry in brackets must be an address
    return value


def _dns_subdomain(value: str) -> str:
    if not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError("expected a Kubernetes object name: a lowercase DNS-1123 subdomain")
    return value


def _object_uri(value: str) -> str:
    match = re.fullmatch(r"s3://(?P<bucket>[^/]*)(?P<prefix>/.*)?", value, _A | re.DOTALL)
    if (
        not match
        or not _BUCKET.fullmatch(match["bucket"])
        or not _OBJECT_PREFIX.fullmatch(match["prefix"] or "")
    ):
        raise ValueError(
            "expected an object-store URI: s3://bucket/prefix (bucket: 3-63 of [a-z0-9.-]; "
            "prefix: letters, digits and ._/=+-)"
        )
    return value


def _host_path(value: str) -> str:
    if not _SAFE_PATH.fullmatch(value) or ".." in value.split("/"):
        raise ValueError(
            "expected an absolute path of letters, digits and ._-/ without '..' components"
        )
    return posixpath.normpath(re.sub("/+", "/", value))


def _mount_point(value: str) -> str:
    normalized = _host_path(value)
    for system in SYSTEM_TREES:
        if normalized == system or system.startswith(normalized.rstrip("/") + "/"):
            raise ValueError(
                "is a system location or a parent of one; expected a dedicated directory such "
                "as /var/lib/sovereign/weights or /srv/weights"
            )
        if normalized.startswith(system + "/"):
            raise ValueError(
                f"lies inside {system}, a system location; expected a dedicated directory such "
                "as /var/lib/sovereign/weights or /srv/weights"
            )
    return normalized


def _served_name(value: str) -> str:
    if not _SERVED_NAME.fullmatch(value):
        raise ValueError(
            "expected a model name of letters, digits and ._/:- (up to 128), "
            "starting and ending with a letter or digit"
        )
    return value


def _taint(value: str) -> str:
    if not _TAINT.fullmatch(value):
        raise ValueError("expected key[=value]:Effect (NoSchedule, PreferNoSchedule, NoExecute)")
    return value


class SecretInput:
    """A config value that Pulumi holds as a secret (``secure:`` in the stack file).

    The loader wraps secret values in this type; a field typed :data:`StackSecret` accepts only
    wrapped values, so a token pasted into a stack file in plain text is refused.
    """

    __slots__ = ("encrypted", "value")

    def __init__(self, value: str, *, encrypted: bool) -> None:
        self.value = value
        self.encrypted = encrypted

    def __repr__(self) -> str:
        return "SecretInput(**********)"


def _require_secret(value: object) -> object:
    if isinstance(value, SecretInput):
        if not value.value:
            raise ValueError("the secret is empty; expected a non-empty string")
        return value.value
    if isinstance(value, SecretStr):
        return value
    raise ValueError(
        "must be stored as a Pulumi secret (pulumi config set --secret ...), not in plain text"
    )


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
HostOrIp = Annotated[str, AfterValidator(_host_or_ip)]
IpAddress = Annotated[str, AfterValidator(_ip_only)]
Cidr = Annotated[str, AfterValidator(_cidr)]
AllowlistEntry = Annotated[
    str,
    AfterValidator(_cidr),
    _not_every_address(
        "allows every address, which is no allowlist; expected the ranges hosts may reach "
        "(omit egressAllowlist to leave egress open)"
    ),
]
ApiClientRange = Annotated[
    str,
    AfterValidator(_cidr),
    _not_every_address(
        "opens the API server to every address; expected the ranges of the machines that "
        "run pulumi (omit apiAllowedCidrs to allow only the cluster's nodes)"
    ),
]
PUBLIC_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)


def _public_key(value: str) -> str:
    """An OpenSSH public key line (``ssh-ed25519 AAAA... comment``), as ``ssh-keygen -y`` prints it."""
    expected = (
        "expected an OpenSSH public key line: TYPE BASE64 [comment], TYPE one of "
        + ", ".join(PUBLIC_KEY_TYPES)
        + " (ssh-keygen -y -f PRIVATE_KEY prints it)"
    )
    if "PRIVATE KEY" in value or value.startswith("-----"):
        raise ValueError(
            "this looks like a private key; give the public key only (ssh-keygen -y -f KEY)"
        )
    parts = value.split()
    if len(parts) < 2 or parts[0] not in PUBLIC_KEY_TYPES or "\n" in value:
        raise ValueError(expected)
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(expected) from None
    name = parts[0].encode()
    if blob[:4] != len(name).to_bytes(4, "big") or blob[4 : 4 + len(name)] != name:
        raise ValueError(f"the key data is not a {parts[0]} key; {expected}")
    return value


Country = Annotated[str, AfterValidator(_country)]
PublicIp = Annotated[str, AfterValidator(_public_ip)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]
KeyReference = Annotated[str, AfterValidator(_key_reference)]
PublicKey = Annotated[str, AfterValidator(_public_key)]
# a login name as useradd accepts it
SshUser = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
DiskId = Annotated[str, AfterValidator(_disk_id)]
LabelKey = Annotated[str, AfterValidator(_label_key)]
SelectorLabelKey = Annotated[str, AfterValidator(_selector_label_key)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
LabelSafeName = Annotated[str, AfterValidator(_label_safe_name)]
HttpsEndpoint = Annotated[str, AfterValidator(_https_endpoint)]
# stored lower-cased (an address canonical): containerd's mirror keys and the policy pack's config
# are written from these and compared as strings
AllowedRegistry = Annotated[str, AfterValidator(_host_or_ip), AfterValidator(host_key)]
ObjectUri = Annotated[str, AfterValidator(_object_uri)]
PinnedImage = Annotated[str, AfterValidator(_pinned_image)]
DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
MountPoint = Annotated[str, AfterValidator(_mount_point)]
HostPath = Annotated[str, AfterValidator(_host_path)]
ServedName = Annotated[str, AfterValidator(_served_name)]
Taint = Annotated[str, AfterValidator(_taint)]
AddressAndPort = Annotated[str, AfterValidator(_address_and_port)]
Port = Annotated[int, Field(ge=1, le=65535)]
StackSecret = Annotated[SecretStr, BeforeValidator(_require_secret)]


def duplicate_problems(field: str, values: tuple[str, ...], what: str) -> list[Problem]:
    """One problem per value listed again (compared normalized: IPv6 forms, letter case)."""
    seen: dict[str, int] = {}
    problems = []
    for i, value in enumerate(values):
        key = host_key(value)
        if key in seen:
            problems.append(Problem(f"{field}[{i}]", f"{what} listed twice (also [{seen[key]}])"))
        seen.setdefault(key, i)
    return problems


# --- hosts ---------------------------------------------------------------------------------


class SshSpec(Model):
    """How to reach a host. The host key is pinned: a host presenting another key is refused."""

    user: SshUser = "root"
    port: Port = 22
    private_key: KeyReference
    host_key: Fingerprint | None = None
    # what an ordered machine is installed with (the provider registers it); the stack's
    # privateKey must be its pair
    public_key: PublicKey | None = None


class GpuSpec(Model):
    """The GPUs a host is expected to carry; preflight and verification hold the host to it."""

    model: str | None = None
    count: int = Field(default=0, ge=0, le=16)

    @model_validator(mode="after")
    def _model_matches_count(self) -> GpuSpec:
        problems: list[Problem] = []
        if self.count > 0 and self.model is None:
            problems.append(Problem("model", "required when count > 0; one of the known models"))
        if self.model is not None and self.model not in GPU_MODELS:
            known = ", ".join(sorted(GPU_MODELS))
            problems.append(
                Problem("model", f"unknown GPU model{echo(self.model)}; expected {known}")
            )
        if self.count == 0 and self.model is not None:
            problems.append(Problem("count", "is 0 but a model is set; expected count >= 1"))
        if problems:
            raise CrossFieldProblems(problems)
        return self

    @property
    def memory_gib(self) -> int:
        return GPU_MODELS[self.model].memory_gib if self.model else 0


class CacheDisk(Model):
    """One NVMe drive for the weight cache. ``wipe`` allows destroying what is on it."""

    id: DiskId
    wipe: bool = False


def _scaleway_zone(value: str) -> str:
    if not re.fullmatch(r"[a-z]{2}-[a-z]{3}-[0-9]", value, _A):
        raise ValueError(
            "expected a Scaleway zone such as fr-par-2 (a region's name with the zone's number): "
            "Instances and Elastic Metal servers live in a zone, not a region"
        )
    return value


ScalewayZone = Annotated[str, AfterValidator(_scaleway_zone)]


class ScalewayOrder(Model):
    """A Scaleway machine the program orders (pulumiverse-scaleway): a GPU Instance
    (``kind: instance``, ``type`` its commercial type) or an Elastic Metal server
    (``kind: elastic-metal``, ``type`` its offer), in ``zone``, installed with ``os``."""

    # the field that names where the machine is
    PLACE_FIELD: ClassVar[str] = "zone"

    kind: Literal["instance", "elastic-metal"]
    type: str = Field(min_length=1, max_length=64)
    zone: ScalewayZone
    os: OsId
    project_id: str | None = Field(default=None, pattern=r"^[0-9a-f-]{36}$")


class OvhOrder(Model):
    """An OVHcloud machine: a Public Cloud instance the program orders (``kind: cloud-instance``:
    ``flavor`` in ``region`` of the project ``serviceName``), or a dedicated server
    (``kind: dedicated``) reinstalled through the provider's install task: the one the team rents
    (``serviceName``), or a new one ordered with ``plan`` in ``datacenter``."""

    # the field that names where the machine is (a dedicated server's: the host's datacenter)
    PLACE_FIELD: ClassVar[str] = "region"

    kind: Literal["cloud-instance", "dedicated"]
    service_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,128}$")
    flavor: str | None = Field(default=None, min_length=1, max_length=64)
    region: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{2,32}$")
    plan: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,128}$")
    subsidiary: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    os: OsId

    @model_validator(mode="after")
    def _fields_of_kind(self) -> OvhOrder:
        problems: list[Problem] = []

        def need(field: str, why: str) -> None:
            if getattr(self, field) is None:
                problems.append(Problem(camel_key(field), f"required {why}"))

        def refuse(field: str, why: str) -> None:
            if getattr(self, field) is not None:
                problems.append(Problem(camel_key(field), f"not used {why}; remove it"))

        if self.kind == "cloud-instance":
            need("service_name", "for kind cloud-instance: the Public Cloud project id")
            need("flavor", "for kind cloud-instance: the instance flavour (h100-380 ...)")
            need("region", "for kind cloud-instance: the Public Cloud region (GRA11 ...)")
            refuse("plan", "for kind cloud-instance")
            refuse("subsidiary", "for kind cloud-instance")
        else:
            refuse("flavor", "for kind dedicated (the server's plan says what it carries)")
            refuse("region", "for kind dedicated (set the host's datacenter)")
            if (self.service_name is None) == (self.plan is None):
                problems.append(
                    Problem(
                        "serviceName",
                        "kind dedicated takes either serviceName (a server you rent, reinstalled) "
                        "or plan (a new server ordered), not both or neither",
                    )
                )
            if self.plan is not None:
                need("subsidiary", "to order a dedicated server: the OVH subsidiary (FR, DE ...)")
            else:
                refuse("subsidiary", "for a server you rent already")
        if problems:
            raise CrossFieldProblems(problems)
        return self


# The sources a host can come from, and the provider each ordered source stands for, with the
# model of its order section (named after the source).
HostSource = Literal["byo", "lab", "scaleway", "ovh"]
ORDERED_SOURCES: dict[str, str] = {"scaleway": "scaleway", "ovh": "ovh"}
ORDER_MODELS: dict[str, type[ScalewayOrder] | type[OvhOrder]] = {
    "scaleway": ScalewayOrder,
    "ovh": OvhOrder,
}


def _derive_placement(data: Any) -> Any:
    """Fill an ordered host's provider, datacenter and country from its order when omitted.

    Given values are kept (and checked against the order after validation)."""
    if not isinstance(data, dict):
        return data
    source = data.get("source")
    if not isinstance(source, str) or source not in ORDERED_SOURCES:
        return data
    provider = ORDERED_SOURCES[source]
    order = data.get(source)
    if order is None:
        raise CrossFieldProblems(
            [Problem(source, f"required for source {source}: what to order, and where")]
        )
    if not isinstance(order, dict):
        return data  # the section's own validation names it
    filled = dict(data)
    filled.setdefault("provider", provider)
    field = ORDER_MODELS[source].PLACE_FIELD
    place = order.get(field)
    if isinstance(place, str) and place:
        filled.setdefault("datacenter", place.lower())
        # the provider's own name for a place, exactly: an order names one, never a variant
        country = (provider_locations(provider) or {}).get(place.lower())
        if country is not None:
            filled.setdefault("country", country)
        elif "country" not in data:
            raise CrossFieldProblems(
                [Problem(f"{source}.{field}", _unknown_place(provider, place))]
            )
    return filled


def _unknown_place(provider: str, place: str) -> str:
    known = ", ".join(sorted(provider_locations(provider) or {}))
    return f"{place!r} is not a {provider} location the toolkit knows; expected one of {known}"


class HostSpec(Model):
    """One bare-metal server, from one of its sources: ``byo`` (you own or rent it and give us
    SSH: address and pinned host key in the stack or an inventory), ``lab`` (a QEMU guest that
    ``sovereign lab up`` started, from the lab's inventory), ``scaleway`` or ``ovh`` (ordered by
    the program: its address and host key come from the order, see ``components.sources``)."""

    name: DnsLabel
    role: Literal["server", "agent"]
    source: HostSource = "byo"
    # byo and lab: required; ordered sources: known after the order, refused here
    address: HostOrIp | None = None
    ssh: SshSpec
    scaleway: ScalewayOrder | None = None
    ovh: OvhOrder | None = None
    # provider, datacenter and region become node labels (components.plan.cluster.node_labels)
    provider: LabelSafeName
    datacenter: LabelSafeName
    region: DnsLabel | None = None
    country: Country
    egress_ips: tuple[PublicIp, ...] = ()
    gpu: GpuSpec = GpuSpec()
    nvme: tuple[CacheDisk, ...] = ()
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    taints: tuple[Taint, ...] = ()

    @model_validator(mode="after")
    def _unique_disks(self) -> HostSpec:
        seen: dict[str, int] = {}
        problems = []
        for i, disk in enumerate(self.nvme):
            if disk.id in seen:
                problems.append(
                    Problem(f"nvme[{i}].id", f"disk listed twice (also nvme[{seen[disk.id]}])")
                )
            seen.setdefault(disk.id, i)
        problems += duplicate_problems("egressIps", self.egress_ips, "address")
        problems += self._source_problems()
        site = self.datacenter.lower().split("-")[0]
        if self.region is None and not _LABEL_VALUE.fullmatch(site):
            problems.append(
                Problem(
                    "datacenter",
                    "its site part (before the first '-') becomes the region label; expected it "
                    "to start and end with a letter or digit, or set region",
                )
            )
        if problems:
            raise CrossFieldProblems(problems)
        return self

    @model_validator(mode="before")
    @classmethod
    def _placement_from_order(cls, data: Any) -> Any:
        return _derive_placement(data)

    @property
    def ordered(self) -> bool:
        """Whether the program orders this machine (its address is known after the order)."""
        return self.source in ORDERED_SOURCES

    def _source_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        for section in ORDERED_SOURCES:
            if getattr(self, section) is not None and self.source != section:
                problems.append(
                    Problem(
                        section, f"only for source {section}; this host's source is {self.source}"
                    )
                )
        if not self.ordered:
            if self.address is None:
                problems.append(
                    Problem(
                        "address",
                        f"required for source {self.source}: the host's IP address or DNS name "
                        "(or name an inventory that records it)",
                    )
                )
            return problems
        order = getattr(self, self.source)
        if order is None:
            problems.append(
                Problem(self.source, f"required for source {self.source}: what to order, and where")
            )
            return problems
        if self.address is not None:
            problems.append(
                Problem(
                    "address",
                    f"known after the {self.source} order (the program feeds it to the host "
                    "steps); remove it",
                )
            )
        if self.ssh.public_key is None:
            problems.append(
                Problem(
                    "ssh.publicKey",
                    f"required for source {self.source}: the public key the provider installs "
                    "on the machine (ssh-keygen -y -f KEY), the pair of ssh.privateKey",
                )
            )
        if self.provider != ORDERED_SOURCES[self.source]:
            problems.append(
                Problem(
                    "provider",
                    f"is{echo(self.provider)} but source {self.source} orders from "
                    f"{ORDERED_SOURCES[self.source]}; expected {ORDERED_SOURCES[self.source]} "
                    "(or leave it out)",
                )
            )
        problems += self._machine_type_problems(order)
        return problems

    def _machine_type_problems(self, order: ScalewayOrder | OvhOrder) -> list[Problem]:
        """The ordered type or flavour carries the GPUs ``gpu`` says (catalog tables)."""
        provider = ORDERED_SOURCES[self.source]
        if isinstance(order, ScalewayOrder):
            name: str | None = order.type
            field = f"{self.source}.type"
        elif order.kind == "cloud-instance":
            name, field = order.flavor, f"{self.source}.flavor"
        else:
            name, field = order.plan, f"{self.source}.plan"
        problems: list[Problem] = []
        # an order's zone or region is the provider's own name for it, exactly; a datacenter
        # (a dedicated server's: gra3) is known through its site (gra)
        ordered_place = self.order_place()
        if ordered_place is not None:
            place, place_field = ordered_place
            known_place = place.lower() in (provider_locations(provider) or {})
        else:
            place, place_field = self.datacenter, "datacenter"
            known_place = region_country(place, provider) is not None
        if not known_place:
            problems.append(Problem(place_field, _unknown_place(provider, place)))
        if os_image(provider, order.kind, order.os) is None:
            offered = [os_id for os_id in get_args(OsId) if os_image(provider, order.kind, os_id)]
            problems.append(
                Problem(
                    f"{self.source}.os",
                    f"{order.os} is not an image the toolkit knows for {provider} {order.kind}; "
                    f"expected one of {', '.join(offered) or 'none'}",
                )
            )
        if name is None:
            return problems  # a rented dedicated server: preflight holds it to gpu
        wanted = self.gpu.model or "no GPU"
        matching = machine_types_for(provider, order.kind, self.gpu.model or "", self.gpu.count)
        suggestion = (
            f"types that carry {self.gpu.count} x {wanted}: {', '.join(matching)}"
            if matching
            else f"{provider} {order.kind} has no type with {self.gpu.count} x {wanted} in the catalog"
        )
        found = machine_type(provider, order.kind, name)
        if found is None and not machine_types_known(provider, order.kind):
            problems.append(
                Problem(
                    field,
                    f"the catalog lists no {provider} {order.kind} type with its GPUs, so "
                    f"{name!r} cannot be held to gpu before it is ordered and billed; rent the "
                    "server and give its serviceName instead (it is reinstalled, and preflight "
                    "holds it to gpu)",
                )
            )
        elif found is None:
            reason = unlisted_reason(provider, order.kind, name)
            known = f"not in the catalog: {reason}" if reason else "unknown"
            problems.append(
                Problem(field, f"{provider} {order.kind} type{echo(name)} {known}; {suggestion}")
            )
        elif (found.gpu_model, found.gpu_count) != (self.gpu.model, self.gpu.count):
            problems.append(
                Problem(
                    field,
                    f"{name} carries {found.gpu_count} x {found.gpu_model} but gpu says "
                    f"{self.gpu.count} x {wanted}; expected gpu.model {found.gpu_model} and "
                    f"gpu.count {found.gpu_count}, or {suggestion}",
                )
            )
        return problems

    def order_place(self) -> tuple[str, str] | None:
        """Where the order places the machine, and the field that says so (relative to the host);
        None for a host not ordered, or an order without a place (a dedicated server's is the
        host's datacenter)."""
        order = getattr(self, self.source) if self.ordered else None
        place = getattr(order, order.PLACE_FIELD) if order is not None else None
        return (place, f"{self.source}.{order.PLACE_FIELD}") if order and place else None

    def location_problems(self, allowed_countries: frozenset[str]) -> list[Problem]:
        """Region, datacenter and the order's zone or region against the provider location table
        (paths relative to the host).

        A location the table places outside the allowed countries is refused whatever ``country``
        says, naming the provider's places that are allowed; for a provider the table knows,
        ``country`` must also agree with it.
        """
        problems = []
        table = provider_locations(self.provider)
        allowed_places = sorted(
            name for name, country in (table or {}).items() if country in allowed_countries
        )
        expected = (
            f"expected one of {self.provider}'s places in the allowed countries: "
            f"{', '.join(allowed_places)}"
            if allowed_places
            else "expected an EU/EEA location"
        )
        places: list[tuple[str, str]] = []
        order = self.order_place()
        if order is not None:
            places.append((order[1], order[0]))
        for field in ("region", "datacenter"):
            value: str | None = getattr(self, field)
            # a datacenter derived from the order is the order's place: reported there once
            if value is not None and not (order and value.lower() == order[0].lower()):
                places.append((field, value))
        for field, value in places:
            placed = region_country(value, self.provider)
            if placed is None:
                continue
            if placed not in allowed_countries:
                problems.append(
                    Problem(
                        field,
                        f"the provider location table places{echo(value)} in {placed}, outside "
                        f"the residency policy (whatever country says); {expected}",
                    )
                )
            elif table is not None and placed != self.country in allowed_countries:
                problems.append(
                    Problem(
                        "country",
                        f"is {self.country} but the provider location table places the "
                        f"{field.rpartition('.')[2]} in {placed}; expected {placed}",
                    )
                )
        return problems


# --- host software pins --------------------------------------------------------------------


class NvidiaSpec(Model):
    """Pinned NVIDIA driver, CUDA and container toolkit versions."""

    driver_version: Annotated[str, _version(r"[0-9]{3}\.[0-9]{2,3}(\.[0-9]{2,3})?", "570.172.08")]
    open_kernel_modules: bool = True
    cuda_version: Annotated[str, _version(r"[0-9]{2}\.[0-9](\.[0-9]{1,2})?", "12.8 or 12.8.1")]
    container_toolkit_version: Annotated[
        str, _version(r"[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}(-[0-9]{1,4})?", "1.17.8")
    ]
    fabric_manager: Literal["auto", "on", "off"] = "auto"

    @property
    def driver_branch(self) -> int:
        return int(self.driver_version.split(".")[0])

    @model_validator(mode="after")
    def _cuda_needs_driver(self) -> NvidiaSpec:
        major, minor = (int(x) for x in self.cuda_version.split(".")[:2])
        needed = CUDA_MIN_DRIVER_BRANCH.get((major, minor))
        if needed is None:
            known = ", ".join(f"{a}.{b}" for a, b in sorted(CUDA_MIN_DRIVER_BRANCH))
            raise CrossFieldProblems(
                [Problem("cudaVersion", f"unsupported CUDA release; expected one of {known}")]
            )
        if self.driver_branch < needed:
            raise CrossFieldProblems(
                [
                    Problem(
                        "driverVersion",
                        f"driver branch {self.driver_branch} is too old for CUDA "
                        f"{self.cuda_version}; expected branch {needed} or newer",
                    )
                ]
            )
        return self


# A floor for one datacenter NVMe drive read sequentially by one reader (PCIe 4.0 drives read
# 3-7 GB/s; the cache is a RAID0 of them). Bounds: below 10 MiB/s no probe budget is meaningful,
# above 100 GiB/s no RAID0 of NVMe drives reads.
DEFAULT_CACHE_READ_MIB_PER_SECOND: Final = 1024
CacheReadMibPerSecond = Annotated[int, Field(ge=10, le=102400)]


class CacheSpec(Model):
    """The NVMe weight cache every GPU host builds from its ``nvme`` disks."""

    # normalized (//usr -> /usr, /etc/. -> /etc) before the system locations are refused
    mount_point: MountPoint = "/var/lib/sovereign/weights"
    raid_level: Literal[0] = 0
    filesystem: Literal["xfs", "ext4"] = "xfs"
    array_name: str = Field(default="sovereign-cache", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    # the sequential read speed verification holds every host's cache to (MiB/s, direct I/O);
    # startup probes and cold-start estimates read the weights at this speed
    min_read_mib_per_second: CacheReadMibPerSecond = DEFAULT_CACHE_READ_MIB_PER_SECOND


class SshDefaults(Model):
    """Connection behaviour shared by every host; the executor reads retries and timeouts here."""

    connect_timeout_seconds: int = Field(default=10, ge=1, le=300)
    connect_retries: int = Field(default=5, ge=0, le=50)
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=60)
    step_timeout_seconds: int = Field(default=1800, ge=10, le=14400)
    reboot_timeout_seconds: int = Field(default=900, ge=30, le=7200)
    # how long a newly ordered machine may take to answer SSH with the stack's key, when its host
    # key is pinned on first contact
    first_contact_timeout_seconds: int = Field(default=900, ge=10, le=7200)
    max_parallel_hosts: int = Field(default=8, ge=1, le=256)
    # a host that answers no keepalive for (interval times missed replies) seconds has stopped
    # (a hung kernel, a frozen VM): its step fails then, not at stepTimeoutSeconds
    keepalive_interval_seconds: int = Field(default=15, ge=1, le=300)
    # at least 2: keepalives go out once per interval, so with 1 the next one would leave just as
    # the bound runs out and a healthy host's reply would race the judge
    keepalive_missed_replies: int = Field(default=4, ge=2, le=100)

    @property
    def keepalive_bound_seconds(self) -> int:
        """How long a host may leave keepalives unanswered before it counts as stopped."""
        return self.keepalive_interval_seconds * self.keepalive_missed_replies


# --- cluster -------------------------------------------------------------------------------


class K3sSpec(Model):
    """The K3s cluster: pinned release, network ranges, and what goes into its config."""

    install: bool = True
    version: Annotated[str, _version(K3S_RELEASE.pattern, "v1.31.6+k3s1")]
    installer_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    # a directory on every host holding k3s-airgap-images-*.tar*
    airgap_bundle: HostPath | None = None
    cluster_cidr: Cidr = "10.42.0.0/16"
    service_cidr: Cidr = "10.43.0.0/16"
    tls_sans: tuple[HostOrIp, ...] = ()
    # the host name or IP clients outside the cluster (pulumi, kubectl) use for the API server;
    # unset: the first server's address. Always in the servers' serving certificate.
    api_endpoint: HostOrIp | None = None
    # ranges outside the cluster that may reach the API port (mutual TLS behind K3s's client
    # certificates); empty: only the cluster's nodes
    api_allowed_cidrs: tuple[ApiClientRange, ...] = ()
    secrets_encryption: bool = True
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _networks(self) -> K3sSpec:
        problems = []
        nets = {"clusterCidr": self.cluster_network, "serviceCidr": self.service_network}
        for field, net in nets.items():
            if not any(
                net.version == r.version and net.subnet_of(r)  # type: ignore[arg-type]
                for r in PRIVATE_CLUSTER_RANGES
            ):
                problems.append(
                    Problem(
                        field,
                        "expected a private range: inside 10.0.0.0/8, 172.16.0.0/12, "
                        "192.168.0.0/16, 100.64.0.0/10 (RFC 6598) or fc00::/7 (ULA)",
                    )
                )
        if self.cluster_network.version != self.service_network.version:
            problems.append(Problem("serviceCidr", "expected the same IP version as clusterCidr"))
        elif self.cluster_network.overlaps(self.service_network):
            problems.append(
                Problem("serviceCidr", "overlaps clusterCidr; expected disjoint ranges")
            )
        if self.install:
            # the release picks the Traefik chart the edge settings must pass through
            try:
                packaged_traefik(self.version)
            except ValueError as exc:
                problems.append(Problem("version", str(exc)))
        problems += duplicate_problems("tlsSans", self.tls_sans, "name")
        problems += duplicate_problems("apiAllowedCidrs", self.api_allowed_cidrs, "range")
        problems += everything_covered_problems(
            "apiAllowedCidrs",
            self.api_allowed_cidrs,
            "the ranges of the machines that run pulumi or kubectl",
        )
        if problems:
            raise CrossFieldProblems(problems)
        return self

    @property
    def cluster_network(self) -> Network:
        return ipaddress.ip_network(self.cluster_cidr)

    @property
    def service_network(self) -> Network:
        return ipaddress.ip_network(self.service_cidr)


# --- inference -----------------------------------------------------------------------------


def _cache_segment(value: str) -> str:
    try:
        return check_segment(value, "revision")
    except LayoutError:
        raise ValueError(
            "expected 1-128 of [A-Za-z0-9._-], not starting with '.' or '-' (a directory name "
            "in the node cache)"
        ) from None


class WeightsSource(Model):
    """Where a model's weights live: an EU object store, pinned to a revision."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    uri: ObjectUri
    endpoint: HttpsEndpoint
    # one path segment of the node cache (<cache>/<model>/<revision>/): the warmer's own rule
    revision: Annotated[str, AfterValidator(_cache_segment)]


class ModelGpuSpec(Model):
    """Which GPU a model's replicas run on (node affinity on the node's GPU-model label)."""

    model: str

    @model_validator(mode="after")
    def _known_model(self) -> ModelGpuSpec:
        if self.model not in GPU_MODELS:
            known = ", ".join(sorted(GPU_MODELS))
            raise CrossFieldProblems(
                [Problem("model", f"unknown GPU model{echo(self.model)}; expected {known}")]
            )
        return self


# Each model also gets a headless Service named ``<name>-replicas`` (a digest shortens a long
# name, components.plan.kubernetes.spec.replicas_service_name): no model name may end like one.
REPLICAS_SERVICE_SUFFIX: Final = "-replicas"


class ModelSpec(Model):
    """One served model behind the OpenAI-compatible endpoint.

    ``image``, ``args`` and ``env`` bring a team's own serving container (vLLM, TensorRT-LLM,
    SGLang); the toolkit still owns probes, GPU requests, the cache mount and scaling.
    """

    name: DnsLabel
    served_name: ServedName | None = None
    source: WeightsSource
    gpus_per_replica: int = Field(default=DEFAULT_GPUS_PER_REPLICA, ge=1, le=16)
    min_gpu_memory_gib: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1, le=64)
    idle_seconds: int = Field(default=300, ge=30, le=86400)
    prefetch: bool = True
    max_model_len: int | None = Field(default=None, ge=256)
    # requests one replica serves at once before KEDA adds another (pending + in flight per replica);
    # the route table's type and default, capped for a stack
    target_concurrency: Annotated[TargetConcurrency, Field(le=4096)] = DEFAULT_TARGET_CONCURRENCY
    gpu: ModelGpuSpec | None = None
    image: PinnedImage | None = None
    args: tuple[Annotated[str, Field(max_length=4096)], ...] = ()
    env: dict[str, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _not_a_replicas_service_name(cls, value: str) -> str:
        if value.endswith(REPLICAS_SERVICE_SUFFIX):
            raise ValueError(
                f"ends with {REPLICAS_SERVICE_SUFFIX!r}, the suffix of the Service that lists a "
                "model's replicas; expected a name without it"
            )
        return value

    @model_validator(mode="after")
    def _env_names(self) -> ModelSpec:
        problems = [
            Problem(f"env.{name}", "expected an environment variable name: [A-Za-z_][A-Za-z0-9_]*")
            for name in self.env
            if not _ENV_NAME.fullmatch(name)
        ]
        if problems:
            raise CrossFieldProblems(problems)
        return self

    @property
    def served(self) -> str:
        """The name clients send as ``model`` (``servedName``, else ``name``)."""
        return self.served_name or self.name


class TenantSpec(Model):
    """A team sharing the GPU pool: told apart and charged by its API key."""

    name: Annotated[str, AfterValidator(_tenant_name)]
    api_key: StackSecret
    max_concurrent_requests: RequestCount | None = None


class MetricsScraperSpec(Model):
    """Who may read the gateway's admin port (``/metrics``, ``/usage``): the cluster's scraper.

    ``tokenSecret`` names a Secret in the gateway's namespace whose ``token`` key the gateway
    asks for as a bearer token (the scraper sends the same token); without it the NetworkPolicy
    alone keeps everyone else out.
    """

    namespace: DnsLabel
    pod_labels: dict[SelectorLabelKey, LabelValue] = Field(min_length=1)
    token_secret: DnsSubdomain | None = None


class GatewaySpec(Model):
    """The OpenAI-compatible entry point that holds requests while a model wakes up."""

    host: HostOrIp = "inference.local"
    port: Port = PUBLIC_PORT
    # the route table's defaults; a stack asks for whole seconds, at most an hour (and a cold start
    # of at least 10 s: loading weights takes longer)
    request_timeout_seconds: int = Field(default=DEFAULT_REQUEST_TIMEOUT_SECONDS, ge=1, le=3600)
    cold_start_timeout_seconds: int = Field(
        default=DEFAULT_COLD_START_TIMEOUT_SECONDS, ge=10, le=3600
    )
    max_pending_requests: RequestCount = DEFAULT_MAX_PENDING_REQUESTS
    replicas: int = Field(default=2, ge=1, le=32)
    tls_secret: DnsSubdomain | None = None
    # serve the OpenAI endpoint on port 80 without TLS: API keys and prompts then cross the
    # network in clear text, so a stack says so on purpose (a closed lab)
    plain_http: bool = False
    tenants: tuple[TenantSpec, ...] = ()
    # none: the admin port is reachable from no pod (every namespace of ours denies by default)
    metrics_scraper: MetricsScraperSpec | None = None

    @model_validator(mode="after")
    def _unique_tenants(self) -> GatewaySpec:
        seen: dict[str, int] = {}
        keys: dict[str, int] = {}
        problems = []
        for i, tenant in enumerate(self.tenants):
            if tenant.name in seen:
                problems.append(
                    Problem(f"tenants[{i}].name", f"used twice (also tenants[{seen[tenant.name]}])")
                )
            seen.setdefault(tenant.name, i)
            key = tenant.api_key.get_secret_value()
            if key in keys:
                # the value itself is never echoed: it is a secret
                problems.append(
                    Problem(
                        f"tenants[{i}].apiKey",
                        f"same key as tenants[{keys[key]}]; expected one key per tenant",
                    )
                )
            keys.setdefault(key, i)
            if len(key) < 16:
                problems.append(
                    Problem(
                        f"tenants[{i}].apiKey",
                        "too short; expected at least 16 characters (openssl rand -hex 32)",
                    )
                )
        if problems:
            raise CrossFieldProblems(problems)
        return self


_SEMVER = r"[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}"


class ChartsSpec(Model):
    """Pinned versions of the upstream Helm charts the inference stack installs."""

    keda: Annotated[str, _version(_SEMVER, "2.16.1")] = "2.16.1"
    nvidia_device_plugin: Annotated[str, _version(_SEMVER, "0.17.1")] = "0.17.1"
    dcgm_exporter: Annotated[str, _version(_SEMVER, "4.1.1")] = "4.1.1"


class MeteringSpec(Model):
    """What a GPU-hour costs, so the gateway can show per-second cost and the idle cost avoided."""

    price_per_gpu_hour: Annotated[PricePerGpuHour, Field(le=10000)] = DEFAULT_PRICE_PER_GPU_HOUR
    currency: str = Field(default=DEFAULT_CURRENCY, pattern=CURRENCY.pattern)


class InferenceSpec(Model):
    """vLLM per model, scaled 0..N by KEDA core, which the gateway drives as its external-push scaler."""

    image: PinnedImage
    gateway_image: PinnedImage
    weights_image: PinnedImage
    models: tuple[ModelSpec, ...] = ()
    gateway: GatewaySpec = GatewaySpec()
    charts: ChartsSpec = ChartsSpec()
    metering: MeteringSpec = MeteringSpec()

    @model_validator(mode="after")
    def _unique_models(self) -> InferenceSpec:
        served_seen: dict[str, int] = {}
        names_seen: dict[str, int] = {}
        problems = []
        for i, model in enumerate(self.models):
            if model.name in names_seen:
                problems.append(
                    Problem(
                        f"models[{i}].name",
                        f"model name{echo(model.name)} used twice "
                        f"(also models[{names_seen[model.name]}])",
                    )
                )
            names_seen.setdefault(model.name, i)
            served = model.served
            if served in served_seen:
                field = "servedName" if model.served_name else "name"
                problems.append(
                    Problem(
                        f"models[{i}].{field}",
                        f"served name{echo(served)} used twice (also models[{served_seen[served]}])",
                    )
                )
            served_seen.setdefault(served, i)
        if problems:
            raise CrossFieldProblems(problems)
        return self

    @model_validator(mode="after")
    def _gateway_over_tls(self) -> InferenceSpec:
        # checked here, not in GatewaySpec: a stack without a gateway section gets the default
        # GatewaySpec, which has no certificate and must be refused as well
        gateway = self.gateway
        if gateway.plain_http and gateway.tls_secret:
            raise CrossFieldProblems(
                [
                    Problem(
                        "gateway.plainHttp",
                        "true while gateway.tlsSecret is set; expected one of the two",
                    )
                ]
            )
        if not gateway.plain_http and not gateway.tls_secret:
            raise CrossFieldProblems(
                [
                    Problem(
                        "gateway.tlsSecret",
                        "required: the name of the kubernetes.io/tls Secret in the gateway's "
                        "namespace that the ingress serves HTTPS with (API keys travel in every "
                        "request); or set gateway.plainHttp: true to serve plain HTTP on purpose",
                    )
                ]
            )
        return self

    def images(self) -> list[tuple[str, str]]:
        """Every image the stack runs, with the field path that names it."""
        found = [
            ("inference.image", self.image),
            ("inference.gatewayImage", self.gateway_image),
            ("inference.weightsImage", self.weights_image),
        ]
        found += [
            (f"inference.models[{i}].image", m.image) for i, m in enumerate(self.models) if m.image
        ]
        return found


# --- residency -----------------------------------------------------------------------------


class ResidencyPolicy(Model):
    """Where data may be and what hosts may talk to (GDPR Art. 44)."""

    allowed_countries: frozenset[Country] = EU_EEA_COUNTRIES
    allowed_registries: tuple[AllowedRegistry, ...] = Field(min_length=1)
    allowed_object_store_endpoints: tuple[HttpsEndpoint, ...] = Field(min_length=1)
    # resolv.conf and resolved.conf take addresses only
    dns_resolvers: tuple[IpAddress, ...] = Field(min_length=1)
    ntp_servers: tuple[HostOrIp, ...] = Field(min_length=1)
    # CIDRs (IPv4 and IPv6) hosts may reach besides the cluster, DNS and NTP; unset: no limit
    egress_allowlist: tuple[AllowlistEntry, ...] | None = None

    @field_serializer("allowed_countries")
    def _sorted_countries(self, countries: frozenset[str]) -> list[str]:
        return sorted(countries)

    @model_validator(mode="after")
    def _policy_itself_is_sound(self) -> ResidencyPolicy:
        problems = []
        problems += duplicate_problems("allowedRegistries", self.allowed_registries, "registry")
        problems += duplicate_problems(
            "allowedObjectStoreEndpoints", self.allowed_object_store_endpoints, "endpoint"
        )
        problems += duplicate_problems("dnsResolvers", self.dns_resolvers, "resolver")
        problems += duplicate_problems("ntpServers", self.ntp_servers, "server")
        allowlist = self.egress_allowlist or ()
        problems += duplicate_problems("egressAllowlist", allowlist, "range")
        problems += everything_covered_problems(
            "egressAllowlist", allowlist, "the ranges hosts may reach"
        )
        if problems:
            raise CrossFieldProblems(problems)
        return self


# --- verification --------------------------------------------------------------------------

# XIDs after which a GPU must not serve until reset or replaced (NVIDIA "XID Errors", docs.nvidia.com
# /deploy/xid-errors: 48 double-bit ECC, 61/62 internal micro-controller breakpoint/halt, 64 row
# remapping failure, 74 NVLink error, 79 fallen off the bus, 92 high single-bit ECC rate, 95
# uncontained ECC error, 119/120 GSP RPC timeout/error, 140 unrecovered ECC error).
DEFAULT_FATAL_XIDS = (48, 61, 62, 64, 74, 79, 92, 95, 119, 120, 140)


class GpuHealthThresholds(Model):
    """Limits the GPU health probe's readings are held to; defaults say where they come from."""

    # DCGM's memory health watch (DCGM_HEALTH_WATCH_MEM) fails a GPU on any uncorrectable ECC error.
    max_uncorrected_volatile_ecc: int = Field(default=0, ge=0)
    # NVIDIA "GPU Memory Error Management": a pending row remap takes effect only after a GPU reset,
    # and a remap failure means the GPU needs service; neither should take traffic.
    max_pending_row_remaps: int = Field(default=0, ge=0)
    # Headroom below the slowdown temperature (NVML_TEMPERATURE_THRESHOLD_SLOWDOWN); an idle GPU
    # this close to throttling points at cooling trouble. 5 C matches DCGM's thermal-margin warnings.
    min_thermal_margin_c: int = Field(default=5, ge=0, le=50)
    fatal_xids: tuple[int, ...] = DEFAULT_FATAL_XIDS
    allow_stray_processes: bool = False


class VerificationSpec(Model):
    """How post-deploy verification judges the fleet."""

    gpu: GpuHealthThresholds = GpuHealthThresholds()
    # DB-IP Lite is published monthly: older than two months means an update was missed.
    geoip_max_age_days: int = Field(default=62, ge=1, le=3650)
    # host:port outside the allowed countries that every host must fail to reach when an egress
    # allowlist is configured; unset, the allowlist is checked in the ruleset only.
    egress_canary: AddressAndPort | None = None
    # A host's clock must follow an NTP server; false accepts a time daemon that is running and
    # enabled but has no server to follow (an isolated lab), and the report still says so.
    time_sync_required: bool = True


# --- the whole stack -----------------------------------------------------------------------


# the registry of an image reference lives with the other residency rules; this name stays for
# callers written before it moved
image_registry = registry_of


def inference_residency_problems(
    inference: InferenceSpec, policy: ResidencyPolicy
) -> list[Problem]:
    """Images from allowed registries and weights from allowed object stores: the one rule that
    ``StackConfig`` and a hand-built ``InferenceStackSpec`` (an existing cluster) both apply."""
    problems = []
    for path, image in inference.images():
        if not registry_allowed(image, policy.allowed_registries):
            registry = registry_of(image)
            problems.append(
                Problem(
                    path,
                    f"registry{echo(registry, quote=False)} is not in residency.allowedRegistries",
                )
            )
    for i, model in enumerate(inference.models):
        if not endpoint_allowed(model.source.endpoint, policy.allowed_object_store_endpoints):
            problems.append(
                Problem(
                    f"inference.models[{i}].source.endpoint",
                    "is not in residency.allowedObjectStoreEndpoints",
                )
            )
    return problems


class StackConfig(Model):
    """One environment: its hosts, pins, cluster, inference stack and residency policy."""

    environment: DnsLabel
    # relative to the project directory; written by `sovereign lab up` or an ordering step
    inventory: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._/-]{1,4096}$")
    ssh: SshDefaults = SshDefaults()
    hosts: tuple[HostSpec, ...] = Field(min_length=1)
    nvidia: NvidiaSpec
    cache: CacheSpec = CacheSpec()
    k3s: K3sSpec
    k3s_token: StackSecret | None = None
    inference: InferenceSpec
    residency: ResidencyPolicy
    verification: VerificationSpec = VerificationSpec()

    @model_validator(mode="after")
    def _cross_section_rules(self) -> StackConfig:
        problems: list[Problem] = []
        problems += self._host_identity_problems()
        problems += self._residency_problems()
        problems += self._cluster_problems()
        problems += self._model_fit_problems()
        if problems:
            raise CrossFieldProblems(problems)
        return self

    def _host_identity_problems(self) -> list[Problem]:
        problems = []
        names: dict[str, int] = {}
        endpoints: dict[tuple[str, int], int] = {}
        disks: dict[str, int] = {}
        for i, host in enumerate(self.hosts):
            if host.name in names:
                problems.append(
                    Problem(
                        f"hosts[{i}].name",
                        f"duplicate host name{echo(host.name)} (also hosts[{names[host.name]}])",
                    )
                )
            names.setdefault(host.name, i)
            if host.source == "lab" and self.inventory is None:
                problems.append(
                    Problem(
                        f"hosts[{i}].source",
                        "lab hosts take their addresses and host keys from the lab's inventory; "
                        "expected the stack's inventory to name it (.lab/inventory.json)",
                    )
                )
            if host.address is None:
                pass  # ordered: known after the order
            elif (endpoint := (host_key(host.address), host.ssh.port)) in endpoints:
                problems.append(
                    Problem(
                        f"hosts[{i}].address",
                        f"address and SSH port {host.ssh.port} already used by "
                        f"hosts[{endpoints[endpoint]}]; expected one address (and SSH port) per host",
                    )
                )
            else:
                endpoints.setdefault(endpoint, i)
            # an ordered machine's key is pinned on first contact when the stack pins none
            if host.ssh.host_key is None and self.inventory is None and not host.ordered:
                problems.append(
                    Problem(
                        f"hosts[{i}].ssh.hostKey",
                        "required: pin the host key fingerprint (ssh-keyscan HOST | ssh-keygen -lf -)",
                    )
                )
            for j, disk in enumerate(host.nvme):
                if disk.id in disks and disks[disk.id] != i:
                    problems.append(
                        Problem(
                            f"hosts[{i}].nvme[{j}].id",
                            f"drive serial also listed on hosts[{disks[disk.id]}]",
                        )
                    )
                disks.setdefault(disk.id, i)
        return problems

    def _residency_problems(self) -> list[Problem]:
        policy = self.residency
        problems = []
        for i, host in enumerate(self.hosts):
            if not country_allowed(host.country, policy.allowed_countries):
                problems.append(
                    Problem(
                        f"hosts[{i}].country",
                        f"{host.country} is outside the residency policy; expected one of "
                        f"{', '.join(sorted(policy.allowed_countries))}",
                    )
                )
            problems += [
                Problem(f"hosts[{i}].{p.path}", p.message)
                for p in host.location_problems(policy.allowed_countries)
            ]
        problems += inference_residency_problems(self.inference, policy)
        return problems

    def _cluster_problems(self) -> list[Problem]:
        problems = []
        if self.k3s.install and self.k3s_token is None:
            problems.append(
                Problem(
                    "k3sToken",
                    "required to install K3s: pulumi config set --secret k3sToken "
                    '"$(openssl rand -hex 32)" (or set k3s.install: false)',
                )
            )
        if self.k3s.install and not (self.k3s.installer_sha256 or self.k3s.airgap_bundle):
            problems.append(
                Problem(
                    "k3s.installerSha256",
                    "required: the sha256 of the K3s install script, or an airgapBundle on the hosts",
                )
            )
        for field, net in (
            ("k3s.clusterCidr", self.k3s.cluster_network),
            ("k3s.serviceCidr", self.k3s.service_network),
        ):
            for i, host in enumerate(self.hosts):
                try:
                    address = ipaddress.ip_address(host.address or "")
                except ValueError:
                    continue  # a host name, or ordered: its address is not known here
                if address in net:
                    problems.append(
                        Problem(
                            field,
                            f"contains the address of hosts[{i}]; expected a range no host "
                            "address is in (pods and services would shadow the host)",
                        )
                    )
        endpoint = self.k3s.api_endpoint
        for i, host in enumerate(self.hosts):
            if (
                endpoint
                and host.address is not None
                and host.role == "agent"
                and host_key(host.address) == host_key(endpoint)
            ):
                problems.append(
                    Problem(
                        "k3s.apiEndpoint",
                        f"is the address of hosts[{i}], an agent, which serves no API; expected "
                        "a server's address or a name that reaches the servers",
                    )
                )
        return problems + self._server_count_problems()

    def _server_count_problems(self) -> list[Problem]:
        servers = [h for h in self.hosts if h.role == "server"]
        if not servers:
            return [Problem("hosts", "no host has role 'server'; expected 1, 3 or 5 K3s servers")]
        if len(servers) % 2 == 0:
            return [
                Problem(
                    "hosts",
                    f"{len(servers)} hosts have role 'server'; embedded etcd needs an odd number "
                    "(1, 3, 5) to keep quorum",
                )
            ]
        return []

    def _model_fit_problems(self) -> list[Problem]:
        problems = []
        for i, model in enumerate(self.inference.models):
            if model.gpu is not None and not any(
                h.gpu.model == model.gpu.model for h in self.hosts
            ):
                have = sorted({h.gpu.model for h in self.hosts if h.gpu.model})
                problems.append(
                    Problem(
                        f"inference.models[{i}].gpu.model",
                        f"no host has {model.gpu.model} GPUs; expected one of the stack's GPU "
                        f"models ({', '.join(have) or 'none'})",
                    )
                )
                continue
            if not any(self.host_fits(h, model) for h in self.hosts):
                need = f"{model.gpus_per_replica} GPU(s)"
                if model.min_gpu_memory_gib:
                    need += f" with {model.min_gpu_memory_gib} GiB in total"
                problems.append(
                    Problem(
                        f"inference.models[{i}].gpusPerReplica",
                        f"no host can run a replica: needs {need} on one host",
                    )
                )
        return problems

    @staticmethod
    def host_fits(host: HostSpec, model: ModelSpec) -> bool:
        """True when one replica of ``model`` fits on ``host``'s GPUs (of the model asked for)."""
        if host.gpu.count < model.gpus_per_replica:
            return False
        if model.gpu is not None and host.gpu.model != model.gpu.model:
            return False
        return host.gpu.memory_gib * model.gpus_per_replica >= model.min_gpu_memory_gib

    @property
    def servers(self) -> tuple[HostSpec, ...]:
        return tuple(h for h in self.hosts if h.role == "server")

    def host_named(self, name: str) -> HostSpec:
        """The host called ``name`` (KeyError naming it when the stack has none)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in stack {self.environment}")

    @property
    def ordered_hosts(self) -> tuple[HostSpec, ...]:
        """The hosts the program orders: their addresses are known after the order."""
        return tuple(h for h in self.hosts if h.ordered)

    def with_addresses(self, addresses: typing.Mapping[str, str]) -> StackConfig:
        """This stack with the hosts named in ``addresses`` at those addresses (what an order
        returned). The rest of the stack was validated already; the addresses come from the
        provider, not from the stack file."""
        hosts = tuple(
            h.model_copy(update={"address": addresses[h.name]}) if h.name in addresses else h
            for h in self.hosts
        )
        return self.model_copy(update={"hosts": hosts})

    def with_pending_addresses(self) -> StackConfig:
        """This stack with a placeholder (:func:`pending_address`) for each ordered host's
        address: what ``render`` shows for review before the machines exist, and how the
        program learns a host's steps before the order returns."""
        return self.with_addresses(
            {h.name: pending_address(h.name) for h in self.ordered_hosts if h.address is None}
        )


# Under the reserved top-level domain .invalid (RFC 2606): no resolver answers it, so a script
# rendered with it can never reach a machine by accident.
PENDING_ADDRESS_SUFFIX = ".known-after-order.invalid"


def pending_address(host_name: str) -> str:
    """The placeholder that stands for an ordered host's address until the order returns it."""
    return host_name + PENDING_ADDRESS_SUFFIX


def host_address(host: HostSpec) -> str:
    """The host's address; an ordered host's only once the order has returned it.

    Raises ValueError naming the host for an ordered host whose address is not known yet."""
    if host.address is None:
        raise ValueError(
            f"{host.name}: ordered from {host.source}, its address exists once pulumi up has "
            "ordered the machine; commands that reach it take it from the stack's outputs "
            "(pulumi stack output --json, passed as --outputs)"
        )
    return host.address
