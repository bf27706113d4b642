"""Every rule of the config boundary, closed as a whole: each rule's grammar turned into invalid
values, written into the shipped stacks at every place the rule governs.

A case passes when loading the mutated stack ends in a :class:`StackConfigError` that names the
field (no other exception, so ``sovereign validate`` exits 2 without a traceback) and no message
quotes a value of the stack longer than 24 characters.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import random
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from components.config import StackConfig, StackConfigError
from components.config.errors import MAX_ECHO, Problem
from components.config.loader import PROJECT, load_stack_data
from components.config.models import TOOLKIT_LABEL_PREFIXES, LabelValue
from components.plan.cluster import node_labels
from components.plan.host_steps import render_host_steps

ROOT = Path(__file__).resolve().parents[2]
STACK_NAMES = ("lab", "staging", "prod-fra")
NS = PROJECT + ":"

Path_ = tuple[str | int, ...]


@cache
def _shipped(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "stacks" / f"Pulumi.{name}.yaml").read_text())
    return data


def shipped(name: str) -> dict[str, Any]:
    return copy.deepcopy(_shipped(name))


def field_path(path: Path_) -> str:
    """The problem path of a place in the config section: ("hosts", 0, "ssh") -> hosts[0].ssh."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def get_at(data: dict[str, Any], path: Path_) -> Any:
    node: Any = data["config"][NS + str(path[0])]
    for part in path[1:]:
        node = node[part]
    return node


def has(data: dict[str, Any], path: Path_) -> bool:
    try:
        get_at(data, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


def set_at(data: dict[str, Any], path: Path_, value: Any) -> None:
    if len(path) == 1:
        data["config"][NS + str(path[0])] = value
        return
    parent = get_at(data, path[:-1])
    parent[path[-1]] = value


def load(data: dict[str, Any]) -> StackConfig:
    return load_stack_data(data, "Pulumi.case.yaml", ROOT)


def long_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        if len(value) > MAX_ECHO:
            yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from long_strings(key)
            yield from long_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from long_strings(item)


def refused(data: dict[str, Any]) -> dict[str, str]:
    """The problems of a stack that must be refused, by path; checks the echo rule on the way."""
    with pytest.raises(StackConfigError) as info:
        load(data)
    problems: list[Problem] = info.value.problems
    for text in set(long_strings(data)):
        for problem in problems:
            assert text not in problem.message, f"{problem.path} echoes a long value"
    by_path: dict[str, str] = {}
    for problem in problems:
        by_path[problem.path] = "\n".join(
            filter(None, (by_path.get(problem.path), problem.message))
        )
    return by_path


def assert_refused_at(data: dict[str, Any], expected: str, fragment: str = "") -> None:
    problems = refused(data)
    assert expected in problems, f"expected a problem at {expected}, got {problems}"
    assert fragment in problems[expected]


# --- the shipped stacks are the valid base every case mutates -------------------------------------


@pytest.mark.parametrize("name", STACK_NAMES)
def test_the_base_stacks_are_valid(name: str) -> None:
    assert load(shipped(name)).environment == name


# --- strings that end up in files on a host ---------------------------------------------------------

# Each of these lands in resolv.conf, chrony.conf, the nft rules, the K3s config, fstab, an apt pin
# or a script's variables.
HOST_FILE_FIELDS: tuple[Path_, ...] = (
    ("residency", "dnsResolvers", 0),
    ("residency", "ntpServers", 0),
    ("residency", "egressAllowlist", 0),
    ("residency", "allowedRegistries", 0),
    ("k3s", "tlsSans", 0),
    ("k3s", "version"),
    ("hosts", 0, "address"),
    ("hosts", 0, "name"),
    ("hosts", 0, "provider"),
    ("hosts", 0, "datacenter"),
    ("hosts", 0, "ssh", "user"),
    ("hosts", 0, "nvme", 0, "id"),
    ("hosts", 1, "egressIps", 0),
    ("nvidia", "driverVersion"),
    ("nvidia", "cudaVersion"),
    ("nvidia", "containerToolkitVersion"),
    ("cache", "mountPoint"),
    ("environment",),
)
INJECTIONS: dict[str, Callable[[str], str]] = {
    "newline-directive": lambda v: v + "\nnameserver 8.8.8.8",
    "carriage-return": lambda v: v + "\r",
    "trailing-space": lambda v: v + " ",
    "leading-space": lambda v: " " + v,
    "inner-space": lambda v: v[:1] + " " + v[1:],
    "tab": lambda v: v + "\t",
    "nul": lambda v: v + "\x00",
    "escape": lambda v: "\x1b[2J" + v,
    "line-separator": lambda v: v + "\u2028",
    "zero-width-space": lambda v: v[:1] + "\u200b" + v[1:],
    "bidi-override": lambda v: "\u202e" + v,
    "zone-id": lambda v: v + "%eth0",
    "command-substitution": lambda v: v + "$(reboot)",
    "backtick": lambda v: v + "`id`",
    "semicolon": lambda v: v + ";reboot",
    "single-quote": lambda v: v + "'",
    "double-quote": lambda v: v + '"',
    "backslash": lambda v: v + "\\",
    "hash": lambda v: v + "#x",
    "brace": lambda v: v + "}",
    "comma": lambda v: v + ",1.1.1.1",
}


def _rotating(path: Path_, turn: int) -> str:
    """One of the shipped stacks that has ``path``, a different one on each turn: every rule
    meets every stack without multiplying the cases by three."""
    names = [n for n in STACK_NAMES if has(_shipped(n), path)]
    return names[turn % len(names)]


def _host_file_cases() -> Iterator[Any]:
    for path in HOST_FILE_FIELDS:
        for turn, how in enumerate(INJECTIONS):
            name = _rotating(path, turn)
            yield pytest.param(name, path, how, id=f"{name}-{field_path(path)}-{how}")


@pytest.mark.parametrize(("name", "path", "how"), list(_host_file_cases()))
def test_host_file_strings_have_a_strict_grammar(name: str, path: Path_, how: str) -> None:
    data = shipped(name)
    set_at(data, path, INJECTIONS[how](str(get_at(data, path))))
    assert_refused_at(data, field_path(path))


@pytest.mark.parametrize("how", INJECTIONS)
@pytest.mark.parametrize(
    ("field", "default"), [("clusterCidr", "10.42.0.0/16"), ("serviceCidr", "10.43.0.0/16")]
)
def test_cluster_ranges_have_a_strict_grammar(field: str, default: str, how: str) -> None:
    data = shipped("staging")
    get_at(data, ("k3s",))[field] = INJECTIONS[how](default)
    assert_refused_at(data, f"k3s.{field}")


# --- addresses ------------------------------------------------------------------------------------

NOT_CANONICAL_IPV4 = (
    "010.0.0.1",
    "10.0.0.01",
    "1.2.3.256",
    "256.1.1.1",
    "1.2.3",
    "1.2.3.4.5",
    "127.1",
    "0x7f.0.0.1",
    "0177.0.0.1",
    "2130706433",
    "\uff11.2.3.4",  # fullwidth digit
    "\u0661.2.3.4",  # Arabic-Indic digit
    "1.2.3.4/32",
    "2001:db8::53%eth0",
    "fe80::1%25eth0",
    "[2001:db8::1]",
    "2001:db8:::1",
    "::ffff:999.1.1.1",
    "",
)
ADDRESS_FIELDS: tuple[Path_, ...] = (
    ("residency", "dnsResolvers", 0),
    ("residency", "ntpServers", 0),
    ("k3s", "tlsSans", 0),
    ("hosts", 0, "address"),
    ("hosts", 1, "egressIps", 0),
    ("inference", "gateway", "host"),
)


def _address_cases() -> Iterator[Any]:
    for path in ADDRESS_FIELDS:
        for turn, value in enumerate(NOT_CANONICAL_IPV4):
            name = _rotating(path, turn)
            yield pytest.param(name, path, value, id=f"{name}-{field_path(path)}-{value!r}")


@pytest.mark.parametrize(("name", "path", "value"), list(_address_cases()))
def test_addresses_are_canonical(name: str, path: Path_, value: str) -> None:
    data = shipped(name)
    set_at(data, path, value)
    assert_refused_at(data, field_path(path))


BAD_CIDRS = (
    "010.0.0.0/8",
    "10.0.0.0/08",
    "10.0.0.1/8",
    "10.0.0.0/33",
    "10.0.0.0/",
    "10.0.0.0/8/8",
    "::/129",
    "2001:db8::/32%eth0",
    "10.0.0.0 /8",
    "\uff11\uff10.0.0.0/8",
)


@pytest.mark.parametrize("value", BAD_CIDRS)
@pytest.mark.parametrize(
    "path", [("residency", "egressAllowlist", 0), ("k3s", "clusterCidr"), ("k3s", "serviceCidr")]
)
def test_cidrs_are_canonical(path: Path_, value: str) -> None:
    data = shipped("prod-fra")
    set_at(data, path, value)
    assert_refused_at(data, field_path(path))


@pytest.mark.parametrize(
    "value",
    ["8.8.0.0/16", "0.0.0.0/0", "192.0.2.0/24", "127.0.0.0/8", "169.254.0.0/16", "2001:db8::/64",
     "::/0", "172.32.0.0/16", "100.128.0.0/10", "fe80::/64"],
)  # fmt: skip
@pytest.mark.parametrize("field", ["clusterCidr", "serviceCidr"])
def test_cluster_ranges_are_private(field: str, value: str) -> None:
    data = shipped("staging")
    get_at(data, ("k3s",))[field] = value
    assert_refused_at(data, f"k3s.{field}", "private range")


@pytest.mark.parametrize("name", STACK_NAMES)
@pytest.mark.parametrize("field", ["clusterCidr", "serviceCidr"])
def test_cluster_ranges_hold_no_host_address(name: str, field: str) -> None:
    data = shipped(name)
    network = ipaddress.ip_network(get_at(data, ("k3s",)).get(field) or "10.42.0.0/16")
    if field == "serviceCidr" and "serviceCidr" not in get_at(data, ("k3s",)):
        network = ipaddress.ip_network("10.43.0.0/16")
    get_at(data, ("hosts", 0))["address"] = str(network.network_address + 7)
    assert_refused_at(data, f"k3s.{field}", "hosts[0]")


def test_cluster_ranges_may_be_ula_and_land_in_ipv6_sets() -> None:
    data = shipped("staging")
    get_at(data, ("k3s",)).update(clusterCidr="fd00:42::/56", serviceCidr="fd00:43::/112")
    config = load(data)
    (firewall,) = render_host_steps(config, config.hosts[0], only=("60-firewall",))
    assert "CLUSTER_NETWORKS_V6=(fd00:42::/56 fd00:43::/112)" in firewall.script
    assert "CLUSTER_NETWORKS_V4=()" in firewall.script


def test_cluster_ranges_share_one_family() -> None:
    data = shipped("staging")
    get_at(data, ("k3s",)).update(clusterCidr="fd00:42::/56")
    assert_refused_at(data, "k3s.serviceCidr", "same IP version")


PORT_VALUES = (0, -1, 65536, 99999, "22", True, 22.5, "\uff12\uff12", None, [22])


@pytest.mark.parametrize("value", PORT_VALUES, ids=repr)
@pytest.mark.parametrize(
    "path", [("hosts", 0, "ssh", "port"), ("inference", "gateway", "port")], ids=field_path
)
def test_ports_are_1_to_65535_integers(path: Path_, value: Any) -> None:
    data = shipped("prod-fra")
    set_at(data, path, value)
    assert_refused_at(data, field_path(path))


@pytest.mark.parametrize(
    "value",
    ["203.0.113.9:0", "203.0.113.9:65536", "203.0.113.9:022", "2001:db8::1:443",
     "[2001:db8::1]:0", "canary.example.eu:443", "203.0.113.9", "203.0.113.9:\uff14\uff14\uff13",
     "[2001:db8::1%eth0]:443", "203.0.113.9:443\n"],
)  # fmt: skip
def test_egress_canary_is_address_and_port(value: str) -> None:
    data = shipped("prod-fra")
    data["config"][NS + "verification"] = {"egressCanary": value}
    assert_refused_at(data, "verification.egressCanary")


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_ports_in_image_references_and_endpoints(port: str) -> None:
    data = shipped("staging")
    inference = get_at(data, ("inference",))
    inference["image"] = inference["image"].replace(".eu/", f".eu:{port}/", 1)
    endpoint = f"https://fsn1.your-objectstorage.com:{port}"
    get_at(data, ("residency",))["allowedObjectStoreEndpoints"][0] = endpoint
    problems = refused(data)
    assert "inference.image" in problems
    assert "residency.allowedObjectStoreEndpoints[0]" in problems


@pytest.mark.parametrize(
    ("field", "values", "duplicate"),
    [
        ("dnsResolvers", ["2001:db8::53", "2001:0db8:0:0::0053"], 1),
        ("dnsResolvers", ["192.0.2.53", "192.0.2.54", "192.0.2.53"], 2),
        ("ntpServers", ["ntp.example.eu", "NTP.Example.EU"], 1),
        ("ntpServers", ["2001:db8::123", "2001:DB8::123"], 1),
        ("egressAllowlist", ["2001:db8::/48", "2001:0DB8:0::/48"], 1),
        ("allowedRegistries", ["registry.fsn1.example.eu", "Registry.fsn1.example.eu"], 1),
    ],
)
def test_duplicates_are_found_in_normalized_form(
    field: str, values: list[str], duplicate: int
) -> None:
    data = shipped("staging")
    get_at(data, ("residency",))[field] = values
    assert_refused_at(data, f"residency.{field}[{duplicate}]", "twice")


def test_ipv6_host_addresses_are_compared_normalized() -> None:
    data = shipped("staging")
    hosts = get_at(data, ("hosts",))
    hosts[0]["address"] = "2001:db8::21"
    hosts[1]["address"] = "2001:0DB8:0:0:0:0:0:21"
    hosts[1]["ssh"]["port"] = hosts[0]["ssh"].get("port", 22)
    assert_refused_at(data, "hosts[1].address", "already used")


@pytest.mark.parametrize(
    "allowlist",
    [["0.0.0.0/0"], ["::/0"], ["192.0.2.0/24", "0.0.0.0/0"], ["0.0.0.0/1", "128.0.0.0/1"],
     ["::/1", "8000::/1"]],
)  # fmt: skip
def test_egress_allowlist_refuses_everything(allowlist: list[str]) -> None:
    data = shipped("prod-fra")
    get_at(data, ("residency",))["egressAllowlist"] = allowlist
    problems = refused(data)
    assert any(p.startswith("residency.egressAllowlist") for p in problems), problems


def test_ipv6_allowlist_entries_go_to_the_ipv6_set() -> None:
    data = shipped("prod-fra")
    residency = get_at(data, ("residency",))
    residency["egressAllowlist"] = ["192.0.2.0/24", "2001:db8:42::/48"]
    residency["dnsResolvers"] = ["192.0.2.53", "2001:db8::53"]
    residency["ntpServers"] = ["ptbtime1.ptb.de", "192.0.2.123", "2001:db8::123"]
    config = load(data)
    (firewall,) = render_host_steps(config, config.hosts[0], only=("60-firewall",))
    # the resolver inside the allowed range is merged into it: nft refuses overlapping elements
    assert "EGRESS_V4=(192.0.2.0/24)" in firewall.script
    assert "EGRESS_V6=(2001:db8::53/128 2001:db8:42::/48)" in firewall.script
    assert "ip6 daddr @egress_allowed6 accept" in firewall.script
    assert "NTP_V4=(192.0.2.123)" in firewall.script
    assert "NTP_V6=(2001:db8::123)" in firewall.script
    assert "NTP_NAMES=(ptbtime1.ptb.de)" in firewall.script


# --- location --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("datacenter", "ash-dc1"), ("datacenter", "hil-dc1"), ("datacenter", "sin-dc1"),
     ("datacenter", "us-east-1a"), ("region", "us-east-1"), ("region", "ash"),
     ("region", "eu-west-2"), ("region", "europe-west6"), ("region", "uksouth"),
     ("datacenter", "bhs5"), ("datacenter", "uk-lon1")],
)  # fmt: skip
def test_locations_outside_the_eu_are_refused_whatever_country_says(field: str, value: str) -> None:
    data = shipped(STACK_NAMES[len(value) % len(STACK_NAMES)])
    host = get_at(data, ("hosts", 0))
    host[field] = value.lower() if field == "region" else value
    assert host["country"] == "DE"
    assert_refused_at(data, f"hosts[0].{field}", "outside the residency policy")


def test_country_must_agree_with_a_known_provider_location() -> None:
    data = shipped("staging")  # Hetzner, fsn1-dc14: Germany
    for host in get_at(data, ("hosts",)):
        host["country"] = "FR"
    assert_refused_at(data, "hosts[0].country", "places the datacenter in DE")


RESERVED_LABEL_KEYS = (
    "sovereign-inference/country",
    "sovereign-inference/gpu-model",
    "sovereign-inference/anything",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "kubernetes.io/hostname",
    "node-role.kubernetes.io/worker",
    "k8s.io/x",
)


@pytest.mark.parametrize("key", RESERVED_LABEL_KEYS)
@pytest.mark.parametrize("where", [("hosts", 0, "labels"), ("k3s", "labels")], ids=field_path)
def test_labels_cannot_override_the_toolkits_keys(where: Path_, key: str) -> None:
    data = shipped("staging")
    parent = get_at(data, where[:-1])
    parent[where[-1]] = {key: "x"}
    problems = refused(data)
    assert any(p.startswith(field_path(where)) for p in problems), problems


def test_every_label_the_toolkit_sets_is_under_a_reserved_prefix() -> None:
    config = load(shipped("prod-fra"))
    host = config.hosts[0].model_copy(update={"labels": {}})
    bare = config.model_copy(update={"k3s": config.k3s.model_copy(update={"labels": {}})})
    for key in node_labels(bare, host):
        assert key.split("/")[0] in TOOLKIT_LABEL_PREFIXES, key


@pytest.mark.parametrize("name", STACK_NAMES)
def test_every_node_label_value_obeys_the_label_grammar(name: str) -> None:
    """Provider, datacenter, zone and region as the plan turns them into node labels."""
    data = shipped(name)
    for i, host in enumerate(get_at(data, ("hosts",))):
        host.update(provider=f"Provider_{i}.X", datacenter=f"Site.{i}-Rack_{i}")
    config = load(data)
    values = TypeAdapter(LabelValue)
    for host in config.hosts:
        for value in node_labels(config, host).values():
            assert values.validate_python(value) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [("provider", "Hetzner Online"), ("provider", "-hetzner"), ("provider", "hetzner-"),
     ("provider", "x" * 64), ("provider", "hetzner/robot"), ("provider", "h\u00e9tzner"),
     ("datacenter", "fsn1-dc14-"), ("datacenter", "_fsn1"), ("datacenter", "d" * 64),
     ("datacenter", "fsn1 dc14"), ("datacenter", ""), ("datacenter", "fsn1.-dc14"), ("region", "FSN1"), ("region", "fsn_1"),
     ("region", "r" * 64)],
)  # fmt: skip
def test_values_that_become_labels_obey_the_label_grammar(field: str, value: str) -> None:
    data = shipped("staging")
    get_at(data, ("hosts", 1))[field] = value
    assert_refused_at(data, f"hosts[1].{field}")


@pytest.mark.parametrize(
    ("key", "value"),
    [("a b", "x"), ("x", "a b"), ("x", "v" * 64), ("x", "-v"), ("p" * 254 + "/x", "v"),
     ("UPPER.example.com/x", "v"), ("x", "\u00e9")],
)  # fmt: skip
def test_label_keys_and_values_obey_the_label_grammar(key: str, value: str) -> None:
    data = shipped("prod-fra")
    get_at(data, ("hosts", 2))["labels"] = {key: value}
    problems = refused(data)
    assert any(p.startswith("hosts[2].labels") for p in problems), problems


# --- versions and digits ---------------------------------------------------------------------------

OTHER_DIGITS = {"fullwidth": 0xFF10, "arabic-indic": 0x0660, "devanagari": 0x0966, "bold": 0x1D7CE}
VERSION_FIELDS: tuple[Path_, ...] = (
    ("nvidia", "driverVersion"),
    ("nvidia", "cudaVersion"),
    ("nvidia", "containerToolkitVersion"),
    ("k3s", "version"),
)


def _with_other_digit(value: str, zero: int) -> str:
    i = next(i for i, c in enumerate(value) if c.isdigit() and c.isascii())
    return value[:i] + chr(zero + int(value[i])) + value[i + 1 :]


@pytest.mark.parametrize("script", OTHER_DIGITS)
@pytest.mark.parametrize("path", VERSION_FIELDS, ids=field_path)
def test_versions_take_ascii_digits_only(path: Path_, script: str) -> None:
    name = _rotating(path, list(OTHER_DIGITS).index(script))
    data = shipped(name)
    set_at(data, path, _with_other_digit(str(get_at(data, path)), OTHER_DIGITS[script]))
    assert_refused_at(data, field_path(path))


@pytest.mark.parametrize("script", OTHER_DIGITS)
@pytest.mark.parametrize(
    "path",
    [("inference", "charts"), ("hosts", 0, "gpu", "count"), ("ssh", "connectRetries")],
    ids=field_path,
)
def test_numbers_take_ascii_digits_only(path: Path_, script: str) -> None:
    data = shipped("prod-fra")
    digit = chr(OTHER_DIGITS[script] + 4)
    if path == ("inference", "charts"):
        get_at(data, ("inference",))["charts"] = {"keda": f"2.1{digit}.1"}
        expected = "inference.charts.keda"
    else:
        set_at(data, path, digit)
        expected = field_path(path)
    assert_refused_at(data, expected)


# --- host-key fingerprints ----------------------------------------------------------------------------


def _fingerprints() -> Iterator[Any]:
    for name in STACK_NAMES:
        for i, host in enumerate(get_at(_shipped(name), ("hosts",))):
            if "hostKey" in host.get("ssh", {}):
                yield pytest.param(name, i, id=f"{name}-hosts[{i}]")


def _non_canonical(fingerprint: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(fingerprint[-1])
    return fingerprint[:-1] + alphabet[(last & ~3) | 1]  # stray low bits


@pytest.mark.parametrize(
    "mutate",
    [_non_canonical, lambda f: f[:-1], lambda f: f + "A", lambda f: f + "=",
     lambda f: f.replace("SHA256:", "sha256:"), lambda f: f.replace("SHA256:", "MD5:"),
     lambda f: f[:10] + "-" + f[11:], lambda f: f[:10] + "_" + f[11:],
     lambda f: f.removeprefix("SHA256:")],
    ids=["stray-bits", "short", "long", "padded", "lowercase", "md5", "dash", "underscore",
         "no-prefix"],
)  # fmt: skip
@pytest.mark.parametrize(("name", "index"), list(_fingerprints()))
def test_host_key_fingerprints_are_32_bytes_in_canonical_base64(
    name: str, index: int, mutate: Callable[[str], str]
) -> None:
    data = shipped(name)
    ssh = get_at(data, ("hosts", index, "ssh"))
    ssh["hostKey"] = mutate(ssh["hostKey"])
    assert_refused_at(data, f"hosts[{index}].ssh.hostKey")


# --- secrets ---------------------------------------------------------------------------------------

SECURE_VALUES: tuple[Any, ...] = ("", None, 0, 1, True, [], ["v1:abc"], {}, {"a": "b"})


@pytest.mark.parametrize("value", SECURE_VALUES, ids=repr)
@pytest.mark.parametrize(
    ("name", "path"),
    [("staging", ("k3sToken",)), ("prod-fra", ("k3sToken",)),
     ("prod-fra", ("inference", "gateway", "tenants", 1, "apiKey"))],
    ids=lambda v: field_path(v) if isinstance(v, tuple) else v,
)  # fmt: skip
def test_secure_values_are_non_empty_strings(name: str, path: Path_, value: Any) -> None:
    data = shipped(name)
    set_at(data, path, {"secure": value})
    assert_refused_at(data, field_path(path))


PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
KEY_MATERIAL = {
    "pem-openssh": PEM,
    "pem-rsa": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    "pem-pkcs8-one-line": "-----BEGIN PRIVATE KEY----- MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    "pem-encrypted": "-----BEGIN ENCRYPTED PRIVATE KEY-----",
    "openssh-blob": "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "public-key-line": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "rsa-blob": "AAAAB3NzaC1yc2EAAAADAQABAAABAQC7",
    "putty": "PuTTY-User-Key-File-3: ssh-ed25519",
}


def _string_leaves(value: Any, path: Path_) -> Iterator[Path_]:
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _string_leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _string_leaves(item, (*path, i))


def _leaves(name: str) -> list[Path_]:
    config = _shipped(name)["config"]
    return [
        leaf
        for key, value in config.items()
        for leaf in _string_leaves(value, (key.removeprefix(NS),))
        if key.startswith(NS)
    ]


def _leaf_cases(kinds: dict[str, str]) -> Iterator[Any]:
    """Every string leaf of every shipped stack, each with one of ``kinds`` (taken in turn)."""
    turn = 0
    for name in STACK_NAMES:
        for leaf in _leaves(name):
            kind = list(kinds)[turn % len(kinds)]
            turn += 1
            yield pytest.param(name, leaf, kind, id=f"{name}-{field_path(leaf)}-{kind}")


@pytest.mark.parametrize(("name", "leaf", "kind"), list(_leaf_cases(KEY_MATERIAL)))
def test_key_material_is_refused_in_every_string_field(name: str, leaf: Path_, kind: str) -> None:
    data = shipped(name)
    set_at(data, leaf, KEY_MATERIAL[kind])
    assert_refused_at(data, field_path(leaf), "key material")


CONTROL = {"newline": "\n", "escape": "\x1b", "del": "\x7f", "c1": "\x85", "bom": "\ufeff"}


@pytest.mark.parametrize(("name", "leaf", "kind"), list(_leaf_cases(CONTROL)))
def test_control_characters_are_refused_in_every_string_field(
    name: str, leaf: Path_, kind: str
) -> None:
    data = shipped(name)
    set_at(data, leaf, str(get_at(data, leaf)) + CONTROL[kind])
    assert_refused_at(data, field_path(leaf), "character U+")


def test_key_material_is_refused_outside_the_project_namespace_too() -> None:
    data = shipped("staging")
    data["config"]["aws:accessKey"] = PEM
    data["secretsprovider"] = KEY_MATERIAL["openssh-blob"]
    problems = refused(data)
    assert "key material" in problems["aws:accessKey"]
    assert "key material" in problems["secretsprovider"]


@pytest.mark.parametrize("name", STACK_NAMES)
def test_no_message_echoes_a_long_value(name: str) -> None:
    """Every string of the stack made 25+ characters long and invalid at once: not one message
    quotes any of them."""
    data = shipped(name)
    for leaf in _leaves(name):
        value = get_at(data, leaf)
        set_at(data, leaf, "Q" * 20 + "!" + str(value) + "Z" * 10)
    problems = refused(data)
    assert len(problems) > 10


# --- paths ----------------------------------------------------------------------------------------

REFUSED_MOUNT_POINTS = (
    "/", "//", "/.", "/usr", "//usr", "/usr/", "/usr/local/weights", "/usr/lib/x", "/etc",
    "/etc/.", "/etc/sovereign", "/var", "/var/", "/var/lib", "/var/lib/", "//var//lib//",
    "/var/lib/.", "/var/lib/rancher", "/var/lib/rancher/k3s/storage", "/var/lib/kubelet",
    "/var/lib/kubelet/pods", "/var/lib/containerd", "/var/log", "/home", "/home/ml/weights",
    "/root", "/root/weights", "/proc", "/proc/1", "/sys", "/sys/fs", "/dev", "/dev/shm", "/run",
    "/run/weights", "/boot", "/boot/efi", "/opt", "/opt/sovereign/probe", "/bin", "/sbin",
    "/lib", "/lib64", "/tmp", "/tmp/weights", "/var/tmp", "/var/lib/sovereign/../kubelet",
    "/var/lib/../lib/rancher", "relative/weights", "weights", "", "/with space",
    "/var/lib/w\u00e9ights", "/var/lib/weights\n/etc", "~/weights", "/var/lib/$(id)",
)  # fmt: skip


@pytest.mark.parametrize("mount_point", REFUSED_MOUNT_POINTS)
def test_system_locations_are_refused_as_cache_mount_points(mount_point: str) -> None:
    data = shipped("staging")
    get_at(data, ("cache",))["mountPoint"] = mount_point
    assert_refused_at(data, "cache.mountPoint")


@pytest.mark.parametrize(
    ("written", "normalized"),
    [("/var/lib/sovereign/weights/", "/var/lib/sovereign/weights"),
     ("//srv//weights", "/srv/weights"), ("/srv/./weights/.", "/srv/weights"),
     ("/mnt/weights", "/mnt/weights"), ("/var/lib/sovereign", "/var/lib/sovereign")],
)  # fmt: skip
def test_mount_points_are_normalized(written: str, normalized: str) -> None:
    data = shipped("staging")
    get_at(data, ("cache",))["mountPoint"] = written
    assert load(data).cache.mount_point == normalized


@pytest.mark.parametrize(
    "bundle", ["relative/dir", "/opt/k3s bundle", "/opt/k3s/../../etc", "/opt/$(id)", ""]
)
def test_airgap_bundle_is_a_plain_absolute_path(bundle: str) -> None:
    data = shipped("staging")
    get_at(data, ("k3s",))["airgapBundle"] = bundle
    assert_refused_at(data, "k3s.airgapBundle")


# --- values YAML can hold but a stack cannot -----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [(("hosts", 0, "nvme", 0, "wipe"), "yes"), (("hosts", 0, "nvme", 0, "wipe"), 1),
     (("hosts", 0, "gpu", "count"), True), (("inference", "metering", "pricePerGpuHour"), "2.9"),
     (("inference", "metering", "pricePerGpuHour"), float("nan")),
     (("inference", "metering", "pricePerGpuHour"), float("inf")),
     (("inference", "models", 0, "source", "revision"), b"rev"),
     (("inference", "models", 0, "source", "revision"), __import__("datetime").date(2025, 6, 1)),
     (("hosts", 0, "labels"), {True: "x"}), (("hosts", 0, "labels"), {1: "x"})],
    ids=repr,
)  # fmt: skip
def test_values_are_taken_as_written(path: Path_, value: Any) -> None:
    data = shipped("prod-fra")
    set_at(data, path, value)
    assert_refused_at(data, field_path(path))


# --- whatever the shape, a refusal and never a crash ------------------------------------------------

SWAPS: tuple[Any, ...] = (
    None, 0, -1, 2**70, 1.5, float("inf"), True, "", "x" * 300, [], [None], {}, {"": None},
    {1: 2}, {"secure": None}, {"secure": "v1:x"}, "010.0.0.1", "::/0", "\u202e", b"x",
)  # fmt: skip


def _places(value: Any, path: Path_) -> Iterator[Path_]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _places(item, (*path, i))


@pytest.mark.parametrize("name", STACK_NAMES)
def test_any_value_swapped_for_any_shape_is_refused_or_loaded_never_crashes(name: str) -> None:
    rng = random.Random(f"swap-{name}")
    places = [
        p
        for key, value in _shipped(name)["config"].items()
        for p in _places(value, (key.removeprefix(NS),))
    ]
    for _ in range(300):
        data = shipped(name)
        place = rng.choice(places)
        set_at(data, place, copy.deepcopy(rng.choice(SWAPS)))
        # anything but a StackConfigError fails the test: validate would print a traceback
        with contextlib.suppress(StackConfigError):
            load(data)
