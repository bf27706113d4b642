"""The residency layer: the host's declared country and placement labels, where its addresses
geolocate, which DNS resolvers, NTP servers and registries it uses, and its firewall.

Every comparison against the stack's residency policy goes through
:mod:`components.config.residency`, the rules ``validate`` and the policy pack apply too."""

from __future__ import annotations

import ipaddress
import json
import re

import yaml

from components.config.residency import country_allowed, normalize_registry, registry_allowed
from components.plan.checks import RESIDENCY_LABELS
from components.verification.layers.facts import Context, HostFacts
from components.verification.layers.k3s import label_check
from components.verification.results import Finding, skipped, verdict

LAYER = "residency"
SOURCES: dict[str, tuple[str, ...]] = {
    "label": ("node_labels",),
    "addresses": ("addresses",),
    "egress-ip": ("addresses",),
    "dns-resolvers": ("resolv_conf", "resolved_dns"),
    "ntp-servers": ("ntp_config", "ntp_sources"),
    "registry-mirrors": ("k3s_registries",),
    "images": ("images",),
    "firewall": ("firewall",),
    "egress-allowlist": ("firewall",),
    "egress-canary": ("egress_canary",),
}


def judge(ctx: Context) -> list[Finding]:
    return [
        *_country_checks(ctx),
        *_address_checks(ctx),
        _dns_check(ctx),
        _ntp_check(ctx),
        *_registry_checks(ctx),
        *_firewall_checks(ctx),
    ]


def _country_checks(ctx: Context) -> list[Finding]:
    host, allowed = ctx.host, ctx.config.residency.allowed_countries
    declared = verdict(
        LAYER,
        host.name,
        "declared-country",
        country_allowed(host.country, allowed),
        host.country,
        "a country in residency.allowedCountries",
    )
    return [declared, *(label_check(ctx, LAYER, key) for key in RESIDENCY_LABELS)]


def parse_global_addresses(text: str) -> list[str]:
    """The globally routable addresses among ``ip -o addr`` CIDRs (pure)."""
    found = []
    for cidr in text.split():
        try:
            address = ipaddress.ip_address(cidr.split("/")[0])
        except ValueError:
            continue
        if address.is_global:
            found.append(str(address))
    return sorted(set(found))


def _address_checks(ctx: Context) -> list[Finding]:
    name, policy, geoip = ctx.host.name, ctx.config.residency, ctx.geoip
    allowed = sorted(policy.allowed_countries)
    declared = list(ctx.host.egress_ips)
    discovered = [
        a for a in parse_global_addresses(ctx.facts.get("addresses")) if a not in declared
    ]
    max_age = ctx.config.verification.geoip_max_age_days
    if geoip is None:
        why = "no geolocation database (see geoip-database-fresh)"
        return [
            verdict(LAYER, name, "geoip-database-fresh", False, "missing", "DB-IP Lite Country"),
            *(skipped(LAYER, name, f"egress-ip:{ip}", why) for ip in declared),
            skipped(LAYER, name, "addresses", why),
        ]
    age = geoip.age_days(ctx.now)
    results = [
        verdict(
            LAYER,
            name,
            "geoip-database-fresh",
            age <= max_age,
            f"{geoip.database_type} built {geoip.built.date()} ({age} days old)",
            f"at most {max_age} days old",
            database=geoip.describe(),
        )
    ]
    for address in declared:
        country = geoip.country(address)
        results.append(
            verdict(
                LAYER,
                name,
                f"egress-ip:{address}",
                country_allowed(country, allowed),
                country or "unknown to the database",
                f"one of {', '.join(allowed)}",
            )
        )
    countries = {address: geoip.country(address) for address in discovered}
    outside = {a: c for a, c in countries.items() if not country_allowed(c, allowed)}
    results.append(
        verdict(
            LAYER,
            name,
            "addresses",
            not outside,
            ", ".join(f"{a} {c or 'unknown'}" for a, c in outside.items())
            or (", ".join(f"{a} {c}" for a, c in countries.items()) or "no other global address"),
            f"every global address in one of {', '.join(allowed)}",
            countries=countries,
        )
    )
    return results


def resolvers_in_use(facts: HostFacts) -> list[str]:
    """The DNS servers the host asks: resolv.conf's, or systemd-resolved's behind its stub."""
    servers = re.findall(r"^nameserver\s+(\S+)", facts.get("resolv_conf"), re.MULTILINE)
    for line in facts.get("resolved_dns").splitlines():
        servers += [w.split("#")[0] for w in line.split(":", 1)[-1].split()]
    uses_stub = (
        servers and all(s.startswith("127.0.0.") for s in servers) and facts.get("resolved_dns")
    )
    return sorted({s for s in servers if not (uses_stub and s.startswith("127.0.0."))})


def _only_allowed(ctx: Context, check: str, in_use: list[str], allowed: tuple[str, ...]) -> Finding:
    """At least one server in use, and every one of them on the stack's list."""
    stray = [s for s in in_use if s not in allowed]
    return verdict(
        LAYER,
        ctx.host.name,
        check,
        bool(in_use) and not stray,
        ", ".join(in_use) or "none",
        f"only {', '.join(sorted(allowed))}",
    )


def _dns_check(ctx: Context) -> Finding:
    in_use = resolvers_in_use(ctx.facts)
    return _only_allowed(ctx, "dns-resolvers", in_use, tuple(ctx.config.residency.dns_resolvers))


def parse_ntp_servers(text: str) -> list[str]:
    """The servers and pools of chrony's ``server``/``pool`` lines (pure)."""
    return sorted({line.split()[1] for line in text.splitlines() if len(line.split()) > 1})


def _ntp_check(ctx: Context) -> Finding:
    configured = parse_ntp_servers(ctx.facts.get("ntp_config"))
    return _only_allowed(ctx, "ntp-servers", configured, tuple(ctx.config.residency.ntp_servers))


def _mirror_registry(endpoint: str) -> str:
    """The registry an endpoint of registries.yaml points at (``https://host:port/v2`` → host)."""
    return re.sub(r"^https?://", "", endpoint).split("/")[0]


def _registry_checks(ctx: Context) -> list[Finding]:
    name, allowed = ctx.host.name, ctx.config.residency.allowed_registries
    text = ctx.facts.get("k3s_registries")
    if not text:
        why = "K3s is not installed on this host (no registries.yaml)"
        return [skipped(LAYER, name, "registry-mirrors", why), skipped(LAYER, name, "images", why)]
    mirrors = (yaml.safe_load(text) or {}).get("mirrors", {})
    endpoints = sorted(
        {_mirror_registry(e) for m in mirrors.values() for e in m.get("endpoint", [])}
    )
    stray = [e for e in endpoints if not registry_allowed(e, allowed)]
    results = [
        verdict(
            LAYER,
            name,
            "registry-mirrors",
            not stray,
            ", ".join(stray or endpoints) or "none",
            f"only {', '.join(sorted(allowed))}",
        )
    ]
    images_json = ctx.facts.get("images")
    if not images_json:
        results.append(skipped(LAYER, name, "images", "K3s listed no images on this host"))
        return results
    tags = [
        t
        for image in json.loads(images_json).get("images", [])
        for t in image.get("repoTags") or []
    ]
    mirrored = [_mirror_key(m) for m in mirrors]
    foreign = sorted(
        {t for t in tags if not registry_allowed(t, allowed) and not registry_allowed(t, mirrored)}
    )
    results.append(
        verdict(
            LAYER,
            name,
            "images",
            not foreign,
            ", ".join(foreign) or f"{len(tags)} image(s), all from allowed registries",
            "images only from allowed registries or their mirrors",
        )
    )
    return results


def _mirror_key(registry: str) -> str:
    try:
        return normalize_registry(registry)
    except ValueError:
        return registry  # "*" (every registry) or a name that is no host: compared as written


_CHAIN_POLICY = re.compile(r"chain (\w+) \{[^}]*?type filter hook (\w+)[^}]*?policy (\w+)", re.S)


def parse_firewall(table: str) -> dict[str, str]:
    """``{hook: policy}`` of the base chains in ``nft list table inet sovereign`` (pure)."""
    return {hook: policy for _chain, hook, policy in _CHAIN_POLICY.findall(table)}


def _firewall_checks(ctx: Context) -> list[Finding]:
    name = ctx.host.name
    table = ctx.facts.get("firewall")
    policies = parse_firewall(table)
    observed = (
        ", ".join(f"{hook} policy {policy}" for hook, policy in sorted(policies.items()))
        if table
        else "no table inet sovereign"
    )
    results = [
        verdict(
            LAYER,
            name,
            "firewall",
            policies.get("input") == "drop",
            observed or "table inet sovereign without base chains",
            "input policy drop",
            policies=policies,
        )
    ]
    if ctx.config.residency.egress_allowlist is None:
        return results
    results.append(
        verdict(
            LAYER,
            name,
            "egress-allowlist",
            policies.get("output") == "drop",
            f"output policy {policies.get('output', 'absent')}",
            "output policy drop (outbound only to the allowlist)",
        )
    )
    if ctx.config.verification.egress_canary:
        canary = ctx.facts.get("egress_canary")
        results.append(
            verdict(
                LAYER, name, "egress-canary", canary == "blocked", canary or "not tried", "blocked"
            )
        )
    return results
