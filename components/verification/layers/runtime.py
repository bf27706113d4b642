"""The container runtime layer: NVIDIA's container toolkit at its pin with its CDI spec, and no
NVIDIA runtime as containerd's default."""

from __future__ import annotations

import re
import tomllib

from components.plan.checks import NO_DEFAULT_NVIDIA_RUNTIME
from components.plan.kubernetes.spec import RUNTIME_CLASS
from components.verification.layers.facts import Context, HostFacts
from components.verification.results import Finding, skipped, verdict

SOURCES: dict[str, tuple[str, ...]] = {
    "nvidia-container-toolkit": ("container_toolkit",),
    "cdi-spec": ("container_toolkit",),
    "default-runtime": ("containerd_config", "containerd_templates", "k3s_default_runtime"),
}


def judge(ctx: Context) -> list[Finding]:
    return [*_container_toolkit_checks(ctx), _default_runtime_check(ctx)]


def _container_toolkit_checks(ctx: Context) -> list[Finding]:
    name = ctx.host.name
    if ctx.host.gpu.count == 0:
        why = "no GPUs declared for this host"
        return [
            skipped("runtime", name, "nvidia-container-toolkit", why),
            skipped("runtime", name, "cdi-spec", why),
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


def _default_runtime_check(ctx: Context) -> Finding:
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
