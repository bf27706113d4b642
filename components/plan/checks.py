"""The verification contract: every check a host must pass after a rollout, by layer (pure).

What is planned here is exactly what verification reports: every planned check gets one result
(pass, fail, or skip with the reason it could not be judged), and verification reports no check
that is not planned. ``render`` writes these lists for review; ``tests/unit`` holds both sides
together over recorded facts.

Check ids have one format, ``<layer>.<name>`` or ``<layer>.<name>:<qualifier>``: the layer is one
of :data:`LAYERS`, the name is a lowercase word with dashes, and the qualifier names the one thing
of several the check is about (a GPU index ``gpu3``, a node label key, an address, a model).
"""

from __future__ import annotations

from dataclasses import dataclass

from components.config.models import HostSpec, StackConfig
from components.plan.cluster import COUNTRY_LABEL, node_labels
from components.plan.host_os import SUPPORTED_OS
from components.plan.kubernetes.spec import RUNTIME_CLASS

# Verification layers, in the order they are judged and reported (see components.verification).
LAYERS = ("host", "driver", "runtime", "cache", "k3s", "inference", "residency")
# The host column of the checks that judge the cluster as a whole rather than one host.
CLUSTER = "cluster"
# Node labels that place workloads by country and region: judged by the residency layer, every
# other label by the k3s layer.
RESIDENCY_LABELS = (
    COUNTRY_LABEL,
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
)
# What NVML is asked about each GPU, one check per GPU each (qualified ``gpu<index>``); a GPU that
# does not support a query gets the check skipped with that reason.
GPU_DEVICE_CHECKS = (
    "persistence-mode",
    "ecc-mode",
    "mig-mode-settled",
    "ecc-uncorrected-volatile",
    "row-remap-pending",
    "row-remap-failure",
    "retired-pages-pending",
    "recovery-action",
    "pcie-width",
    "throttle",
    "thermal-margin",
    "nvlink",
    "fabric",
    "stray-processes",
)
# The time daemon host setup installs (host_steps.BASE_PACKAGES) and enables with the residency
# policy's NTP servers (host-setup/10-base.sh.j2): verification expects this one, running.
TIME_SYNC_UNIT = "chrony"
TIME_SYNC_EXPECTATION = f"{TIME_SYNC_UNIT} active, enabled and synchronised to an NTP server"
TIME_SYNC_RUNNING = f"{TIME_SYNC_UNIT} active and enabled (verification.timeSyncRequired is false)"


def time_sync_expectation(config: StackConfig) -> str:
    """What ``host.time-sync`` holds a host to under the stack's verification settings."""
    return TIME_SYNC_EXPECTATION if config.verification.time_sync_required else TIME_SYNC_RUNNING


# Only pods that name the RuntimeClass get NVIDIA's runtime: as containerd's default it would hand
# the GPUs to any container that asks by environment variable.
NO_DEFAULT_NVIDIA_RUNTIME = (
    f"no {RUNTIME_CLASS}* default runtime (GPU pods name the {RUNTIME_CLASS} RuntimeClass)"
)


def check_id(layer: str, name: str) -> str:
    """The one id format: ``<layer>.<name>[:<qualifier>]`` (the qualifier is part of ``name``)."""
    return f"{layer}.{name}"


def gpu_check(name: str, index: int) -> str:
    """The name of a per-GPU check: ``persistence-mode:gpu3``."""
    return f"{name}:gpu{index}"


def cache_read_expectation(config: StackConfig) -> str:
    """What the cache's read probe must show: the floor the startup probes and the cold-start
    estimates read weights at."""
    floor = config.cache.min_read_mib_per_second
    return f"at least {floor} MiB/s sequential, direct I/O (cache.minReadMibPerSecond)"


@dataclass(frozen=True)
class Check:
    """One expectation: which layer it belongs to, its name (with any qualifier), and the expected
    value as a reviewer reads it."""

    layer: str
    name: str
    expected: str

    @property
    def id(self) -> str:
        return check_id(self.layer, self.name)


def reachable_expectation(host: HostSpec) -> str:
    """What ``host.reachable`` expects of ``host``: SSH to it, presenting its pinned key."""
    if host.ssh.host_key:
        key = host.ssh.host_key
    elif host.ordered:
        key = "the host key pinned on first contact (stack outputs)"
    else:
        key = "the host key pinned in the inventory"
    where = (
        f"{host.address}:{host.ssh.port}"
        if host.address
        else f"the address its {host.source} order returned, port {host.ssh.port}"
    )
    return f"SSH to {where} presenting {key}"


def _host_layer(config: StackConfig, host: HostSpec) -> list[Check]:
    return [
        Check("host", "reachable", reachable_expectation(host)),
        Check("host", "facts-complete", "the fact collection ran to its end"),
        Check("host", "os", " or ".join(SUPPORTED_OS)),
        Check("host", "ssh-password-login", "password and keyboard-interactive both off"),
        Check("host", "ssh-root-login", "prohibit-password or no"),
        Check("host", "time-sync", time_sync_expectation(config)),
    ]


def _driver_layer(config: StackConfig, host: HostSpec) -> list[Check]:
    gpu = host.gpu
    if not gpu.count:
        return [Check("driver", "gpu-count", "0 (no GPUs declared)")]
    limits = config.verification.gpu
    checks = [
        Check("driver", "nvml", f"NVML answering for {gpu.count} x {gpu.model}"),
        Check("driver", "gpu-count", f"{gpu.count} x {gpu.model}"),
        Check("driver", "driver-version", config.nvidia.driver_version),
        Check("driver", "cuda-version", f"a driver supporting CUDA {config.nvidia.cuda_version}"),
        Check("driver", "vbios-uniform", "one VBIOS version on every GPU"),
    ]
    for index in range(gpu.count):
        checks += [
            Check("driver", gpu_check(name, index), _GPU_EXPECTATIONS[name])
            for name in GPU_DEVICE_CHECKS
        ]
    checks.append(Check("driver", "xid-fatal", f"no XID in {sorted(limits.fatal_xids)} since boot"))
    return checks


_GPU_EXPECTATIONS = {
    "persistence-mode": "enabled",
    "ecc-mode": "enabled, nothing pending",
    "mig-mode-settled": "current == pending",
    "ecc-uncorrected-volatile": "within verification.gpu.maxUncorrectedVolatileEcc",
    "row-remap-pending": "within verification.gpu.maxPendingRowRemaps",
    "row-remap-failure": "no (a failure means the GPU needs service)",
    "retired-pages-pending": "none pending",
    "recovery-action": "none",
    "pcie-width": "the link's maximum width",
    "throttle": "no HW slowdown, thermal slowdown or power brake",
    "thermal-margin": "at least verification.gpu.minThermalMarginC below slowdown",
    "nvlink": "all links up",
    "fabric": "state 3 (completed), status 0",
    "stray-processes": "no compute process outside Kubernetes pods",
}


# A check that does not apply to a host (a CPU node's container toolkit, K3s not installed) is
# still planned, and verification reports it skipped with the reason: every layer shows up for
# every host, and a reader sees why nothing was judged there.


def _runtime_layer(config: StackConfig) -> list[Check]:
    return [
        Check("runtime", "nvidia-container-toolkit", config.nvidia.container_toolkit_version),
        Check("runtime", "cdi-spec", "/var/run/cdi/nvidia.yaml"),
        Check("runtime", "default-runtime", NO_DEFAULT_NVIDIA_RUNTIME),
    ]


def cache_write_expectation(config: StackConfig) -> str:
    """What the cache's write probe must show: root creates and removes a file under the mount
    point (the weights warmer writes the copies there)."""
    return f"root creates and removes a file under {config.cache.mount_point}"


def _cache_layer(config: StackConfig, host: HostSpec) -> list[Check]:
    cache = config.cache
    mounted = Check("cache", "mounted", f"{cache.filesystem} at {cache.mount_point}")
    writable = Check("cache", "writable", cache_write_expectation(config))
    if not host.nvme:
        return [mounted, writable]
    checks = [
        mounted,
        writable,
        Check("cache", "noatime", "noatime"),
        Check(
            "cache",
            "persistent",
            f"/etc/fstab mounts the filesystem by UUID at {cache.mount_point}",
        ),
        Check("cache", "read-speed", cache_read_expectation(config)),
    ]
    if len(host.nvme) > 1:
        members = ", ".join(d.id for d in host.nvme)
        checks.append(Check("cache", "members", f"raid0 of {len(host.nvme)} drives: {members}"))
    return checks


def _k3s_layer(config: StackConfig, host: HostSpec) -> list[Check]:
    checks = [
        Check("k3s", "version", config.k3s.version),
        Check("k3s", "node-ready", "True"),
    ]
    for key, value in sorted(node_labels(config, host).items()):
        if key not in RESIDENCY_LABELS:
            checks.append(Check("k3s", f"label:{key}", value))
    return checks


def _inference_layer() -> list[Check]:
    return [
        Check("inference", "telemetry-off", "every inference container opts out of telemetry"),
        Check("inference", "object-store", "only allowed object-store endpoints"),
    ]


def _residency_layer(config: StackConfig, host: HostSpec) -> list[Check]:
    policy = config.residency
    countries = ", ".join(sorted(policy.allowed_countries))
    labels = node_labels(config, host)
    checks = [Check("residency", "declared-country", f"{host.country} in {{{countries}}}")]
    checks += [Check("residency", f"label:{key}", labels[key]) for key in RESIDENCY_LABELS]
    checks.append(
        Check(
            "residency",
            "geoip-database-fresh",
            f"DB-IP Lite Country, at most {config.verification.geoip_max_age_days} days old",
        )
    )
    checks += [
        Check("residency", f"egress-ip:{ip}", f"geolocates to one of {{{countries}}}")
        for ip in host.egress_ips
    ]
    checks += [
        Check(
            "residency", "addresses", f"every global address geolocates to one of {{{countries}}}"
        ),
        Check("residency", "dns-resolvers", "only " + ", ".join(policy.dns_resolvers)),
        Check("residency", "ntp-servers", "only " + ", ".join(policy.ntp_servers)),
        Check("residency", "registry-mirrors", "only " + ", ".join(policy.allowed_registries)),
        Check("residency", "images", "images only from allowed registries or their mirrors"),
        Check("residency", "firewall", "inbound policy drop"),
    ]
    if policy.egress_allowlist is not None:
        checks.append(Check("residency", "egress-allowlist", "outbound only to the allowlist"))
        if config.verification.egress_canary:
            checks.append(Check("residency", "egress-canary", "blocked"))
    return checks


def host_checks(config: StackConfig, host: HostSpec) -> list[Check]:
    """Every check verification reports for ``host``, in layer order."""
    return [
        *_host_layer(config, host),
        *_driver_layer(config, host),
        *_runtime_layer(config),
        *_cache_layer(config, host),
        *_k3s_layer(config, host),
        *_inference_layer(),
        *_residency_layer(config, host),
    ]


def cluster_checks(config: StackConfig) -> list[Check]:
    """Every check verification reports for the cluster as a whole (host column
    :data:`CLUSTER`): the inference objects as the API server holds them; none when the stack
    serves no model."""
    models = config.inference.models
    if not models:
        return []
    checks = [Check("inference", "cluster-api", "the API server answers through the kubeconfig")]
    for model in models:
        checks += [
            Check(
                "inference",
                f"scale-to-zero:{model.name}",
                f"minReplicaCount 0, scaling Deployment {model.name}, trigger model {model.served}",
            ),
            Check("inference", f"telemetry-off:{model.name}", "every container opts out"),
        ]
    checks += [
        Check("inference", "images", "digests (@sha256:) from allowed registries only"),
        Check("inference", "placement", "model pods only on nodes in allowed countries"),
        Check("inference", "qos", "Burstable or Guaranteed model pods (CPU and memory requested)"),
    ]
    if config.k3s.install:
        checks.append(Check("inference", "traefik-timeouts", "the edge timeouts the plan sets"))
    return checks
