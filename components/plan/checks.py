"""What each host must show after a rollout, by verification layer; the suites evaluate these."""

from __future__ import annotations

from dataclasses import dataclass

from components.config.models import HostSpec, StackConfig
from components.plan.cluster import node_labels
from components.plan.kubernetes.spec import RUNTIME_CLASS

# Verification layers, in the order they are judged and reported (see components.verification).
LAYERS = ("host", "driver", "runtime", "cache", "k3s", "inference", "residency")
# Only pods that name the RuntimeClass get NVIDIA's runtime: as containerd's default it would hand
# the GPUs to any container that asks by environment variable.
NO_DEFAULT_NVIDIA_RUNTIME = (
    f"no {RUNTIME_CLASS}* default runtime (GPU pods name the {RUNTIME_CLASS} RuntimeClass)"
)


def cache_read_expectation(config: StackConfig) -> str:
    """What the cache's read probe must show: the floor the startup probes and the cold-start
    estimates read weights at."""
    floor = config.cache.min_read_mib_per_second
    return f"at least {floor} MiB/s sequential, direct I/O (cache.minReadMibPerSecond)"


@dataclass(frozen=True)
class Check:
    """One expectation: which layer it belongs to, a stable id, and the expected value."""

    layer: str
    name: str
    expected: str

    @property
    def id(self) -> str:
        return f"{self.layer}.{self.name}"


def host_checks(config: StackConfig, host: HostSpec) -> list[Check]:
    checks = [
        Check("host", "os", "debian-12, ubuntu-22.04 or ubuntu-24.04"),
        Check("host", "ssh-host-key", host.ssh.host_key or "pinned from the inventory"),
    ]
    if host.gpu.count:
        checks += [
            Check("driver", "gpu-count", f"{host.gpu.count} x {host.gpu.model}"),
            Check("driver", "driver-version", config.nvidia.driver_version),
            Check("driver", "cuda-version", config.nvidia.cuda_version),
            Check("driver", "persistence-mode", "enabled on every GPU"),
            Check("driver", "ecc-uncorrected-volatile", "0 on every GPU"),
            Check("driver", "xid-fatal", "none since boot"),
            Check("runtime", "nvidia-container-toolkit", config.nvidia.container_toolkit_version),
        ]
    if host.nvme:
        checks += [
            Check("cache", "mounted", f"{config.cache.filesystem} at {config.cache.mount_point}"),
            Check("cache", "members", ", ".join(d.id for d in host.nvme)),
            Check("cache", "persistent", "in /etc/fstab by UUID with noatime"),
            Check("cache", "read-speed", cache_read_expectation(config)),
        ]
    if config.k3s.install:
        checks.append(Check("runtime", "default-runtime", NO_DEFAULT_NVIDIA_RUNTIME))
    checks.append(Check("k3s", "version", config.k3s.version))
    for key, value in sorted(node_labels(config, host).items()):
        checks.append(Check("k3s", f"label:{key}", value))
    policy = config.residency
    countries = ", ".join(sorted(policy.allowed_countries))
    checks.append(Check("residency", "declared-country", f"{host.country} in {{{countries}}}"))
    for ip in host.egress_ips:
        checks.append(
            Check("residency", f"egress-ip:{ip}", f"geolocates to one of {{{countries}}}")
        )
    checks.append(Check("residency", "dns-resolvers", ", ".join(policy.dns_resolvers)))
    checks.append(Check("residency", "ntp-servers", ", ".join(policy.ntp_servers)))
    checks.append(Check("residency", "registries", ", ".join(policy.allowed_registries)))
    return checks
