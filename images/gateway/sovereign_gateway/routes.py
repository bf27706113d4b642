"""The route table: which models the gateway serves, where their replicas listen, and the limits.

One home for the schema. ``sovereign render`` writes it (camelCase JSON) and the gateway reads it; both
import these models. Only pydantic and the standard library are imported here.

Example::

    {"models": [{"name": "meta-llama/Llama-3.3-70B-Instruct",
                 "upstream": "http://llama-70b.sovereign-models.svc:8000",
                 "targetConcurrency": 8, "maxPendingRequests": 1000,
                 "replicas": "llama-70b-replicas.sovereign-models.svc:8000",
                 "coldStartTimeoutSeconds": 900, "requestTimeoutSeconds": 600,
                 "gpusPerReplica": 4}],
     "tenants": [{"name": "team-a", "maxConcurrentRequests": 16}],
     "metering": {"pricePerGpuHour": 2.5, "currency": "EUR"}}
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

TENANT_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""A tenant's name: a DNS label (the route table and the API-key file both use it)."""
CURRENCY: Final = re.compile(r"^[A-Z]{3}$")
"""An ISO 4217 currency code, as ``metering.currency`` takes it."""

# The route table's defaults and bounds. A stack's config takes its gateway, model, tenant and
# metering fields' defaults and lower bounds from here (``components.config.models``), so a stack
# that validates renders a table the gateway accepts, and a field left out means the same on
# both sides.
DEFAULT_TARGET_CONCURRENCY: Final = 8
DEFAULT_MAX_PENDING_REQUESTS: Final = 1000
DEFAULT_COLD_START_TIMEOUT_SECONDS: Final = 900
DEFAULT_REQUEST_TIMEOUT_SECONDS: Final = 600
DEFAULT_GPUS_PER_REPLICA: Final = 1
DEFAULT_PRICE_PER_GPU_HOUR: Final = 0.0
DEFAULT_CURRENCY: Final = "EUR"
MAX_REQUEST_COUNT: Final = 100_000
"""The most requests one model may hold pending, or one tenant run at once: a count past it is
far beyond what a replica serves, and would only let a peer's snapshot claim more."""

TargetConcurrency = Annotated[int, Field(ge=1)]
"""Requests one replica serves at once before KEDA adds another."""
RequestCount = Annotated[int, Field(ge=1, le=MAX_REQUEST_COUNT)]
"""A cap on requests: a model's pending ones, a tenant's concurrent ones."""
PricePerGpuHour = Annotated[float, Field(ge=0)]


class _Schema(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True
    )


def split_host_port(text: str, default_host: str | None = None) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or (with a default host) ``:PORT`` as (host, port).

    The one parser of such addresses (route table and command line); ValueError says what was
    expected.
    """
    expected = f"expected HOST:PORT (IPv6 as [ADDR]:PORT), got {text!r}"
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
    else:
        host, sep, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError(expected)
    if not sep or not port_text.isdigit():
        raise ValueError(expected)
    if not host:
        if default_host is None:
            raise ValueError(expected)
        host = default_host
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"expected a port between 1 and 65535, got {port}")
    return host, port


class ModelRoute(_Schema):
    """One model: the name clients send as ``model``, the base URL of its replicas' Service, and
    optionally ``replicas``, a ``host:port`` whose DNS records are the model's ready replicas (a
    headless Service): the gateway probes and meters each of them there, and forwards through
    ``upstream``."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    upstream: str
    replicas: str | None = None
    target_concurrency: TargetConcurrency = DEFAULT_TARGET_CONCURRENCY
    max_pending_requests: RequestCount = DEFAULT_MAX_PENDING_REQUESTS
    cold_start_timeout_seconds: Annotated[float, Field(gt=0)] = float(
        DEFAULT_COLD_START_TIMEOUT_SECONDS
    )
    request_timeout_seconds: Annotated[float, Field(gt=0)] = float(DEFAULT_REQUEST_TIMEOUT_SECONDS)
    gpus_per_replica: Annotated[int, Field(ge=0)] = DEFAULT_GPUS_PER_REPLICA
    # the most replicas KEDA runs of the model: with the two limits above, it bounds the count
    # a peer replica may report for it (unset: only --max-peer-count does)
    max_replicas: Annotated[int, Field(ge=1)] | None = None
    # the plan's estimate of one cold start (pod start, weights from the node cache, engine start):
    # Retry-After until the gateway has seen a cold start of its own; unset: the gateway's default
    expected_cold_start_seconds: Annotated[float, Field(gt=0, le=86400)] | None = None

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        if value != value.strip() or not value.isprintable():
            raise ValueError(
                f"expected a model name without surrounding spaces or control characters, got {value!r}"
            )
        return value

    @field_validator("upstream")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"expected an http(s) base URL such as http://llama.models.svc:8000, got {value!r}"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"expected a base URL without query or fragment, got {value!r}")
        try:
            parts.port  # noqa: B018  (raises on a port out of range)
        except ValueError as error:
            raise ValueError(f"expected a valid port in {value!r}: {error}") from None
        return value.rstrip("/")

    @field_validator("replicas")
    @classmethod
    def _replicas_address(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)
        return value


class TenantLimit(_Schema):
    """A tenant named in the API-key file, with its optional cap on concurrent requests."""

    name: str
    max_concurrent_requests: RequestCount | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not TENANT_NAME.fullmatch(value):
            raise ValueError(
                f"expected a DNS label (lowercase letters, digits, '-'), got {value!r}"
            )
        return value


class Metering(_Schema):
    """How GPU time is priced in ``/usage``."""

    price_per_gpu_hour: PricePerGpuHour = DEFAULT_PRICE_PER_GPU_HOUR
    currency: str = DEFAULT_CURRENCY

    @field_validator("currency")
    @classmethod
    def _iso_currency(cls, value: str) -> str:
        if not CURRENCY.fullmatch(value):
            raise ValueError(f"expected an ISO 4217 currency code such as EUR, got {value!r}")
        return value


class RouteTable(_Schema):
    """The whole file: models, tenants, metering."""

    models: list[ModelRoute]
    tenants: list[TenantLimit] = Field(default_factory=list)
    metering: Metering = Field(default_factory=Metering)

    @model_validator(mode="after")
    def _unique_names(self) -> RouteTable:
        for kind, names in (
            ("models", [model.name for model in self.models]),
            ("tenants", [tenant.name for tenant in self.tenants]),
        ):
            seen: set[str] = set()
            for index, name in enumerate(names):
                if name in seen:
                    raise ValueError(
                        f"{kind}[{index}].name: {name!r} appears twice; names must be unique"
                    )
                seen.add(name)
        return self

    def model(self, name: str) -> ModelRoute | None:
        """The route for ``name``, or None when no model of that name is configured."""
        for route in self.models:
            if route.name == name:
                return route
        return None

    def tenant(self, name: str) -> TenantLimit | None:
        """The limits of tenant ``name``, or None when the table names none for it."""
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        return None

    def to_json(self) -> str:
        """The camelCase JSON text the gateway reads (stable key order, trailing newline)."""
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2) + "\n"


class RouteTableError(ValueError):
    """The route-table file is missing, not JSON, or does not match the schema."""


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_route_table(text: str, source: str = "route table") -> RouteTable:
    """Parse route-table JSON text; errors name the field (camelCase, as in the file)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RouteTableError(
            f"{source}: expected JSON, line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    try:
        # the file speaks camelCase only; snake_case names are for Python callers
        return RouteTable.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as error:
        problems = "; ".join(
            f"{_location(tuple(item['loc']))}: {item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        )
        raise RouteTableError(f"{source}: {problems}") from None


def check_reload(current: RouteTable, reloaded: RouteTable, source: str = "route table") -> None:
    """Refuse, on reload, a table that would take every served model away.

    A table without models is valid at start (a platform with no model yet), but replacing a
    table that serves models with one that serves none turns every request into a 404: far more
    likely a truncated or mis-generated file than an intent, so it is refused like an invalid one.
    """
    if current.models and not reloaded.models:
        raise RouteTableError(
            f"{source}: models: expected at least one model; the table in use serves "
            f"{len(current.models)} and this one would answer every request 404 "
            "(a gateway started with a table without models serves none)"
        )


def load_route_table(path: str | Path) -> RouteTable:
    """Read and validate the route-table file at ``path``."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise RouteTableError(f"route table {file}: cannot read: {error.strerror}") from None
    return parse_route_table(text, source=f"route table {file}")
