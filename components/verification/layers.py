"""Judging one host's collected facts, layer by layer (pure).

Layers, in order (as the GPU Operator's validator orders them): host, driver, runtime, cache,
k3s, inference, residency. Each function returns the layer's :class:`CheckResult` list; a layer
that does not apply to the host (a CPU node's driver, K3s not installed) is skipped with a reason.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from components.config.models import HostSpec, StackConfig, image_registry
from components.plan.checks import LAYERS, NO_DEFAULT_NVIDIA_RUNTIME, cache_read_expectation
from components.plan.cluster import node_labels
from components.plan.kubernetes.gateway import TRAEFIK_DEPLOYMENT, traefik_arguments
from components.plan.kubernetes.models import TELEMETRY_OPT_OUTS as PLANNED_TELEMETRY_OPT_OUTS
from components.plan.kubernetes.spec import (
    COUNTRY_LABEL,
    GATEWAY_NAMESPACE,
    MODEL_LABEL,
    MODELS_NAMESPACE,
    RUNTIME_CLASS,
    SYSTEM_NAMESPACE,
    WEIGHTS_NAMESPACE,
    InferenceStackSpec,
)
from components.verification.geoip import GeoIpDatabase
from components.verification.gpu_health import evaluate_gpu_probe
from components.verification.results import CheckResult, skipped, verdict

SUPPORTED_OS = ("debian-12", "ubuntu-22.04", "ubuntu-24.04")


def parse_sections(output: str) -> dict[str, str]:
    """Split ``collect_facts.sh`` output into its ``==== name`` sections."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in output.splitlines():
        if line.startswith("==== "):
            current = sections.setdefault(line[5:].strip(), [])
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in sections.items()}


@dataclass(frozen=True)
class HostFacts:
    host: str
    sections: dict[str, str]

    def get(self, name: str) -> str:
        return self.sections.get(name, "")

    @property
    def complete(self) -> bool:
        return "end" in self.sections


@dataclass(frozen=True)
class Context:
    config: StackConfig
    host: HostSpec
    facts: HostFacts
    geoip: GeoIpDatabase | None


def host_layer(ctx: Context) -> list[CheckResult]:
    name, facts = ctx.host.name, ctx.facts
    os_id = facts.get("os")
    sshd = dict(line.split(" ", 1) for line in facts.get("sshd").splitlines() if " " in line)
    return [
        verdict(
            "host", name, "os", os_id in SUPPORTED_OS, os_id or "unknown", " or ".join(SUPPORTED_OS)
        ),
        verdict(
            "host",
            name,
            "ssh-password-login",
            sshd.get("passwordauthentication") == "no"
            and sshd.get("kbdinteractiveauthentication") == "no",
            f"password {sshd.get('passwordauthentication', '?')}, keyboard-interactive {sshd.get('kbdinteractiveauthentication', '?')}",
            "both off",
        ),
        verdict(
            "host",
            name,
            "ssh-root-login",
            sshd.get("permitrootlogin") in ("prohibit-password", "without-password", "no"),
            sshd.get("permitrootlogin", "?"),
            "prohibit-password or no",
        ),
    ]


def driver_layer(ctx: Context) -> list[CheckResult]:
    text = ctx.facts.get("gpu_probe") or "{}"
    try:
        reading = json.loads(text.splitlines()[-1])
    except (ValueError, IndexError):
        reading = {"nvml": "unreadable", "error": text[:200]}
    return evaluate_gpu_probe(
        ctx.host.name,
        reading,
        ctx.host.gpu,
        ctx.config.nvidia,
        ctx.config.verification.gpu,
        ctx.facts.get("kernel_xid"),
    )


def runtime_layer(ctx: Context) -> list[CheckResult]:
    return [*_container_toolkit_checks(ctx), _default_runtime_check(ctx)]


def _container_toolkit_checks(ctx: Context) -> list[CheckResult]:
    name = ctx.host.name
    if ctx.host.gpu.count == 0:
        return [
            skipped("runtime", name, "nvidia-container-toolkit", "no GPUs declared for this host")
        ]
    lines = ctx.facts.get("container_toolkit").splitlines()
    found = re.search(r"(\d+\.\d+\.\d+)", lines[0]) if lines else None
    version = found.group(1) if found else None
    wanted = ctx.config.nvidia.container_toolkit_version.split("-")[0]
    return [
        verdict(
            "runtime",
            name,
            "nvidia-container-toolkit",
            version == wanted,
            version or "not installed",
            wanted,
        ),
        verdict(
            "runtime",
            name,
            "cdi-spec",
            "nvidia.yaml" in lines[1:],
            ", ".join(lines[1:]) or "none",
            "/var/run/cdi/nvidia.yaml",
        ),
    ]


# K3s writes containerd's config.toml here at every start, from its built-in template or from the
# first of these override templates that exists next to it (k3s pkg/agent/containerd/config.go).
K3S_CONTAINERD_DIR = "/var/lib/rancher/k3s/agent/etc/containerd"
K3S_CONTAINERD_TEMPLATES = ("config-v3.toml.tmpl", "config.toml.tmpl")
# The CRI plugin's table that holds default_runtime_name, by containerd config version.
CRI_PLUGIN_BY_CONFIG_VERSION = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
# containerd runs a pod with runc unless default_runtime_name names another runtime.
CONTAINERD_DEFAULT_RUNTIME = "runc"
_TEMPLATED_DEFAULT_RUNTIME = re.compile(r"^\s*default_runtime_name\s*=\s*[\"']([^\"'{}]*)[\"']")


def containerd_default_runtime(config_toml: str) -> str | None:
    """The ``default_runtime_name`` a containerd config sets, or None when it sets none (pure).

    Raises ValueError when the text is not TOML."""
    data = tomllib.loads(config_toml)
    plugins = data.get("plugins", {})
    version = data.get("version")
    tables = (
        [CRI_PLUGIN_BY_CONFIG_VERSION[version]]
        if version in CRI_PLUGIN_BY_CONFIG_VERSION
        else list(CRI_PLUGIN_BY_CONFIG_VERSION.values())
    )
    for table in tables:
        name = plugins.get(table, {}).get("containerd", {}).get("default_runtime_name")
        if name:
            return str(name)
    return None


def _default_runtimes_on_host(facts: HostFacts) -> list[tuple[str, str]]:
    """(where, runtime) for every place on the host that sets containerd's default runtime."""
    found: list[tuple[str, str]] = []
    template = ""
    for line in facts.get("containerd_templates").splitlines():
        if line.startswith("template "):
            template = line.split(" ", 1)[1]
            continue
        literal = _TEMPLATED_DEFAULT_RUNTIME.match(line)
        if literal and template:
            found.append((template, literal.group(1)))
    for line in facts.get("k3s_default_runtime").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "default-runtime" and value.strip():
            found.append(("/etc/rancher/k3s/config.yaml", value.strip().strip("\"'")))
    return found


def _default_runtime_check(ctx: Context) -> CheckResult:
    """Any container on a node whose default runtime is NVIDIA's sees every GPU it asks for by
    environment variable, without requesting one: only pods naming the RuntimeClass may."""
    name = ctx.host.name
    if not ctx.config.k3s.install:
        return skipped("runtime", name, "default-runtime", "k3s.install is false for this stack")
    generated = ctx.facts.get("containerd_config")
    if not generated:
        return skipped(
            "runtime",
            name,
            "default-runtime",
            f"K3s has not written {K3S_CONTAINERD_DIR}/config.toml on this host",
        )
    try:
        in_effect = containerd_default_runtime(generated)
    except ValueError:
        return verdict(
            "runtime",
            name,
            "default-runtime",
            False,
            "config.toml is not TOML",
            NO_DEFAULT_NVIDIA_RUNTIME,
        )
    settings = [
        ("config.toml", in_effect or f"{CONTAINERD_DEFAULT_RUNTIME} (containerd's default)"),
        *_default_runtimes_on_host(ctx.facts),
    ]
    nvidia = [(where, runtime) for where, runtime in settings if runtime.startswith(RUNTIME_CLASS)]
    return verdict(
        "runtime",
        name,
        "default-runtime",
        not nvidia,
        ", ".join(f"{runtime} in {where}" for where, runtime in nvidia or settings),
        NO_DEFAULT_NVIDIA_RUNTIME,
        source=K3S_CONTAINERD_DIR,
    )


# The cache's read probe (collect_facts.sh, section cache_read): at most this many MiB read with
# direct I/O, each dd stopped after CACHE_READ_PROBE_SECONDS; below CACHE_READ_PROBE_MIN_MIB
# moved, the timing says too little to judge.
CACHE_READ_PROBE_MIB = 1024
CACHE_READ_PROBE_MIN_MIB = 64
CACHE_READ_PROBE_SECONDS = 20
MIB = 1024**2
# GNU dd's closing statistics under LC_ALL=C: "N bytes (...) copied, S s, R unit/s"; seconds are
# printed with %g, so they may come in exponent form
_DD_COPIED = re.compile(r"^(\d+) bytes\b.* copied, (\d+(?:\.\d+)?(?:e[-+]?\d+)?) s\b", re.MULTILINE)


@dataclass(frozen=True)
class CacheRead:
    """What the cache's read probe reported: its source (``existing``: a file already on the
    cache; ``written``: one written for the probe), what dd read and in how long, dd's complaints,
    and why nothing was measured, if so."""

    source: str
    bytes_read: int
    seconds: float
    errors: tuple[str, ...] = ()
    not_measured: str = ""

    @property
    def measured(self) -> bool:
        enough = self.bytes_read >= CACHE_READ_PROBE_MIN_MIB * MIB
        return not self.not_measured and enough and self.seconds > 0

    @property
    def mib_per_second(self) -> float:
        return self.bytes_read / MIB / self.seconds if self.seconds > 0 else 0.0


def parse_cache_read(text: str) -> CacheRead:
    """The ``cache_read`` section: ``source existing|written``, dd's output (the write's lines
    prefixed ``write``), or ``not-measured <reason>`` (pure)."""
    source, not_measured = "", ""
    errors: list[str] = []
    for line in text.splitlines():
        if line.startswith("source "):
            source = line.split(" ", 1)[1].strip()
        elif line.startswith("not-measured "):
            not_measured = line.split(" ", 1)[1].strip()
        elif line.startswith(("dd: ", "write ", "timeout: ")):
            errors.append(line)
    copied = _DD_COPIED.findall(text)
    bytes_read, seconds = (int(copied[-1][0]), float(copied[-1][1])) if copied else (0, 0.0)
    return CacheRead(source, bytes_read, seconds, tuple(errors), not_measured)


def _cache_read_check(ctx: Context, mounted: bool) -> CheckResult:
    """The cache reads at least ``cache.minReadMibPerSecond``: what the startup probes and the
    cold-start estimates assume of every node's cache."""
    name, floor = ctx.host.name, ctx.config.cache.min_read_mib_per_second
    expected = cache_read_expectation(ctx.config)
    if "cache_read" not in ctx.facts.sections:
        return skipped("cache", name, "read-speed", "no read measurement in the collected facts")
    if not mounted:
        return skipped("cache", name, "read-speed", "the cache is not mounted")
    read = parse_cache_read(ctx.facts.get("cache_read"))
    if not read.measured:
        reason = (
            read.not_measured
            or "; ".join(read.errors)
            or f"{read.bytes_read / MIB:.0f} MiB read, below the probe's {CACHE_READ_PROBE_MIN_MIB} MiB"
        )
        return verdict("cache", name, "read-speed", False, f"not measured: {reason}", expected)
    what = "a file on the cache" if read.source == "existing" else "a file written for the probe"
    return verdict(
        "cache",
        name,
        "read-speed",
        read.mib_per_second >= floor,
        # whole MiB/s rounded down: a speed just below the floor never reads as the floor
        f"{int(read.mib_per_second)} MiB/s ({read.bytes_read / MIB:.0f} MiB of {what} in "
        f"{read.seconds:.2f} s)",
        expected,
        read_mib_per_second=round(read.mib_per_second, 1),
        bytes_read=read.bytes_read,
        seconds=read.seconds,
        probe_source=read.source,
        min_read_mib_per_second=floor,
    )


def cache_layer(ctx: Context) -> list[CheckResult]:
    name, cache = ctx.host.name, ctx.config.cache
    if not ctx.host.nvme:
        return [skipped("cache", name, "mounted", "no NVMe drives declared for this host")]
    mount = ctx.facts.get("cache_mount").split()
    fstab = ctx.facts.get("cache_fstab").split()
    results = [
        verdict(
            "cache",
            name,
            "mounted",
            len(mount) >= 3 and mount[1] == cache.filesystem,
            f"{mount[1]} from {mount[0]}" if len(mount) >= 2 else "not mounted",
            f"{cache.filesystem} at {cache.mount_point}",
        )
    ]
    if len(mount) >= 3:
        options = mount[2].split(",")
        results.append(
            verdict("cache", name, "noatime", "noatime" in options, ",".join(options), "noatime")
        )
    else:
        results.append(skipped("cache", name, "noatime", "the cache is not mounted"))
    uuid = mount[3] if len(mount) >= 4 else ""
    by_uuid = bool(fstab) and fstab[0].startswith("UUID=")
    results.append(
        verdict(
            "cache",
            name,
            "persistent",
            by_uuid and (not uuid or fstab[0] == f"UUID={uuid}"),
            " ".join(fstab) or "no /etc/fstab entry",
            f"/etc/fstab mounts UUID={uuid or '<filesystem uuid>'} at {cache.mount_point}",
        )
    )
    results.append(_cache_read_check(ctx, len(mount) >= 3))
    if len(ctx.host.nvme) > 1:
        mdstat = ctx.facts.get("mdstat")
        active = re.search(r"^(md\S+) : active raid0 (.+)$", mdstat, re.MULTILINE)
        members = len(active.group(2).split()) if active else 0
        results.append(
            verdict(
                "cache",
                name,
                "array",
                members == len(ctx.host.nvme),
                f"raid0 with {members} member(s)" if active else "no active raid0 array",
                f"raid0 of {len(ctx.host.nvme)} drives",
            )
        )
    return results


def k3s_layer(ctx: Context) -> list[CheckResult]:
    name, k3s = ctx.host.name, ctx.config.k3s
    if not k3s.install:
        return [skipped("k3s", name, "version", "k3s.install is false for this stack")]
    version = (ctx.facts.get("k3s_version").split() or ["", "", "not installed"])[2:3]
    observed = version[0] if version else "not installed"
    results = [verdict("k3s", name, "version", observed == k3s.version, observed, k3s.version)]
    node_json = ctx.facts.get("k3s_node")
    if not node_json:
        results.append(
            skipped("k3s", name, "node-ready", "no kubeconfig on this host (agents have none)")
        )
        return results
    node = json.loads(node_json)
    ready = [c for c in node.get("status", {}).get("conditions", []) if c.get("type") == "Ready"]
    results.append(
        verdict(
            "k3s",
            name,
            "node-ready",
            bool(ready) and ready[0].get("status") == "True",
            ready[0].get("status") if ready else "unknown",
            "True",
        )
    )
    return results


# Every inference container must carry these (one home: the plan that sets them).
TELEMETRY_OPT_OUTS = dict(PLANNED_TELEMETRY_OPT_OUTS)
CLUSTER = "cluster"  # the host column of checks that judge the cluster as a whole


def inference_layer(ctx: Context) -> list[CheckResult]:
    name = ctx.host.name
    text = ctx.facts.get("inference_pods")
    if not text:
        return [
            skipped(
                "inference",
                name,
                "pods",
                "no cluster API on this host (agents, or K3s not installed)",
            )
        ]
    pods = json.loads(text).get("items", [])
    if not pods:
        return [
            skipped("inference", name, "pods", "no inference pods are running (scaled to zero)")
        ]
    allowed = {e.rstrip("/") for e in ctx.config.residency.allowed_object_store_endpoints}
    results = []
    for pod in pods:
        pod_name = pod.get("metadata", {}).get("name", "?")
        for container in pod.get("spec", {}).get("containers", []):
            env = {e.get("name"): e.get("value") for e in container.get("env", []) if "value" in e}
            missing = [k for k, v in TELEMETRY_OPT_OUTS.items() if env.get(k) != v]
            where = f"{pod_name}/{container.get('name')}"
            results.append(
                verdict(
                    "inference",
                    name,
                    f"telemetry-off:{where}",
                    not missing,
                    f"missing {', '.join(missing)}" if missing else "all set",
                    ", ".join(f"{k}={v}" for k, v in TELEMETRY_OPT_OUTS.items()),
                )
            )
            endpoints = sorted(
                {str(v).rstrip("/") for k, v in env.items() if k and "ENDPOINT" in k.upper() and v}
            )
            stray = [e for e in endpoints if e not in allowed]
            if endpoints:
                results.append(
                    verdict(
                        "inference",
                        name,
                        f"object-store:{where}",
                        not stray,
                        ", ".join(endpoints),
                        "only allowed object-store endpoints",
                    )
                )
    return results


@dataclass(frozen=True)
class ClusterObjects:
    """What the API server returned, as its JSON lists (``{"items": [...]}``)."""

    scaled_objects: dict[str, Any]
    deployments: dict[str, Any]
    daemon_sets: dict[str, Any]
    pods: dict[str, Any]
    nodes: dict[str, Any]
    system_deployments: dict[str, Any]  # kube-system's: where K3s runs its packaged Traefik


def _items(listing: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = listing.get("items") or []
    return items


def _name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '?')}".lstrip("/")


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj.get("kind") == "Pod" or "template" not in obj.get("spec", {}):
        spec: dict[str, Any] = obj.get("spec", {})
        return spec
    template: dict[str, Any] = obj["spec"]["template"].get("spec", {})
    return template


def _image_checks(config: StackConfig, workload: dict[str, Any]) -> list[CheckResult]:
    allowed = set(config.residency.allowed_registries)
    pod = _pod_spec(workload)
    results = []
    for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
        image = str(container.get("image", ""))
        registry = image_registry(image)
        pinned = "@sha256:" in image
        results.append(
            verdict(
                "inference",
                CLUSTER,
                f"image:{_name(workload)}/{container.get('name')}",
                pinned and registry in allowed,
                image or "no image",
                f"a digest (@sha256:) from {', '.join(sorted(allowed))}",
            )
        )
    return results


def _telemetry_check(workload: dict[str, Any]) -> list[CheckResult]:
    results = []
    for container in _pod_spec(workload).get("containers", []):
        env = {e.get("name"): e.get("value") for e in container.get("env", []) if "value" in e}
        missing = [k for k, v in TELEMETRY_OPT_OUTS.items() if env.get(k) != v]
        results.append(
            verdict(
                "inference",
                CLUSTER,
                f"telemetry-off:{_name(workload)}/{container.get('name')}",
                not missing,
                f"missing {', '.join(missing)}" if missing else "all set",
                ", ".join(f"{k}={v}" for k, v in TELEMETRY_OPT_OUTS.items()),
            )
        )
    return results


def _scaled_object_check(
    model_name: str, served: str, scaled: dict[str, dict[str, Any]]
) -> CheckResult:
    obj = scaled.get(model_name)
    expected = f"minReplicaCount 0, scaling Deployment {model_name}, trigger model {served}"
    if obj is None:
        return verdict(
            "inference", CLUSTER, f"scale-to-zero:{model_name}", False, "no ScaledObject", expected
        )
    spec = obj.get("spec", {})
    triggers = [t.get("metadata", {}).get("model") for t in spec.get("triggers", [])]
    target = spec.get("scaleTargetRef", {}).get("name")
    minimum = spec.get("minReplicaCount", 0)  # KEDA's default is 0
    ok = minimum == 0 and target == model_name and served in triggers
    observed = f"minReplicaCount {minimum}, scaling {target}, trigger models {triggers}"
    return verdict("inference", CLUSTER, f"scale-to-zero:{model_name}", ok, observed, expected)


def _placement_checks(config: StackConfig, objects: ClusterObjects) -> list[CheckResult]:
    countries = {
        n.get("metadata", {}).get("name"): n.get("metadata", {})
        .get("labels", {})
        .get(COUNTRY_LABEL)
        for n in _items(objects.nodes)
    }
    allowed = config.residency.allowed_countries
    results = []
    for pod in _items(objects.pods):
        if pod.get("metadata", {}).get("namespace", MODELS_NAMESPACE) != MODELS_NAMESPACE:
            continue
        node = pod.get("spec", {}).get("nodeName")
        if not node:
            continue  # not scheduled yet: nothing ran anywhere
        country = countries.get(node)
        results.append(
            verdict(
                "inference",
                CLUSTER,
                f"placement:{_name(pod)}",
                country in allowed,
                f"on {node} ({country or 'no country label'})",
                "a node labelled with a country in residency.allowedCountries",
            )
        )
    return results


def _flag_values(args: list[str]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for arg in args:
        flag, _, value = arg.partition("=")
        # compared without case, so that a differently spelled copy of a flag counts as a conflict
        values.setdefault(flag.lower(), []).append(value)
    return values


def _traefik_check(config: StackConfig, objects: ClusterObjects) -> CheckResult:
    """The edge's timeouts as Traefik runs them: the flags the plan passes through the packaged
    chart's ``additionalArguments``, on the live Deployment's container, each with one value."""
    check = "traefik-timeouts"
    planned = traefik_arguments(InferenceStackSpec.from_stack(config))
    if not planned:
        return skipped("inference", CLUSTER, check, "the plan sets no Traefik flags")
    expected = " ".join(planned)
    deployment = next(
        (
            d
            for d in _items(objects.system_deployments)
            if d.get("metadata", {}).get("name") == TRAEFIK_DEPLOYMENT
            and d.get("metadata", {}).get("namespace", SYSTEM_NAMESPACE) == SYSTEM_NAMESPACE
        ),
        None,
    )
    if deployment is None:
        observed = f"no Deployment {SYSTEM_NAMESPACE}/{TRAEFIK_DEPLOYMENT}"
        return verdict("inference", CLUSTER, check, False, observed, expected)
    containers = _pod_spec(deployment).get("containers", [])
    running = _flag_values([str(a) for c in containers for a in c.get("args", [])])
    wrong = []
    for flag, value in _flag_values(planned).items():
        seen = running.get(flag, [])
        if seen != value:
            wrong.append(f"{flag}={'|'.join(seen) if seen else '(absent)'}")
    observed = ", ".join(wrong) if wrong else "all set"
    return verdict("inference", CLUSTER, check, not wrong, observed, expected)


# The API server classes a pod BestEffort when no container requests or limits CPU or memory:
# the kubelet evicts such pods first under memory pressure.
BEST_EFFORT = "BestEffort"


def _qos_checks(objects: ClusterObjects) -> list[CheckResult]:
    results = []
    for pod in _items(objects.pods):
        meta = pod.get("metadata", {})
        if meta.get("namespace") != MODELS_NAMESPACE or MODEL_LABEL not in meta.get("labels", {}):
            continue
        status = pod.get("status", {})
        if status.get("phase") != "Running":
            continue
        qos = status.get("qosClass") or "unreported"
        results.append(
            verdict(
                "inference",
                CLUSTER,
                f"qos:{_name(pod)}",
                qos not in (BEST_EFFORT, "unreported"),
                qos,
                "Burstable or Guaranteed (CPU and memory requested)",
            )
        )
    return results


def inference_cluster_checks(config: StackConfig, objects: ClusterObjects) -> list[CheckResult]:
    """Judge the deployed inference objects (pure): every model scales to zero through KEDA,
    every image is a digest from an allowed registry, telemetry is off in every model container,
    model pods ran only on nodes inside the residency policy and are not BestEffort, and on K3s
    the packaged Traefik runs with the edge timeouts the plan set."""
    ours = {MODELS_NAMESPACE, GATEWAY_NAMESPACE, WEIGHTS_NAMESPACE}
    scaled = {
        o["metadata"]["name"]: o
        for o in _items(objects.scaled_objects)
        if o.get("metadata", {}).get("namespace") == MODELS_NAMESPACE
    }
    deployments = {
        o["metadata"]["name"]: o
        for o in _items(objects.deployments)
        if o.get("metadata", {}).get("namespace") == MODELS_NAMESPACE
        and MODEL_LABEL in o.get("metadata", {}).get("labels", {})
    }
    results: list[CheckResult] = []
    for model in config.inference.models:
        results.append(_scaled_object_check(model.name, model.served, scaled))
        deployment = deployments.get(model.name)
        if deployment is None:
            results.append(
                verdict(
                    "inference",
                    CLUSTER,
                    f"deployed:{model.name}",
                    False,
                    "no Deployment",
                    "a Deployment",
                )
            )
            continue
        results += _telemetry_check(deployment)
    workloads = [
        o
        for o in [*_items(objects.deployments), *_items(objects.daemon_sets), *_items(objects.pods)]
        if o.get("metadata", {}).get("namespace") in ours
    ]
    for workload in workloads:
        results += _image_checks(config, workload)
    if config.k3s.install:
        results.append(_traefik_check(config, objects))
    return results + _placement_checks(config, objects) + _qos_checks(objects)


def residency_layer(ctx: Context) -> list[CheckResult]:
    checks: list[Callable[[Context], list[CheckResult]]] = [
        _country_checks,
        _egress_checks,
        _dns_checks,
        _ntp_checks,
        _registry_checks,
        _firewall_checks,
    ]
    return [result for check in checks for result in check(ctx)]


def _country_checks(ctx: Context) -> list[CheckResult]:
    name, host, policy = ctx.host.name, ctx.host, ctx.config.residency
    results = [
        verdict(
            "residency",
            name,
            "declared-country",
            host.country in policy.allowed_countries,
            host.country,
            "a country in residency.allowedCountries",
        )
    ]
    on_host = dict(
        line.split("=", 1) for line in ctx.facts.get("node_labels").splitlines() if "=" in line
    )
    wanted = node_labels(ctx.config, host)
    keys = (
        "sovereign-inference/country",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    )
    for key in keys:
        results.append(
            verdict(
                "residency",
                name,
                f"label:{key}",
                on_host.get(key) == wanted[key],
                on_host.get(key, "absent"),
                wanted[key],
                source="/etc/sovereign/node-labels",
            )
        )
    node_json = ctx.facts.get("k3s_node")
    if node_json:
        labels = json.loads(node_json).get("metadata", {}).get("labels", {})
        for key in keys:
            results.append(
                verdict(
                    "residency",
                    name,
                    f"k3s-label:{key}",
                    labels.get(key) == wanted[key],
                    labels.get(key, "absent"),
                    wanted[key],
                    source="Kubernetes Node object",
                )
            )
    return results


def _egress_checks(ctx: Context) -> list[CheckResult]:
    name, policy = ctx.host.name, ctx.config.residency
    allowed = sorted(policy.allowed_countries)
    addresses = set(ctx.host.egress_ips)
    for cidr in ctx.facts.get("addresses").split():
        address = cidr.split("/")[0]
        try:
            if ipaddress.ip_address(address).is_global:
                addresses.add(address)
        except ValueError:
            continue
    if ctx.geoip is None:
        return [
            verdict(
                "residency", name, "geoip-database", False, "missing", "DB-IP Lite Country database"
            )
        ]
    results = [
        verdict(
            "residency",
            name,
            "geoip-database-fresh",
            ctx.geoip.age_days() <= ctx.config.verification.geoip_max_age_days,
            f"built {ctx.geoip.built.date()} ({ctx.geoip.age_days()} days old)",
            f"at most {ctx.config.verification.geoip_max_age_days} days old",
            database=ctx.geoip.describe(),
        )
    ]
    for address in sorted(addresses):
        country = ctx.geoip.country(address)
        results.append(
            verdict(
                "residency",
                name,
                f"egress-ip:{address}",
                country in policy.allowed_countries,
                country or "unknown to the database",
                f"one of {', '.join(allowed)}",
                declared=address in ctx.host.egress_ips,
            )
        )
    return results


def _resolvers_in_use(facts: HostFacts) -> list[str]:
    servers = re.findall(r"^nameserver\s+(\S+)", facts.get("resolv_conf"), re.MULTILINE)
    for line in facts.get("resolved_dns").splitlines():
        servers += [w.split("#")[0] for w in line.split(":", 1)[-1].split()]
    uses_stub = (
        servers and all(s.startswith("127.0.0.") for s in servers) and facts.get("resolved_dns")
    )
    return sorted({s for s in servers if not (uses_stub and s.startswith("127.0.0."))})


def _dns_checks(ctx: Context) -> list[CheckResult]:
    name, allowed = ctx.host.name, set(ctx.config.residency.dns_resolvers)
    in_use = _resolvers_in_use(ctx.facts)
    stray = [s for s in in_use if s not in allowed]
    return [
        verdict(
            "residency",
            name,
            "dns-resolvers",
            bool(in_use) and not stray,
            ", ".join(in_use) or "none",
            f"only {', '.join(sorted(allowed))}",
        )
    ]


def _ntp_checks(ctx: Context) -> list[CheckResult]:
    name, allowed = ctx.host.name, set(ctx.config.residency.ntp_servers)
    configured = sorted(
        {
            line.split()[1]
            for line in ctx.facts.get("ntp_config").splitlines()
            if len(line.split()) > 1
        }
    )
    stray = [s for s in configured if s not in allowed]
    return [
        verdict(
            "residency",
            name,
            "ntp-servers",
            bool(configured) and not stray,
            ", ".join(configured) or "none",
            f"only {', '.join(sorted(allowed))}",
        )
    ]


def _registry_checks(ctx: Context) -> list[CheckResult]:
    name, allowed = ctx.host.name, set(ctx.config.residency.allowed_registries)
    text = ctx.facts.get("k3s_registries")
    if not text:
        return [skipped("residency", name, "registry-mirrors", "K3s is not installed on this host")]
    mirrors = (yaml.safe_load(text) or {}).get("mirrors", {})
    endpoints = sorted(
        {
            re.sub(r"^https?://", "", e).split("/")[0]
            for m in mirrors.values()
            for e in m.get("endpoint", [])
        }
    )
    stray = [e for e in endpoints if e not in allowed]
    results = [
        verdict(
            "residency",
            name,
            "registry-mirrors",
            not stray,
            ", ".join(endpoints) or "none",
            f"only {', '.join(sorted(allowed))}",
        )
    ]
    images_json = ctx.facts.get("images")
    if images_json:
        tags = [
            t
            for image in json.loads(images_json).get("images", [])
            for t in image.get("repoTags") or []
        ]
        foreign = sorted(
            {
                t
                for t in tags
                if image_registry(t) not in allowed and image_registry(t) not in mirrors
            }
        )
        results.append(
            verdict(
                "residency",
                name,
                "images",
                not foreign,
                ", ".join(foreign) or "all from allowed registries",
                "images only from allowed registries or their mirrors",
            )
        )
    return results


def _firewall_checks(ctx: Context) -> list[CheckResult]:
    name = ctx.host.name
    table = ctx.facts.get("firewall")
    results = [
        verdict(
            "residency",
            name,
            "firewall",
            "hook input" in table and "policy drop" in table,
            "table inet sovereign loaded" if table else "no table inet sovereign",
            "inbound policy drop",
        )
    ]
    if ctx.config.residency.egress_allowlist is not None:
        output = re.search(r"chain output \{[^}]*policy drop", table, re.DOTALL)
        results.append(
            verdict(
                "residency",
                name,
                "egress-allowlist",
                bool(output),
                "enforced" if output else "no output policy drop",
                "outbound only to the allowlist",
            )
        )
        canary = ctx.facts.get("egress_canary")
        if canary:
            results.append(
                verdict("residency", name, "egress-canary", canary == "blocked", canary, "blocked")
            )
    return results


LAYER_FUNCTIONS: dict[str, Callable[[Context], list[CheckResult]]] = {
    "host": host_layer,
    "driver": driver_layer,
    "runtime": runtime_layer,
    "cache": cache_layer,
    "k3s": k3s_layer,
    "inference": inference_layer,
    "residency": residency_layer,
}


def evaluate_host(ctx: Context, layers: tuple[str, ...] = LAYERS) -> list[CheckResult]:
    if not ctx.facts.complete:
        return [
            verdict(
                layer,
                ctx.host.name,
                "facts",
                False,
                "fact collection did not finish",
                "a complete report",
            )
            for layer in layers
        ]
    return [r for layer in layers for r in LAYER_FUNCTIONS[layer](ctx)]
