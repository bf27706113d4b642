"""Ordered host-setup steps for one host: rendered scripts, content hashes, and what they need.

A step is data: the executor runs its script in one of the protocol's modes and reads the lines
the script prints back (``components.plan.step_protocol``). Each step owns the fact keys it
prints: no two steps publish the same key, so a host's facts merge without losing one.
Nothing here touches a host; this is what ``sovereign render`` writes and unit tests inspect.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml
from sovereign_weights.layout import CACHE_FILESYSTEM_MARKER

from components.config.catalog import GPU_MODELS
from components.config.models import (
    CacheSpec,
    HostSpec,
    StackConfig,
    host_address,
    host_key,
    pending_address,
)
from components.config.residency import normalize_registry, registry_allowed
from components.plan.cluster import (
    K3S_API_PORT,
    api_endpoint,
    api_url,
    first_server,
    node_labels,
)
from components.plan.templates import render_template


@dataclass(frozen=True)
class StepPlan:
    """One step of one host, ready to run."""

    host: str
    name: str  # "40-nvme-cache", from the template file name
    script: str
    pins: dict[str, str] = field(default_factory=dict)
    secret_env: tuple[str, ...] = ()  # environment variables the executor fills from secrets
    has_teardown: bool = False
    reboot_allowed: bool = False
    # files delivered with the script into $SOVEREIGN_PAYLOAD_DIR (name -> content)
    payloads: dict[str, bytes] = field(default_factory=dict)
    # steps on other hosts that must have finished first: (host, step)
    waits_for: tuple[tuple[str, str], ...] = ()
    # what the step reads at run time rather than from its script: the addresses of the stack's
    # hosts, an ordered machine's known only once its order returns (name -> value; see
    # :func:`runtime_env`). Not in the content hash: the host step compares it on its own.
    env: dict[str, str] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256(self.script.encode())
        for key in sorted(self.pins):
            digest.update(f"\0{key}={self.pins[key]}".encode())
        for name in sorted(self.payloads):
            digest.update(
                f"\0payload:{name}=".encode() + hashlib.sha256(self.payloads[name]).digest()
            )
        return digest.hexdigest()

    def payloads_base64(self) -> dict[str, str]:
        return {name: base64.b64encode(data).decode() for name, data in self.payloads.items()}

    @property
    def order(self) -> int:
        return int(self.name[:2])


@dataclass(frozen=True)
class _StepBuilder:
    template: str
    applies: Callable[[StackConfig, HostSpec], bool]
    variables: Callable[[StackConfig, HostSpec], dict[str, Any]]
    pins: Callable[[StackConfig, HostSpec], dict[str, str]] = lambda _c, _h: {}
    secret_env: tuple[str, ...] = ()
    has_teardown: bool = False
    reboot_allowed: bool = False
    payloads: Callable[[StackConfig, HostSpec], dict[str, bytes]] = lambda _c, _h: {}
    waits_for: Callable[[StackConfig, HostSpec], tuple[tuple[str, str], ...]] = lambda _c, _h: ()
    # the values the script takes from its environment at run time (hosts' addresses)
    runtime_env: Callable[[StackConfig, HostSpec], dict[str, str]] = lambda _c, _h: {}


def _always(_config: StackConfig, _host: HostSpec) -> bool:
    return True


# K3s's documented minimum for a node (agent): 512 MB of RAM. Real GPU servers have far more; the
# floor only catches a wrong host (a rescue system, a tiny VM) before anything is installed.
MIN_MEMORY_MIB = 512


def _preflight_vars(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    gpu = GPU_MODELS.get(host.gpu.model or "")
    return {
        "expected_gpu_count": host.gpu.count,
        "expected_gpu_model": host.gpu.model or "none",
        "expected_gpu_device_id": gpu.pci_device_id if gpu else "",
        "nvme_ids": [d.id for d in host.nvme],
        "min_memory_mib": MIN_MEMORY_MIB,
    }


# Installed on every host; the lab image carries them so a lab rollout installs nothing.
BASE_PACKAGES = (
    "ca-certificates",
    "curl",
    "gnupg",
    "chrony",
    "kmod",
    "iproute2",
    "pciutils",
    "mdadm",
    "xfsprogs",
    "nvme-cli",
    "nftables",
)

# Kernel settings for K3s nodes (forwarding, bridged traffic through netfilter) and for inference
# servers (many inotify watches from containerd and kubelet, large memory maps).
SYSCTL = {
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    "fs.inotify.max_user_instances": "8192",
    "fs.inotify.max_user_watches": "524288",
    "vm.max_map_count": "262144",
    "vm.swappiness": "1",
}
KERNEL_MODULES = ("overlay", "br_netfilter")
# sshd's transport: only algorithms ssh-audit 3.x does not fail, that OpenSSH 8.9 (Ubuntu 22.04),
# 9.2 (Debian 12) and 9.6 (Ubuntu 24.04) all know (sshd refuses a config naming an unknown one),
# and that the executor (paramiko >= 3.4) and the lab's ssh client share with the host.
SSHD_KEX_ALGORITHMS = (
    # hybrid post-quantum exchange for OpenSSH clients (>= 8.5); the plain name arrived in 9.9
    "sntrup761x25519-sha512@openssh.com",
    # paramiko has no post-quantum exchange an OpenSSH before 9.9 offers: X25519 is what it uses
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
)
SSHD_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
# encrypt-then-MAC only, no SHA-1, no 64-bit tags
SSHD_MACS = (
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "umac-128-etm@openssh.com",
)
# no NIST-curve ECDSA, no SHA-1 ssh-rsa signatures
SSHD_HOST_KEY_ALGORITHMS = (
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-ed25519",
    "rsa-sha2-512-cert-v01@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256-cert-v01@openssh.com",
    "rsa-sha2-256",
)
# Host key types sshd can still offer under SSHD_HOST_KEY_ALGORITHMS; a host without one would be
# left offering nothing its pinned fingerprint matches, so the step refuses it instead.
SSHD_KEPT_HOST_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
# Diffie-Hellman group-exchange moduli smaller than this are removed from /etc/ssh/moduli.
SSHD_MIN_MODULUS_BITS = 3072
SSHD_SETTINGS: tuple[tuple[str, str], ...] = (
    ("PasswordAuthentication", "no"),
    ("KbdInteractiveAuthentication", "no"),
    ("PermitRootLogin", "prohibit-password"),
    ("PermitEmptyPasswords", "no"),
    ("X11Forwarding", "no"),
    ("MaxAuthTries", "4"),
    ("KexAlgorithms", ",".join(SSHD_KEX_ALGORITHMS)),
    ("Ciphers", ",".join(SSHD_CIPHERS)),
    ("MACs", ",".join(SSHD_MACS)),
    ("HostKeyAlgorithms", ",".join(SSHD_HOST_KEY_ALGORITHMS)),
)
# `sshd -T` prints PermitRootLogin under an alias that differs across OpenSSH releases; the other
# settings it prints exactly as written (directive in lower case).
_SSHD_NOT_COMPARED = frozenset({"PermitRootLogin"})


def sshd_dropin_content() -> str:
    """The sshd drop-in: logins by key only, root by key only, the transport restricted."""
    lines = ["# Managed by sovereign-inference: keys only, root by key only, modern algorithms."]
    lines += [f"{directive} {value}" for directive, value in SSHD_SETTINGS]
    return "\n".join(lines)


def sshd_effective_settings() -> tuple[str, ...]:
    """The lines ``sshd -T`` must print once the drop-in is in force (no earlier file overrides)."""
    return tuple(
        f"{directive.lower()} {value}"
        for directive, value in SSHD_SETTINGS
        if directive not in _SSHD_NOT_COMPARED
    )


def _base_vars(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    labels = node_labels(config, host)
    return {
        "node_labels_content": "\n".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "packages": BASE_PACKAGES,
        "ntp_servers": config.residency.ntp_servers,
        "dns_resolvers": config.residency.dns_resolvers,
        "sysctl_content": "\n".join(f"{k} = {v}" for k, v in SYSCTL.items()),
        "kernel_modules": KERNEL_MODULES,
        "sshd_content": sshd_dropin_content(),
        "sshd_effective": sshd_effective_settings(),
        "sshd_host_key_types": SSHD_KEPT_HOST_KEY_TYPES,
        # ssh-keygen's moduli files count a modulus's size as bits - 1 (3071 for 3072 bits)
        "sshd_min_modulus_size_field": SSHD_MIN_MODULUS_BITS - 1,
    }


NVIDIA_REPO_BASE = "https://developer.download.nvidia.com/compute/cuda/repos"
NVIDIA_TOOLKIT_REPO = "https://nvidia.github.io/libnvidia-container"


def _has_gpus(_config: StackConfig, host: HostSpec) -> bool:
    return host.gpu.count > 0


def _driver_vars(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    nvidia = config.nvidia
    return {
        "nvidia_repo_base": NVIDIA_REPO_BASE,
        "driver_version": nvidia.driver_version,
        "driver_branch": nvidia.driver_branch,
        "open_modules": nvidia.open_kernel_modules,
        "fabric_manager": nvidia.fabric_manager,
        "expected_gpu_count": host.gpu.count,
    }


def _driver_pins(config: StackConfig, _host: HostSpec) -> dict[str, str]:
    return {"nvidia.driverVersion": config.nvidia.driver_version}


# nvidia-container-runtime settings (top-level keys of its config.toml at the pinned toolkit):
# an unprivileged container (no CAP_SYS_ADMIN) gets GPUs only from the device list the device
# plugin mounts for the GPUs it was allocated, never from an NVIDIA_VISIBLE_DEVICES it sets itself.
# The device plugin chart's deviceListStrategy must match (components.plan.kubernetes.charts).
CONTAINER_TOOLKIT_SETTINGS = {
    "accept-nvidia-visible-devices-envvar-when-unprivileged": "false",
    "accept-nvidia-visible-devices-as-volume-mounts": "true",
}


def _cuda_vars(config: StackConfig, _host: HostSpec) -> dict[str, Any]:
    nvidia = config.nvidia
    major, minor = nvidia.cuda_version.split(".")[:2]
    return {
        "toolkit_settings": [f"{k}={v}" for k, v in CONTAINER_TOOLKIT_SETTINGS.items()],
        "nvidia_repo_base": NVIDIA_REPO_BASE,
        "cuda_version": f"{major}.{minor}",
        "cuda_package": f"cuda-toolkit-{major}-{minor}",
        "toolkit_version": nvidia.container_toolkit_version.split("-")[0],
        "toolkit_repo": NVIDIA_TOOLKIT_REPO,
    }


def _cuda_pins(config: StackConfig, _host: HostSpec) -> dict[str, str]:
    return {
        "nvidia.cudaVersion": config.nvidia.cuda_version,
        "nvidia.containerToolkitVersion": config.nvidia.container_toolkit_version,
    }


K3S_SOURCE = "https://raw.githubusercontent.com/k3s-io/k3s"


def k3s_installer_url(version: str) -> str:
    """The install script as released with ``version`` (``install.sh`` at its tag): a pinned
    sha256 holds for it, while get.k3s.io serves whatever the main branch has today."""
    # "+" in a tag (v1.31.6+k3s1) is sent encoded, so no server reads it as a space
    return f"{K3S_SOURCE}/{quote(version, safe='')}/install.sh"


K3S_MIRRORED_REGISTRIES = ("docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "nvcr.io")


def k3s_role(config: StackConfig, host: HostSpec) -> str:
    """``server-init`` for the first server, ``server-join`` for the others, else ``agent``."""
    if host.role == "agent":
        return "agent"
    return "server-init" if host.name == first_server(config).name else "server-join"


def k3s_config(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    """The content of /etc/rancher/k3s/config.yaml for this host, in file order: the settings
    before the addresses (the script carries them), what names hosts' addresses (given to the step
    at run time, :func:`k3s_address_config`), then the settings after them."""
    head, tail = k3s_static_config(config, host)
    return {**head, **k3s_address_config(config, host), **tail}


def k3s_address_config(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    """The part of the K3s config that names hosts' addresses: the server a joining node joins,
    and the names in a server's certificate."""
    role = k3s_role(config, host)
    settings: dict[str, Any] = {}
    if role != "server-init":
        settings["server"] = api_url(host_address(first_server(config)))
    if role != "agent":
        settings["tls-san"] = _each_once(
            (*config.k3s.tls_sans, api_endpoint(config), host_address(host))
        )
    return settings


def k3s_static_config(config: StackConfig, host: HostSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """The parts of the K3s config no address is in, before and after the addresses' place (so
    the file reads the same whichever way its addresses arrive)."""
    role = k3s_role(config, host)
    head: dict[str, Any] = {
        "node-name": host.name,
        "token-file": "/etc/rancher/k3s/token",
        "node-label": [f"{k}={v}" for k, v in node_labels(config, host).items()],
    }
    if host.taints:
        head["node-taint"] = list(host.taints)
    if role == "server-init":
        head["cluster-init"] = True
    tail: dict[str, Any] = {}
    if role != "agent":
        tail["secrets-encryption"] = config.k3s.secrets_encryption
        tail["cluster-cidr"] = config.k3s.cluster_cidr
        tail["service-cidr"] = config.k3s.service_cidr
        tail["write-kubeconfig-mode"] = "0600"
    # no "default-runtime": a container gets the nvidia runtime only through the RuntimeClass,
    # never by default, so an image that sets NVIDIA_VISIBLE_DEVICES=all sees no GPU it did not ask for
    return head, tail


def _yaml_block(settings: dict[str, Any]) -> str:
    return yaml.safe_dump(settings, sort_keys=False).rstrip() if settings else ""


def _each_once(names: tuple[str, ...]) -> list[str]:
    """``names`` in order, each host name or address once (IPv6 forms and case compared)."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(host_key(name), name)
    return list(seen.values())


def k3s_registries(config: StackConfig) -> dict[str, Any]:
    """Pull every public registry through the first allowed (EU) registry as a mirror."""
    mirror = f"https://{normalize_registry(config.residency.allowed_registries[0])}"
    return {
        "mirrors": {
            name: {"endpoint": [mirror]}
            for name in K3S_MIRRORED_REGISTRIES
            if not registry_allowed(name, config.residency.allowed_registries)
        }
    }


def _k3s_vars(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    head, tail = k3s_static_config(config, host)
    return {
        "k3s_role": k3s_role(config, host),
        "k3s_version": config.k3s.version,
        "installer_url": k3s_installer_url(config.k3s.version),
        "installer_sha256": config.k3s.installer_sha256 or "",
        "airgap_bundle": config.k3s.airgap_bundle or "",
        "config_head": _yaml_block(head),
        "config_tail": _yaml_block(tail),
        "registries_content": yaml.safe_dump(k3s_registries(config), sort_keys=False).rstrip(),
        "ready_timeout_seconds": 300,
    }


def _installs_k3s(config: StackConfig, _host: HostSpec) -> bool:
    return config.k3s.install


def _k3s_pins(config: StackConfig, _host: HostSpec) -> dict[str, str]:
    return {"k3s.version": config.k3s.version}


def _k3s_waits_for(config: StackConfig, host: HostSpec) -> tuple[tuple[str, str], ...]:
    first = first_server(config)
    return () if host.name == first.name else ((first.name, "50-k3s"),)


def _k3s_runtime_env(config: StackConfig, host: HostSpec) -> dict[str, str]:
    return {"SOVEREIGN_K3S_ADDRESSES": _yaml_block(k3s_address_config(config, host))}


def cluster_node_addresses(config: StackConfig) -> list[str]:
    """The IP addresses of the stack's hosts, IPv4 first, each once, in address order; an
    ordered host's placeholder (before its order returns) kept in sight after them. A host given
    by DNS name is left out: the rules take addresses, resolved by nobody."""
    nodes: dict[int, set[str]] = {4: set(), 6: set()}
    pending = []
    for host in config.hosts:
        address = host_address(host)
        version = _ip_version(address)
        if version:
            nodes[version].add(str(ipaddress.ip_address(address)))
        elif address == pending_address(host.name):
            pending.append(address)
    ordered = [sorted(nodes[v], key=ipaddress.ip_address) for v in (4, 6)]
    return [*ordered[0], *ordered[1], *pending]


def _firewall_runtime_env(config: StackConfig, _host: HostSpec) -> dict[str, str]:
    return {"SOVEREIGN_CLUSTER_NODES": " ".join(cluster_node_addresses(config))}


def _firewall_vars(config: StackConfig, this_host: HostSpec) -> dict[str, Any]:
    """Addresses and ranges for the nftables sets, split by family: an IPv6 element in an
    ``ipv4_addr`` set makes the whole ruleset fail to load."""
    # only servers serve the API; the ranges outside the cluster reach it there
    api_clients = config.k3s.api_allowed_cidrs if this_host.role == "server" else ()
    networks = (config.k3s.cluster_cidr, config.k3s.service_cidr)
    allowlist = config.residency.egress_allowlist
    # the resolvers are reachable whenever the allowlist is on: DNS must keep working
    egress = [*(allowlist or ()), *config.residency.dns_resolvers]
    ntp = config.residency.ntp_servers
    return {
        "api_port": K3S_API_PORT,
        "api_clients_v4": set_elements(api_clients, 4),
        "api_clients_v6": set_elements(api_clients, 6),
        "cluster_networks_v4": [n for n in networks if _ip_version(n) == 4],
        "cluster_networks_v6": [n for n in networks if _ip_version(n) == 6],
        "egress_enabled": allowlist is not None,
        "egress_v4": set_elements(egress, 4),
        "egress_v6": set_elements(egress, 6),
        # addresses go straight into the rules; names are resolved on the host
        "ntp_v4": [n for n in ntp if _ip_version(n) == 4],
        "ntp_v6": [n for n in ntp if _ip_version(n) == 6],
        "ntp_names": [n for n in ntp if _ip_version(n) is None],
        "required_destinations": egress_destinations(config),
    }


def egress_destinations(config: StackConfig) -> list[str]:
    """Hosts a node must reach once egress is limited (the apt mirrors aside: the firewall step
    reads those from the host): the allowed registries and the object stores' hosts."""
    residency = config.residency
    hosts = [*residency.allowed_registries]
    hosts += [urlsplit(e).hostname or "" for e in residency.allowed_object_store_endpoints]
    return _each_once(tuple(h for h in hosts if h))


def set_elements(entries: Iterable[str], version: int) -> list[str]:
    """The addresses and ranges of one family merged into disjoint ranges: nft refuses an
    interval set whose elements overlap (a resolver inside an allowed range, say)."""
    networks = [ipaddress.ip_network(e) for e in entries if _ip_version(e) == version]
    merged = ipaddress.collapse_addresses(networks)  # type: ignore[type-var]
    return [str(n) for n in merged]


def _ip_version(value: str) -> int | None:
    """4 or 6 for an address or CIDR, None for a host name."""
    try:
        return ipaddress.ip_network(value, strict=False).version
    except ValueError:
        return None


PROBE_DIR = "/opt/sovereign/probe"


def pynvml_source() -> tuple[str, bytes]:
    """The nvidia-ml-py version and module installed here, delivered to hosts as a payload."""
    import pynvml  # noqa: PLC0415 - a plain module file; only its source is needed

    version = metadata.version("nvidia-ml-py")
    return version, Path(pynvml.__file__).read_bytes()


def _probe_vars(_config: StackConfig, _host: HostSpec) -> dict[str, Any]:
    version, source = pynvml_source()
    return {
        "probe_dir": PROBE_DIR,
        "pynvml_version": version,
        "pynvml_sha256": hashlib.sha256(source).hexdigest(),
    }


def _probe_payloads(_config: StackConfig, _host: HostSpec) -> dict[str, bytes]:
    return {"pynvml.py": pynvml_source()[1]}


# The label every cache filesystem gets: an existing filesystem is adopted only when it carries it.
CACHE_FS_LABEL = "sov-weights"


def _cache_vars_for(cache: CacheSpec, host: HostSpec) -> dict[str, Any]:
    return {
        "nvme_ids": [d.id for d in host.nvme],
        "wipeable_ids": [d.id for d in host.nvme if d.wipe],
        "array_name": cache.array_name,
        "raid_level": cache.raid_level,
        "filesystem": cache.filesystem,
        "fs_label": CACHE_FS_LABEL,
        "mount_point": cache.mount_point,
        "cache_marker": CACHE_FILESYSTEM_MARKER,
    }


def _cache_pins_for(cache: CacheSpec) -> dict[str, str]:
    return {"cache.filesystem": cache.filesystem, "cache.mountPoint": cache.mount_point}


def _cache_vars(config: StackConfig, host: HostSpec) -> dict[str, Any]:
    return _cache_vars_for(config.cache, host)


def _cache_pins(config: StackConfig, _host: HostSpec) -> dict[str, str]:
    return _cache_pins_for(config.cache)


CACHE_TEMPLATE = "40-nvme-cache.sh.j2"


def render_cache_step(host: HostSpec, cache: CacheSpec) -> StepPlan:
    """The cache step alone, for ``NvmeWeightCache`` used outside a whole stack."""
    if not host.nvme:
        raise ValueError(f"{host.name}: no nvme drives listed, so there is no cache to build")
    name = CACHE_TEMPLATE.removesuffix(".sh.j2")
    script = render_template(
        CACHE_TEMPLATE, step_name=name, host_name=host.name, **_cache_vars_for(cache, host)
    )
    return StepPlan(
        host=host.name, name=name, script=script, pins=_cache_pins_for(cache), has_teardown=True
    )


STEP_BUILDERS: tuple[_StepBuilder, ...] = (
    _StepBuilder("00-preflight.sh.j2", _always, _preflight_vars),
    _StepBuilder("10-base.sh.j2", _always, _base_vars),
    _StepBuilder(
        "20-nvidia-driver.sh.j2", _has_gpus, _driver_vars, pins=_driver_pins, reboot_allowed=True
    ),
    _StepBuilder("30-cuda-container-toolkit.sh.j2", _has_gpus, _cuda_vars, pins=_cuda_pins),
    _StepBuilder(
        CACHE_TEMPLATE,
        lambda _c, h: bool(h.nvme),
        _cache_vars,
        pins=_cache_pins,
        has_teardown=True,
    ),
    _StepBuilder(
        "50-k3s.sh.j2",
        _installs_k3s,
        _k3s_vars,
        pins=_k3s_pins,
        secret_env=("K3S_TOKEN",),
        has_teardown=True,
        waits_for=_k3s_waits_for,
        runtime_env=_k3s_runtime_env,
    ),
    _StepBuilder(
        "60-firewall.sh.j2",
        _always,
        _firewall_vars,
        has_teardown=True,
        runtime_env=_firewall_runtime_env,
    ),
    _StepBuilder("70-probe-env.sh.j2", _always, _probe_vars, payloads=_probe_payloads),
)


def render_host_steps(
    config: StackConfig, host: HostSpec, only: tuple[str, ...] | None = None
) -> list[StepPlan]:
    """Every step that applies to ``host`` (or just those named in ``only``), in run order."""
    steps = []
    for builder in STEP_BUILDERS:
        name = builder.template.removesuffix(".sh.j2")
        if only is not None and name not in only:
            continue
        if not builder.applies(config, host):
            continue
        script = render_template(
            builder.template,
            step_name=name,
            host_name=host.name,
            **builder.variables(config, host),
        )
        steps.append(
            StepPlan(
                host=host.name,
                name=name,
                script=script,
                pins=builder.pins(config, host),
                secret_env=builder.secret_env,
                has_teardown=builder.has_teardown,
                reboot_allowed=builder.reboot_allowed,
                payloads=builder.payloads(config, host),
                waits_for=builder.waits_for(config, host),
                env=builder.runtime_env(config, host),
            )
        )
    return sorted(steps, key=lambda s: s.order)


def runtime_env(config: StackConfig, host: HostSpec) -> dict[str, dict[str, str]]:
    """What each of the host's steps reads from its environment at run time, by step name: the
    stack's addresses, rendered apart from the scripts so that no script carries a value known
    only once an order has returned (``config`` holds the orders' addresses by then)."""
    return {
        builder.template.removesuffix(".sh.j2"): builder.runtime_env(config, host)
        for builder in STEP_BUILDERS
        if builder.applies(config, host)
    }
