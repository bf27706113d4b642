"""The firewall step's egress preflight: before an allowlist is loaded, every destination the host
needs (registries, object stores, apt mirrors) must resolve inside it, or the step refuses and
names each one.

The step's own bash functions run here; only name resolution (``getent``) is played by a stand-in
with fixed answers, since the names cannot be resolved on this machine.
"""

from __future__ import annotations

import ipaddress
import random
import re
import shlex
import subprocess
from pathlib import Path

from components.config import StackConfig, load_stack_file
from components.plan.host_steps import StepPlan, egress_destinations, render_host_steps
from components.plan.step_protocol import EXIT_REFUSED

ROOT = Path(__file__).resolve().parents[2]
NFT_REACHED = 9  # the exit status of the nft stand-in


def stack(name: str) -> StackConfig:
    return load_stack_file(ROOT / "stacks" / f"Pulumi.{name}.yaml")


def firewall_definitions(config: StackConfig) -> str:
    (step,) = render_host_steps(config, config.hosts[0], only=("60-firewall",))
    return definitions_of(step)


def definitions_of(step: StepPlan) -> str:
    """The step's variables and functions (all before the mode dispatch), with what it reads
    from its environment at run time set as the executor sets it."""
    given = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in step.env.items())
    return given + step.script.split('case "$SOVEREIGN_MODE" in')[0]


def run_bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)


def getent_stand_in(answers: dict[str, list[str]]) -> str:
    """A ``getent`` shell function answering ``ahosts NAME`` as glibc prints it (three lines per
    address); names not listed do not resolve."""
    lines = []
    for name, addresses in answers.items():
        words = " ".join(f'"{a} STREAM {name}" "{a} DGRAM" "{a} RAW"' for a in addresses)
        lines.append(f"    {name}) printf '%s\\n' {words} ;;")
    cases = "\n".join(lines)
    return f'getent() {{\n  case "$2" in\n{cases}\n    *) return 2 ;;\n  esac\n}}\n'


def test_in_range_agrees_with_python_for_both_families() -> None:
    rng = random.Random(14)
    cases: list[tuple[str, str]] = []
    for _ in range(150):
        version = rng.choice((4, 6))
        bits = 32 if version == 4 else 128
        base = rng.getrandbits(bits)
        length = rng.choice((0, 1, 7, 8, 16, 23, 24, 31, bits, rng.randrange(bits + 1)))
        network = ipaddress.ip_network((base, length), strict=False)
        # near the range's edges as well as anywhere
        inside = int(network.network_address) + rng.randrange(network.num_addresses)
        candidates = [inside, int(network.broadcast_address), rng.getrandbits(bits)]
        if int(network.broadcast_address) + 1 < 2**bits:
            candidates.append(int(network.broadcast_address) + 1)
        for value in candidates:
            address = ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value)
            cases.append((str(address), str(network)))
    # the other family never matches; a bare address is a /32 or /128; "::" forms
    cases += [
        ("192.0.2.1", "::/0"),
        ("2001:db8::1", "0.0.0.0/0"),
        ("192.0.2.53", "192.0.2.53"),
        ("192.0.2.54", "192.0.2.53"),
        ("::1", "::1"),
        ("::", "::/128"),
        ("2001:db8::", "2001:db8::/32"),
        ("fe80::1:2", "fe80::/10"),
    ]
    script = firewall_definitions(stack("prod-fra")) + "".join(
        f"if in_range {a} {n}; then echo 1; else echo 0; fi\n" for a, n in cases
    )
    result = run_bash(script)
    assert result.returncode == 0, result.stderr
    got = result.stdout.split()
    for (address_text, range_text), answer in zip(cases, got, strict=True):
        ip = ipaddress.ip_address(address_text)
        net = ipaddress.ip_network(range_text)
        expected = ip.version == net.version and ip in net
        assert answer == str(int(expected)), f"{address_text} in {range_text}"


def test_apt_hosts_are_read_from_one_line_and_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example.eu/debian bookworm main\n"
        "deb [signed-by=/usr/share/keyrings/x.gpg arch=amd64] http://deb.debian.org/debian bookworm main\n"
        "deb-src https://user:secret@mirror.example.eu:8080/debian bookworm main\n"
        "deb http://deb.debian.org/debian bookworm-updates main\n"
    )
    (tmp_path / "debian.sources").write_text(
        "Types: deb\n"
        "URIs: http://security.debian.org/debian-security https://ftp.de.debian.org/debian/\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
    )
    script = (
        firewall_definitions(stack("prod-fra"))
        + f"APT_SOURCE_FILES=({tmp_path}/sources.list {tmp_path}/missing.list {tmp_path}/debian.sources)\n"
        + "apt_hosts\n"
    )
    result = run_bash(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "deb.debian.org",
        "mirror.example.eu",
        "security.debian.org",
        "ftp.de.debian.org",
    ]


def test_egress_destinations_are_the_registries_and_object_store_hosts() -> None:
    config = stack("prod-fra")
    assert egress_destinations(config) == ["rg.fr-par.scw.cloud", "s3.eu-central-1.ionoscloud.com"]


def preflight(
    config: StackConfig, answers: dict[str, list[str]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    (step,) = render_host_steps(config, config.hosts[0], only=("60-firewall",))
    definitions = definitions_of(step)
    # nft stands in last: a run that gets as far as checking the rules exits with its status
    return run_bash(
        definitions
        + f"APT_SOURCE_FILES=({tmp_path}/sources.list)\n"
        + getent_stand_in(answers)
        + f"nft() {{ exit {NFT_REACHED}; }}\n"
        + "sshd() { return 1; }\n"
        + "apply\n"
    )


def test_preflight_refuses_naming_each_destination_outside_the_allowlist(tmp_path: Path) -> None:
    config = stack("prod-fra")
    assert config.residency.egress_allowlist == ("192.0.2.0/24", "185.48.116.0/22")
    result = preflight(
        config,
        {
            "rg.fr-par.scw.cloud": ["185.48.117.10"],
            "s3.eu-central-1.ionoscloud.com": ["198.51.100.7", "192.0.2.80"],
            "deb.debian.org": ["151.101.2.132", "2a04:4e42::644", "::ffff:151.101.2.132"],
        },
        tmp_path,
    )
    assert result.returncode == EXIT_REFUSED, result.stdout + result.stderr
    assert result.returncode != NFT_REACHED
    (refusal,) = [
        line for line in result.stdout.splitlines() if line.startswith("SOVEREIGN-REFUSED")
    ]
    assert refusal == (
        "SOVEREIGN-REFUSED the egress allowlist would cut this host off from: "
        "s3.eu-central-1.ionoscloud.com (198.51.100.7), deb.debian.org (151.101.2.132), "
        "deb.debian.org (2a04:4e42::644); add their ranges to residency.egressAllowlist"
    )


def test_preflight_lets_the_rules_load_when_every_destination_is_inside(tmp_path: Path) -> None:
    config = stack("prod-fra")
    result = preflight(
        config,
        {
            "rg.fr-par.scw.cloud": ["185.48.117.10"],
            "s3.eu-central-1.ionoscloud.com": ["192.0.2.80"],
            "deb.debian.org": ["185.48.116.1"],
        },
        tmp_path,
    )
    assert "SOVEREIGN-REFUSED" not in result.stdout
    assert result.returncode == NFT_REACHED, result.stdout + result.stderr


def test_no_preflight_without_an_egress_allowlist(tmp_path: Path) -> None:
    config = stack("staging")
    assert config.residency.egress_allowlist is None
    result = preflight(config, {"deb.debian.org": ["151.101.2.132"]}, tmp_path)
    assert "SOVEREIGN-REFUSED" not in result.stdout
    assert result.returncode == NFT_REACHED, result.stdout + result.stderr


def test_firewall_sets_hold_no_overlapping_elements() -> None:
    # prod-fra's resolvers lie inside its allowlist; nft refuses such a set ("conflicting
    # intervals specified") and the whole ruleset with it
    config = stack("prod-fra")
    config = config.model_copy(
        update={
            "k3s": config.k3s.model_copy(
                update={"api_allowed_cidrs": ("198.51.100.0/24", "198.51.100.0/28")}
            )
        }
    )
    rules = run_bash(firewall_definitions(config) + "render_rules\n")
    assert rules.returncode == 0, rules.stderr
    elements = re.findall(r"set (\w+) \{[^}]*?elements = \{ ([^}]*) \}", rules.stdout)
    by_set = {
        name: [ipaddress.ip_network(e.strip()) for e in body.split(",")] for name, body in elements
    }
    assert {"egress_allowed", "api_clients"} <= set(by_set)
    assert sorted(str(n) for n in by_set["egress_allowed"]) == ["185.48.116.0/22", "192.0.2.0/24"]
    assert [str(n) for n in by_set["api_clients"]] == ["198.51.100.0/24"]
    for name, networks in by_set.items():
        for i, first in enumerate(networks):
            for second in networks[i + 1 :]:
                assert not first.overlaps(second), f"set {name}: {first} overlaps {second}"
