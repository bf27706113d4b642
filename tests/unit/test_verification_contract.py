"""The planned checks are the verification contract: for every host of every shipped stack,
verification over recorded facts reports exactly the planned check ids, and a host or a cluster
that cannot be judged fails once with the rest of its planned checks skipped."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import StackConfig, load_stack_file
from components.config.models import HostSpec
from components.plan.checks import CLUSTER, LAYERS, cluster_checks, host_checks
from components.verification.cluster_api import verify_inference_cluster
from components.verification.geoip import GeoIpDatabase
from components.verification.layers import (
    ClusterObjects,
    Context,
    HostFacts,
    collector_script,
    evaluate_host,
    inference_cluster_checks,
    parse_sections,
)
from components.verification.runner import verify_stack
from tests.unit.test_verification_layers import (
    HEALTHY_GPU,
    RECORDED,
    ROOT,
    pinned_geoip,
)

STACKS = sorted((ROOT / "stacks").glob("Pulumi.*.yaml"))


def stack_hosts() -> list[tuple[str, str]]:
    return [(path.name, host.name) for path in STACKS for host in load_stack_file(path).hosts]


@pytest.fixture(scope="module")
def geoip() -> GeoIpDatabase:
    return pinned_geoip()


def recorded_facts(host: HostSpec) -> HostFacts:
    """The lab host's recorded facts; a GPU host's probe reads the recorded 8x H100 board."""
    sections = parse_sections(RECORDED)
    if host.gpu.count:
        sections["gpu_probe"] = HEALTHY_GPU.replace("\n", "")
    return HostFacts(host.name, sections)


@pytest.mark.parametrize(("stack_file", "host_name"), stack_hosts())
def test_verification_reports_exactly_the_planned_checks(
    geoip: GeoIpDatabase, stack_file: str, host_name: str
) -> None:
    config = load_stack_file(ROOT / "stacks" / stack_file)
    host = next(h for h in config.hosts if h.name == host_name)
    results = evaluate_host(Context(config, host, recorded_facts(host), geoip, geoip.built))
    reported = [r.id for r in results]
    planned = [c.id for c in host_checks(config, host)]
    assert len(reported) == len(set(reported)), "a check reported twice"
    assert set(reported) == set(planned)
    assert {r.host for r in results} == {host_name}
    unjudged = [r.id for r in results if r.observed == "no judgement for this check"]
    assert unjudged == []


def test_a_host_without_a_cache_gets_its_planned_cache_checks_skipped_with_the_reason(
    geoip: GeoIpDatabase,
) -> None:
    config = load_stack_file(ROOT / "stacks" / "Pulumi.lab.yaml")
    host = config.hosts[0].model_copy(update={"nvme": ()})
    results = evaluate_host(Context(config, host, recorded_facts(host), geoip, geoip.built))
    cache = {r.id: (r.status, r.observed) for r in results if r.layer == "cache"}
    planned = [c.id for c in host_checks(config, host) if c.layer == "cache"]
    assert planned == ["cache.mounted", "cache.writable"]
    reason = ("skip", "no NVMe drives declared for this host")
    assert cache == dict.fromkeys(planned, reason)


@pytest.mark.parametrize("stack_file", [p.name for p in STACKS])
def test_every_skip_says_why(geoip: GeoIpDatabase, stack_file: str) -> None:
    config = load_stack_file(ROOT / "stacks" / stack_file)
    for host in config.hosts:
        results = evaluate_host(Context(config, host, recorded_facts(host), geoip, geoip.built))
        assert [r.id for r in results if r.status == "skip" and not r.observed] == []


def prod() -> StackConfig:
    return load_stack_file(ROOT / "stacks" / "Pulumi.prod-fra.yaml")


def test_the_cluster_judgement_reports_exactly_the_planned_cluster_checks() -> None:
    config = prod()
    empty: dict[str, list[object]] = {"items": []}
    objects = ClusterObjects(empty, empty, empty, empty, empty, empty)
    results = inference_cluster_checks(config, objects)
    assert [r.id for r in results] == [c.id for c in cluster_checks(config)]
    assert {r.host for r in results} == {CLUSTER}


def test_an_unread_cluster_fails_once_and_skips_the_rest() -> None:
    config = prod()
    results = verify_inference_cluster(config, None)
    assert [r.id for r in results] == [c.id for c in cluster_checks(config)]
    assert [r.id for r in results if r.status == "fail"] == ["inference.cluster-api"]
    assert {r.status for r in results[1:]} == {"skip"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_host_fails_once_and_skips_its_planned_checks(tmp_path: Path) -> None:
    config = prod()
    quick = config.ssh.model_copy(update={"connect_retries": 0, "connect_timeout_seconds": 2})
    config = config.model_copy(update={"ssh": quick})
    host = config.hosts[0]
    gone = host.model_copy(
        update={
            "address": "127.0.0.1",
            "ssh": host.ssh.model_copy(update={"port": closed_port()}),
        }
    )
    verification = verify_stack(config, tmp_path, hosts=[gone], layers=LAYERS, kubeconfig=None)
    mine = [r for r in verification.results if r.host == gone.name]
    assert [r.id for r in mine if r.status == "fail"] == ["host.reachable"]
    assert {r.id for r in mine} == {c.id for c in host_checks(config, gone)}
    assert {r.observed for r in mine if r.status == "skip"} == {"not judged: host.reachable failed"}
    (run,) = verification.hosts
    assert (run.address, run.port, run.host_key) == ("127.0.0.1", gone.ssh.port, host.ssh.host_key)


SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def test_the_collector_as_hosts_run_it_is_shellcheck_clean(tmp_path: Path) -> None:
    """The preamble, every layer's part and the end mark, assembled as the runner sends them."""
    script = tmp_path / "collect.sh"
    script.write_text(collector_script())
    done = subprocess.run(
        [SHELLCHECK, "--shell=bash", str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_every_layer_has_a_script_part() -> None:
    parts = sorted(p.stem for p in (ROOT / "components" / "verification" / "layers").glob("*.sh"))
    assert parts == sorted([*LAYERS, "preamble"])
