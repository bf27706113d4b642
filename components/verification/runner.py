"""Collect facts from every host in parallel (one SSH connection, one script each) and judge them."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from components.config.models import Fingerprint, HostOrIp, HostSpec, Port, SshUser, StackConfig
from components.execution.outcome import HostUnreachable, StepError
from components.execution.ssh import HostSession, HostTarget, SessionPool, on_hosts
from components.plan.checks import LAYERS, reachable_expectation
from components.plan.host_steps import PROBE_DIR
from components.verification.cluster_api import verify_inference_cluster
from components.verification.geoip import (
    GeoIpDatabase,
    GeoIpUnavailable,
    find_database,
    open_database,
)
from components.verification.layers import (
    CACHE_READ_PROBE_MIB,
    CACHE_READ_PROBE_MIN_MIB,
    CACHE_READ_PROBE_SECONDS,
    K3S_CONTAINERD_DIR,
    K3S_CONTAINERD_TEMPLATES,
    Context,
    HostFacts,
    collector_script,
    evaluate_host,
    not_judged,
    parse_sections,
)
from components.verification.results import Finding, verdict

PROBE = Path(__file__).with_name("gpu_probe.py")
FACTS_TIMEOUT_SECONDS = 300


@dataclass
class HostRun:
    """How one host's collection went: its facts (None when unreachable), how long it took, the
    error, and where it was reached (address, SSH port, pinned host key fingerprint)."""

    host: str
    facts: HostFacts | None
    seconds: float
    error: str = ""
    address: str = ""
    port: int = 0
    host_key: str | None = None


@dataclass
class Verification:
    results: list[Finding] = field(default_factory=list)
    hosts: list[HostRun] = field(default_factory=list)
    geoip: dict[str, str] | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[Finding]:
        return [r for r in self.results if r.status == "fail"]


class OutputsError(ValueError):
    """A stack-outputs file that is not this stack's ``pulumi stack output --json``."""


def hosts_from_outputs(config: StackConfig, outputs: dict[str, Any]) -> list[HostSpec]:
    """The stack's hosts, with what only ``pulumi stack output --json`` knows: an ordered host's
    address, port, user and first-contact pin, and a pin the stack leaves to its inventory.

    What the stack says wins: a host with an address in the stack keeps it (and its port and
    user), and a pin in the stack is never replaced. Raises OutputsError, naming the field, for
    another environment's outputs and for a value outside the stack's grammar."""
    environment = outputs.get("environment")
    if environment != config.environment:
        raise OutputsError(
            f"the outputs are environment {environment!r}'s, not {config.environment!r}'s: "
            f"pulumi stack output --json -s {config.environment}"
        )
    exported = {
        h.get("name"): (i, h)
        for i, h in enumerate(outputs.get("hosts") or [])
        if isinstance(h, dict)
    }
    hosts = []
    for host in config.hosts:
        index, entry = exported.get(host.name, (0, None))
        if entry is None:
            hosts.append(host)
            continue
        found = _checked_entry(entry, index)
        ordered = host.address is None
        ssh = host.ssh.model_copy(
            update={
                "port": found["port"] if ordered and found["port"] else host.ssh.port,
                "user": found["user"] if ordered and found["user"] else host.ssh.user,
                "host_key": host.ssh.host_key or found["hostKey"],
            }
        )
        address = found["address"] if ordered else host.address
        hosts.append(host.model_copy(update={"address": address, "ssh": ssh}))
    return hosts


_OUTPUT_FIELDS: dict[str, TypeAdapter[Any]] = {
    "address": TypeAdapter(HostOrIp),
    "port": TypeAdapter(Port),
    "user": TypeAdapter(SshUser),
    "hostKey": TypeAdapter(Fingerprint),
}


def _checked_entry(entry: dict[str, Any], index: int) -> dict[str, Any]:
    """An outputs entry's connection fields, each as the stack's grammar has it (None if absent)."""
    found: dict[str, Any] = {}
    for key, adapter in _OUTPUT_FIELDS.items():
        value = entry.get(key)
        try:
            found[key] = None if value is None else adapter.validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid")
            raise OutputsError(f"outputs: hosts[{index}].{key}: {reason}") from None
    return found


def collector_env(config: StackConfig) -> dict[str, str]:
    """The collector's inputs, from the stack."""
    return {
        "CACHE_MOUNT_POINT": config.cache.mount_point,
        "CACHE_READ_PROBE_MIB": str(CACHE_READ_PROBE_MIB),
        "CACHE_READ_PROBE_MIN_MIB": str(CACHE_READ_PROBE_MIN_MIB),
        "CACHE_READ_PROBE_SECONDS": str(CACHE_READ_PROBE_SECONDS),
        "PROBE_DIR": PROBE_DIR,
        "CANARY": config.verification.egress_canary or "",
        "K3S_CONTAINERD_DIR": K3S_CONTAINERD_DIR,
        "K3S_CONTAINERD_TEMPLATES": " ".join(K3S_CONTAINERD_TEMPLATES),
    }


def collect_facts(session: HostSession, config: StackConfig) -> HostFacts:
    env = collector_env(config)
    prelude = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    result = session.run_script(
        prelude + collector_script(),
        payloads={"gpu_probe.py": PROBE.read_bytes()},
        timeout=FACTS_TIMEOUT_SECONDS,
    )
    return HostFacts(session.target.name, parse_sections(result.stdout))


def _reached_at(host: HostSpec) -> tuple[str, int, str | None]:
    return host.address or "", host.ssh.port, host.ssh.host_key


def verify_stack(
    config: StackConfig,
    project_dir: Path,
    *,
    hosts: Sequence[HostSpec] | None = None,
    layers: tuple[str, ...] = LAYERS,
    geoip: GeoIpDatabase | None = None,
    on_host: Callable[[HostRun, list[Finding]], None] | None = None,
    kubeconfig: str | None = None,
) -> Verification:
    """Verify every host in parallel, one result per planned check; a host that cannot be
    reached fails ``host.reachable`` once, and its other checks are skipped for it.

    With the inference layer selected and models in the stack, the cluster's inference objects are
    judged too, read through ``kubeconfig`` (the stack's secret ``kubeconfig`` output); without it
    that check fails and says where to get it."""
    started = time.monotonic()
    targets = list(hosts if hosts is not None else config.hosts)
    if geoip is None:
        try:
            geoip = open_database(find_database(project_dir))
        except GeoIpUnavailable:
            geoip = None
    pool = SessionPool(config.ssh)
    verification = Verification(geoip=geoip.describe() if geoip else None)

    def run(host: HostSpec) -> tuple[HostRun, list[Finding]]:
        t0 = time.monotonic()
        try:
            if host.address is None:
                raise HostUnreachable(
                    f"{host.name}: ordered from {host.source}, its address and host key are in "
                    "the stack's outputs: pulumi stack output --json > outputs.json, then "
                    "sovereign verify --outputs outputs.json"
                )
            facts = collect_facts(pool.session(HostTarget.from_spec(host, project_dir)), config)
        except StepError as exc:
            run = HostRun(host.name, None, time.monotonic() - t0, str(exc), *_reached_at(host))
            failed = verdict(
                "host", host.name, "reachable", False, str(exc), reachable_expectation(host)
            )
            results = not_judged(config, host, layers, failed)
        else:
            run = HostRun(host.name, facts, time.monotonic() - t0, "", *_reached_at(host))
            results = evaluate_host(Context(config, host, facts, geoip), layers)
        if on_host is not None:
            on_host(run, results)
        return run, results

    try:
        outcomes = on_hosts(targets, run, config.ssh.max_parallel_hosts)
    finally:
        pool.close()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        run_record, results = outcome
        verification.hosts.append(run_record)
        verification.results.extend(results)
    if "inference" in layers:
        verification.results.extend(verify_inference_cluster(config, kubeconfig))
    verification.seconds = time.monotonic() - started
    return verification


def load_outputs(path: Path) -> dict[str, Any]:
    """``pulumi stack output --json`` as written to ``path``; ValueError when it is not that."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise OutputsError(f"{path}: expected the JSON object pulumi stack output --json prints")
    return data
