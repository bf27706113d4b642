"""Typed, frozen models of one stack's whole configuration.

Every component takes one of these models as its argument; nothing downstream reads raw dicts.
Field names are camelCase in stack files (Pulumi's convention) and snake_case in Python.
Rules that span several fields live in ``model_validator``s that report every violation with the
path of the field to fix (see :class:`~components.config.errors.CrossFieldProblems`).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from components.config.catalog import CUDA_MIN_DRIVER_BRANCH, EU_EEA_COUNTRIES, GPU_MODELS
from components.config.errors import CrossFieldProblems, Problem


class Model(BaseModel):
    """Base for every config model: frozen, unknown fields refused, camelCase in files."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=True,
    )


# --- reusable field types -------------------------------------------------------------------

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$"
)
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_BY_ID = re.compile(r"^nvme-[A-Za-z0-9._:-]+$")
_PARTITION_SUFFIX = re.compile(r"-part[0-9]+$")
# REGISTRY/REPOSITORY[:TAG]@sha256:<64 hex>: an image pinned by content, not by a movable tag
_PINNED_IMAGE = re.compile(
    r"^(?P<name>[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*)"
    r"(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?@sha256:(?P<digest>[0-9a-f]{64})$"
)
_DNS_SUBDOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            "expected a DNS-1123 label: 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _host_or_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise ValueError("expected an IPv4/IPv6 address or a DNS hostname") from None
    return value


def _country(value: str) -> str:
    if not re.fullmatch(r"[A-Z]{2}", value):
        raise ValueError("expected an ISO 3166-1 alpha-2 country code in capitals, e.g. DE")
    return value


def _public_ip(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("expected an IPv4 or IPv6 address") from None
    if not ip.is_global and not _is_documentation(ip):
        raise ValueError("expected a public (globally routable) egress address")
    return str(ip)


def _is_documentation(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # RFC 5737 / RFC 3849 ranges are accepted so example stacks can be written without real
    # addresses; verification geolocates them as unknown and fails them on a live fleet.
    doc_nets = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
    return any(ip in ipaddress.ip_network(n) for n in doc_nets)


def _fingerprint(value: str) -> str:
    if not _FINGERPRINT.match(value):
        raise ValueError(
            "expected an SSH host-key fingerprint as 'ssh-keygen -lf' prints it: "
            "SHA256: followed by 43 base64 characters"
        )
    return value


def _key_reference(value: str) -> str:
    if "PRIVATE KEY" in value or value.startswith("-----"):
        raise ValueError(
            "this looks like a private key itself; never put key material in a stack file, "
            "give a reference instead: file:PATH or env:VARIABLE"
        )
    scheme, _, rest = value.partition(":")
    if scheme not in {"file", "env"} or not rest:
        raise ValueError("expected a key reference: file:PATH or env:VARIABLE")
    if scheme == "env" and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rest):
        raise ValueError("expected env:VARIABLE with a valid environment variable name")
    return value


def _disk_id(value: str) -> str:
    name = value.removeprefix("/dev/disk/by-id/")
    if value.startswith("/dev/") and not value.startswith("/dev/disk/by-id/"):
        raise ValueError(
            "kernel names like /dev/nvme0n1 are not stable across boots; "
            "expected the /dev/disk/by-id/nvme-<model>_<serial> name"
        )
    if not _BY_ID.match(name):
        raise ValueError("expected a /dev/disk/by-id name of an NVMe drive: nvme-<model>_<serial>")
    if _PARTITION_SUFFIX.search(name):
        raise ValueError(
            "names a partition (-partN); expected the whole drive: the cache takes whole disks"
        )
    return name


def _version(pattern: str, example: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"malformed version pin; expected the form {example}")
        return value

    return AfterValidator(check)


def _label_key(value: str) -> str:
    if not _LABEL_KEY.match(value) or len(value) > 316:
        raise ValueError("expected a Kubernetes label key: [prefix/]name")
    return value


def _label_value(value: str) -> str:
    if not _LABEL_VALUE.match(value):
        raise ValueError("expected a Kubernetes label value: up to 63 of [A-Za-z0-9-_.]")
    return value


def _https_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.path not in {"", "/"}:
        raise ValueError("expected an https:// endpoint URL without a path")
    return value.rstrip("/")


def _pinned_image(value: str) -> str:
    if not _PINNED_IMAGE.match(value):
        if "@sha256:" not in value:
            raise ValueError(
                "must be pinned by digest: REGISTRY/REPOSITORY[:TAG]@sha256:<64 hex digits> "
                "(a tag alone can be moved to other content)"
            )
        raise ValueError(
            "malformed image reference; expected REGISTRY/REPOSITORY[:TAG]@sha256:<64 hex>"
        )
    return value


def _dns_subdomain(value: str) -> str:
    if not _DNS_SUBDOMAIN.match(value):
        raise ValueError("expected a Kubernetes object name: a lowercase DNS-1123 subdomain")
    return value


def _object_uri(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "s3" or not parts.hostname:
        raise ValueError("expected an object-store URI: s3://bucket/prefix")
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
        return value.value
    if isinstance(value, SecretStr):
        return value
    raise ValueError(
        "must be stored as a Pulumi secret (pulumi config set --secret ...), not in plain text"
    )


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
HostOrIp = Annotated[str, AfterValidator(_host_or_ip)]
Country = Annotated[str, AfterValidator(_country)]
PublicIp = Annotated[str, AfterValidator(_public_ip)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]
KeyReference = Annotated[str, AfterValidator(_key_reference)]
DiskId = Annotated[str, AfterValidator(_disk_id)]
LabelKey = Annotated[str, AfterValidator(_label_key)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
HttpsEndpoint = Annotated[str, AfterValidator(_https_endpoint)]
ObjectUri = Annotated[str, AfterValidator(_object_uri)]
PinnedImage = Annotated[str, AfterValidator(_pinned_image)]
DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
StackSecret = Annotated[SecretStr, BeforeValidator(_require_secret)]


# --- hosts ---------------------------------------------------------------------------------


class SshSpec(Model):
    """How to reach a host. The host key is pinned: a host presenting another key is refused."""

    user: str = Field(default="root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    port: int = Field(default=22, ge=1, le=65535)
    private_key: KeyReference
    host_key: Fingerprint | None = None


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
            problems.append(Problem("model", f"unknown GPU model {self.model!r}; expected {known}"))
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


class HostSpec(Model):
    """One bare-metal server (``source: byo``: you own or rent it and give us SSH)."""

    name: DnsLabel
    role: Literal["server", "agent"]
    source: Literal["byo"] = "byo"
    address: HostOrIp
    ssh: SshSpec
    provider: str = Field(min_length=1, max_length=63)
    datacenter: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    region: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    country: Country
    egress_ips: tuple[PublicIp, ...] = ()
    gpu: GpuSpec = GpuSpec()
    nvme: tuple[CacheDisk, ...] = ()
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    taints: tuple[str, ...] = ()

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
        for i, taint in enumerate(self.taints):
            if not re.fullmatch(
                r"[A-Za-z0-9./-]+(=[A-Za-z0-9._-]*)?:(NoSchedule|PreferNoSchedule|NoExecute)", taint
            ):
                problems.append(Problem(f"taints[{i}]", "expected key[=value]:Effect"))
        if problems:
            raise CrossFieldProblems(problems)
        return self


# --- host software pins --------------------------------------------------------------------


class NvidiaSpec(Model):
    """Pinned NVIDIA driver, CUDA and container toolkit versions."""

    driver_version: Annotated[str, _version(r"\d{3}\.\d{2,3}(\.\d{2,3})?", "570.172.08")]
    open_kernel_modules: bool = True
    cuda_version: Annotated[str, _version(r"\d{2}\.\d(\.\d{1,2})?", "12.8 or 12.8.1")]
    container_toolkit_version: Annotated[str, _version(r"\d+\.\d+\.\d+(-\d+)?", "1.17.8")]
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


class CacheSpec(Model):
    """The NVMe weight cache every GPU host builds from its ``nvme`` disks."""

    mount_point: str = Field(default="/var/lib/sovereign/weights", pattern=r"^/[A-Za-z0-9._/-]+$")
    raid_level: Literal[0] = 0
    filesystem: Literal["xfs", "ext4"] = "xfs"
    array_name: str = Field(default="sovereign-cache", pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")

    @model_validator(mode="after")
    def _not_a_system_path(self) -> CacheSpec:
        reserved = ("/", "/boot", "/etc", "/usr", "/var", "/bin", "/sbin", "/lib", "/root", "/home")
        if self.mount_point.rstrip("/") in reserved or ".." in self.mount_point.split("/"):
            raise CrossFieldProblems(
                [Problem("mountPoint", "must be a dedicated directory, not a system path")]
            )
        return self


class SshDefaults(Model):
    """Connection behaviour shared by every host; the executor reads retries and timeouts here."""

    connect_timeout_seconds: int = Field(default=10, ge=1, le=300)
    connect_retries: int = Field(default=5, ge=0, le=50)
    retry_backoff_seconds: float = Field(default=2.0, ge=0, le=60)
    step_timeout_seconds: int = Field(default=1800, ge=10, le=14400)
    reboot_timeout_seconds: int = Field(default=900, ge=30, le=7200)
    max_parallel_hosts: int = Field(default=8, ge=1, le=256)


# --- cluster -------------------------------------------------------------------------------


class K3sSpec(Model):
    """The K3s cluster: pinned release, network ranges, and what goes into its config."""

    install: bool = True
    version: Annotated[str, _version(r"v1\.\d{2}\.\d{1,2}\+k3s\d", "v1.31.6+k3s1")]
    installer_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    airgap_bundle: str | None = None
    cluster_cidr: str = "10.42.0.0/16"
    service_cidr: str = "10.43.0.0/16"
    tls_sans: tuple[HostOrIp, ...] = ()
    secrets_encryption: bool = True
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _networks(self) -> K3sSpec:
        problems = []
        nets = {}
        for field in ("cluster_cidr", "service_cidr"):
            try:
                nets[field] = ipaddress.ip_network(getattr(self, field))
            except ValueError:
                problems.append(Problem(to_camel(field), "expected a CIDR such as 10.42.0.0/16"))
        if len(nets) == 2 and nets["cluster_cidr"].overlaps(nets["service_cidr"]):
            problems.append(
                Problem("serviceCidr", "overlaps clusterCidr; expected disjoint ranges")
            )
        if problems:
            raise CrossFieldProblems(problems)
        return self


# --- inference -----------------------------------------------------------------------------


class WeightsSource(Model):
    """Where a model's weights live: an EU object store, pinned to a revision."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    uri: ObjectUri
    endpoint: HttpsEndpoint
    revision: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")


class ModelGpuSpec(Model):
    """Which GPU a model's replicas run on (node affinity on the node's GPU-model label)."""

    model: str

    @model_validator(mode="after")
    def _known_model(self) -> ModelGpuSpec:
        if self.model not in GPU_MODELS:
            known = ", ".join(sorted(GPU_MODELS))
            raise CrossFieldProblems(
                [Problem("model", f"unknown GPU model {self.model!r}; expected {known}")]
            )
        return self


class ModelSpec(Model):
    """One served model behind the OpenAI-compatible endpoint.

    ``image``, ``args`` and ``env`` bring a team's own serving container (vLLM, TensorRT-LLM,
    SGLang); the toolkit still owns probes, GPU requests, the cache mount and scaling.
    """

    name: DnsLabel
    served_name: str | None = Field(default=None, min_length=1, max_length=128)
    source: WeightsSource
    gpus_per_replica: int = Field(default=1, ge=1, le=16)
    min_gpu_memory_gib: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1, le=64)
    idle_seconds: int = Field(default=300, ge=30, le=86400)
    prefetch: bool = True
    max_model_len: int | None = Field(default=None, ge=256)
    # requests one replica serves at once before KEDA adds another (pending + in flight per replica)
    target_concurrency: int = Field(default=8, ge=1, le=4096)
    gpu: ModelGpuSpec | None = None
    image: PinnedImage | None = None
    args: tuple[Annotated[str, Field(max_length=4096)], ...] = ()
    env: dict[str, Annotated[str, Field(max_length=4096)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _env_names(self) -> ModelSpec:
        problems = [
            Problem(f"env.{name}", "expected an environment variable name: [A-Za-z_][A-Za-z0-9_]*")
            for name in self.env
            if not _ENV_NAME.match(name)
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

    name: DnsLabel
    api_key: StackSecret
    max_concurrent_requests: int | None = Field(default=None, ge=1, le=100000)


class GatewaySpec(Model):
    """The OpenAI-compatible entry point that holds requests while a model wakes up."""

    host: HostOrIp = "inference.local"
    port: int = Field(default=8080, ge=1, le=65535)
    request_timeout_seconds: int = Field(default=600, ge=1, le=3600)
    cold_start_timeout_seconds: int = Field(default=900, ge=10, le=3600)
    max_pending_requests: int = Field(default=1000, ge=1, le=100000)
    replicas: int = Field(default=2, ge=1, le=32)
    tls_secret: DnsSubdomain | None = None
    tenants: tuple[TenantSpec, ...] = ()

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


class ChartsSpec(Model):
    """Pinned versions of the upstream Helm charts the inference stack installs."""

    keda: Annotated[str, _version(r"\d+\.\d+\.\d+", "2.16.1")] = "2.16.1"
    nvidia_device_plugin: Annotated[str, _version(r"\d+\.\d+\.\d+", "0.17.1")] = "0.17.1"
    dcgm_exporter: Annotated[str, _version(r"\d+\.\d+\.\d+", "4.1.1")] = "4.1.1"


class MeteringSpec(Model):
    """What a GPU-hour costs, so the gateway can show per-second cost and the idle cost avoided."""

    price_per_gpu_hour: float = Field(default=0.0, ge=0, le=10000)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


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
                        f"model name {model.name!r} used twice (also models[{names_seen[model.name]}])",
                    )
                )
            names_seen.setdefault(model.name, i)
            served = model.served
            if served in served_seen:
                field = "servedName" if model.served_name else "name"
                problems.append(
                    Problem(
                        f"models[{i}].{field}",
                        f"served name {served!r} used twice (also models[{served_seen[served]}])",
                    )
                )
            served_seen.setdefault(served, i)
        if problems:
            raise CrossFieldProblems(problems)
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
    allowed_registries: tuple[HostOrIp, ...] = Field(min_length=1)
    allowed_object_store_endpoints: tuple[HttpsEndpoint, ...] = Field(min_length=1)
    dns_resolvers: tuple[Annotated[str, AfterValidator(_host_or_ip)], ...] = Field(min_length=1)
    ntp_servers: tuple[HostOrIp, ...] = Field(min_length=1)
    egress_allowlist: tuple[str, ...] | None = None

    @field_serializer("allowed_countries")
    def _sorted_countries(self, countries: frozenset[str]) -> list[str]:
        return sorted(countries)

    @model_validator(mode="after")
    def _policy_itself_is_sound(self) -> ResidencyPolicy:
        problems = []
        for i, resolver in enumerate(self.dns_resolvers):
            try:
                ipaddress.ip_address(resolver)
            except ValueError:
                problems.append(Problem(f"dnsResolvers[{i}]", "expected an IP address"))
        for i, cidr in enumerate(self.egress_allowlist or ()):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                problems.append(Problem(f"egressAllowlist[{i}]", "expected a CIDR"))
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
    egress_canary: str | None = Field(default=None, pattern=r"^[0-9a-fA-F.:]+:\d{1,5}$")


# --- the whole stack -----------------------------------------------------------------------


def image_registry(image: str) -> str:
    """The registry host of an image reference (Docker's rules: docker.io when none is given)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first.split(":")[0] if first.count(":") == 1 else first
    return "docker.io"


class StackConfig(Model):
    """One environment: its hosts, pins, cluster, inference stack and residency policy."""

    environment: DnsLabel
    inventory: str | None = None
    ssh: SshDefaults = SshDefaults()
    hosts: tuple[HostSpec, ...] = Field(min_length=1)
    nvidia: NvidiaSpec
    cache: CacheSpec = CacheSpec()
    k3s: K3sSpec
    k3s_token: StackSecret | None = Field(default=None, alias="k3sToken")
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
                        f"duplicate host name {host.name!r} (also hosts[{names[host.name]}])",
                    )
                )
            names.setdefault(host.name, i)
            endpoint = (host.address, host.ssh.port)
            if endpoint in endpoints:
                problems.append(
                    Problem(
                        f"hosts[{i}].address",
                        f"{host.address}:{host.ssh.port} is already used by hosts[{endpoints[endpoint]}]; "
                        "expected one address (and SSH port) per host",
                    )
                )
            endpoints.setdefault(endpoint, i)
            if host.ssh.host_key is None and self.inventory is None:
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
            if host.country not in policy.allowed_countries:
                problems.append(
                    Problem(
                        f"hosts[{i}].country",
                        f"{host.country} is outside the residency policy; expected one of "
                        f"{', '.join(sorted(policy.allowed_countries))}",
                    )
                )
        for path, image in self.inference.images():
            registry = image_registry(image)
            if registry not in policy.allowed_registries:
                problems.append(
                    Problem(
                        path,
                        f"registry {registry} is not in residency.allowedRegistries "
                        f"({', '.join(policy.allowed_registries)})",
                    )
                )
        for i, model in enumerate(self.inference.models):
            if model.source.endpoint not in policy.allowed_object_store_endpoints:
                problems.append(
                    Problem(
                        f"inference.models[{i}].source.endpoint",
                        f"{model.source.endpoint} is not in residency.allowedObjectStoreEndpoints",
                    )
                )
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
