"""Residency policies, applied by ``pulumi preview --policy-pack components/policy``.

The same rules as the config boundary and post-deploy verification, checked on resources before
they exist: cloud regions and zones, container images, object-store endpoints, the declared
country of GPU hosts. Configure allowed registries and endpoints with the pack's config
(``sovereign policy-config stacks/Pulumi.<env>.yaml`` writes it from a stack's residency policy).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from components.config.catalog import EU_EEA_COUNTRIES

# Every comparison (a region's country, a registry, an endpoint, a country code) is the config
# boundary's own: the pack and ``sovereign validate`` give the same answer for every spelling.
from components.config.residency import (
    country_allowed,
    endpoint_allowed,
    region_country,
    registry_allowed,
    registry_of,
)

LOCATION_KEYS = ("region", "location", "zone", "availabilityZone", "datacenter")
WORKLOAD_TYPES = {
    "kubernetes:core/v1:Pod",
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:batch/v1:Job",
    "kubernetes:batch/v1:CronJob",
}
GPU_HOST_TYPE = "sovereign:gpu_host:GpuHost"


def _allowed_countries(config: Mapping[str, Any]) -> list[str]:
    return list(config.get("allowedCountries") or EU_EEA_COUNTRIES)


def resource_provider(resource_type: str) -> str:
    """The provider a resource type belongs to: its package (``scaleway`` for
    ``scaleway:instance/server:Server``, ``ovh`` for ``ovh:CloudProject/instance:Instance``)."""
    return resource_type.partition(":")[0]


# An order that names its place inside the order's settings rather than a location key: OVHcloud's
# dedicated-server order (ovh:Dedicated/server:Server) puts it in a plan configuration.
ORDER_LOCATION_LABELS = ("dedicated_datacenter",)


def _locations(props: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Every place a resource's inputs name: its location keys, and the datacenters its plan
    configurations ask for."""
    for key in LOCATION_KEYS:
        value = props.get(key)
        if isinstance(value, str) and value:
            yield key, value
    for i, plan in enumerate(props.get("plans") or []):
        if not isinstance(plan, Mapping):
            continue
        for setting in plan.get("configurations") or []:
            if not isinstance(setting, Mapping):
                continue
            value = setting.get("value")
            if setting.get("label") in ORDER_LOCATION_LABELS and isinstance(value, str) and value:
                yield f"plans[{i}].{setting['label']}", value


def validate_regions(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every location key of a resource, looked up in its own provider's table first, then in
    every provider's (:func:`region_country`); refused when it lies outside the allowed countries
    or no table knows it."""
    allowed = _allowed_countries(args.get_config())
    places = ", ".join(sorted({a.upper() for a in allowed if isinstance(a, str)}))
    provider = resource_provider(args.resource_type)
    for key, value in _locations(args.props):
        where = f"{args.resource_type} {args.name!r}: {key} {value!r}"
        country = region_country(value, provider)
        if country is None:
            report(
                f"{where} is not a region known to be inside the allowed countries; expected a "
                f"location of the provider location table in {places}",
                None,
            )
        elif not country_allowed(country, allowed):
            report(
                f"{where} is in {country}, outside the allowed countries; expected a location "
                f"in {places}",
                None,
            )


def _containers(props: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    spec: Any = props.get("spec") or {}
    for _ in range(3):  # Pod spec, or template.spec, or jobTemplate.spec.template.spec
        if not isinstance(spec, Mapping):
            return
        if "containers" in spec:
            break
        spec = (
            (spec.get("jobTemplate") or {}).get("spec")
            or spec.get("template", {}).get("spec")
            or {}
        )
    if not isinstance(spec, Mapping):
        return
    for key in ("initContainers", "containers"):
        for container in spec.get(key) or []:
            if isinstance(container, Mapping):
                yield container


def validate_images(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in WORKLOAD_TYPES:
        return
    allowed = list(args.get_config().get("allowedRegistries") or [])
    for container in _containers(args.props):
        image = str(container.get("image", ""))
        if image and not registry_allowed(image, allowed):
            report(
                f"container {container.get('name')!r} pulls {image} from {_registry_named(image)}, "
                f"not an allowed registry ({', '.join(sorted(allowed)) or 'none configured'})",
                None,
            )


def _registry_named(image: str) -> str:
    try:
        return registry_of(image)
    except ValueError:
        return f"{image.partition('/')[0]!r} (not a registry host)"


def _endpoint_values(value: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, Mapping):
        if "name" in value and "value" in value and isinstance(value.get("value"), str):
            yield str(value["name"]), value["value"]  # an env var
        for k, v in value.items():
            yield from _endpoint_values(v, str(k))
    elif isinstance(value, list):
        for item in value:
            yield from _endpoint_values(item, key)
    elif isinstance(value, str) and "endpoint" in key.lower():
        yield key, value


def validate_endpoints(args: ResourceValidationArgs, report: ReportViolation) -> None:
    allowed = list(args.get_config().get("allowedObjectStoreEndpoints") or [])
    for key, value in _endpoint_values(args.props):
        # URL schemes are case-insensitive: HTTPS://... is checked like https://...
        if "endpoint" not in key.lower() or not value.lower().startswith(("http://", "https://")):
            continue
        if not endpoint_allowed(value, allowed):
            report(f"{key} points at {value}, not an allowed object-store endpoint", None)


def validate_gpu_hosts(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != GPU_HOST_TYPE:
        return
    country = args.props.get("country")
    if not country_allowed(country, _allowed_countries(args.get_config())):
        report(
            f"GPU host {args.name} is declared in {country}, outside the allowed countries", None
        )


_LIST = {"type": "array", "items": {"type": "string"}}


def _policy(
    name: str,
    description: str,
    validate: Callable[[ResourceValidationArgs, ReportViolation], None],
    config: dict[str, Any],
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=PolicyConfigSchema(properties=config),
    )


def residency_policies() -> list[ResourceValidationPolicy]:
    countries = {"allowedCountries": _LIST}
    return [
        _policy(
            "eu-regions-only",
            "Cloud regions and zones lie in the allowed countries.",
            validate_regions,
            countries,
        ),
        _policy(
            "images-from-allowed-registries",
            "Workloads pull images only from allowed registries.",
            validate_images,
            {"allowedRegistries": _LIST},
        ),
        _policy(
            "object-store-endpoints-allowed",
            "Object-store endpoints are on the allowed list.",
            validate_endpoints,
            {"allowedObjectStoreEndpoints": _LIST},
        ),
        _policy(
            "gpu-hosts-in-allowed-countries",
            "GPU hosts are declared in allowed countries.",
            validate_gpu_hosts,
            countries,
        ),
    ]


def pack_config(
    allowed_countries: list[str], registries: list[str], endpoints: list[str]
) -> dict[str, Any]:
    """The policy pack config for a stack (``pulumi preview --policy-pack-config``)."""
    return {
        "eu-regions-only": {"allowedCountries": allowed_countries},
        "gpu-hosts-in-allowed-countries": {"allowedCountries": allowed_countries},
        "images-from-allowed-registries": {"allowedRegistries": registries},
        "object-store-endpoints-allowed": {"allowedObjectStoreEndpoints": endpoints},
    }
