#!/usr/bin/env bash
# Read-only fact collection for post-deploy verification: one run per host, one SSH connection.
# The one write: on a cache that holds no file large enough to time a read, the cache_read
# section writes a file for it there and removes it.
# Prints "==== <section>" headers; the verifying machine parses and judges (facts.py).
# Inputs (environment): CACHE_MOUNT_POINT, CACHE_READ_PROBE_MIB, CACHE_READ_PROBE_MIN_MIB,
# CACHE_READ_PROBE_SECONDS, PROBE_DIR, CANARY (host:port or empty),
# K3S_CONTAINERD_DIR (where K3s writes containerd's config), K3S_CONTAINERD_TEMPLATES (the
# override templates K3s reads there, space-separated).
set -uo pipefail
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

section() { printf '\n==== %s\n' "$1"; }

section os
# shellcheck disable=SC1091
(. /etc/os-release && echo "${ID}-${VERSION_ID:-}")
section kernel
uname -r
section boot_id
cat /proc/sys/kernel/random/boot_id
section sshd
sshd -T 2>/dev/null | grep -E '^(port|passwordauthentication|kbdinteractiveauthentication|permitrootlogin) '
section node_labels
cat /etc/sovereign/node-labels 2>/dev/null
section cache_mount
findmnt -n -o SOURCE,FSTYPE,OPTIONS,UUID --mountpoint "${CACHE_MOUNT_POINT}" 2>/dev/null
section cache_fstab
awk -v mp="${CACHE_MOUNT_POINT}" '$2 == mp' /etc/fstab
section cache_read
# The cache's sequential read speed with direct I/O (through the page cache it would be memory's):
# the first CACHE_READ_PROBE_MIB of a file of a complete copy (never under a dot entry: partial
# fetches are preallocated, and unwritten extents read as zeros without touching the drives),
# read-only; on a cache without one, of a file of random bytes written for it (a quarter of the
# free space at most) and removed. Each dd stops after CACHE_READ_PROBE_SECONDS and reports what
# it moved until then.
if findmnt -n --mountpoint "${CACHE_MOUNT_POINT}" >/dev/null 2>&1; then
  (
    probe=$(find "${CACHE_MOUNT_POINT}" -xdev -mindepth 1 -maxdepth 8 -name '.*' -prune -o \
      -type f -size +"$((CACHE_READ_PROBE_MIB - 1))"M -print -quit 2>/dev/null)
    if [ -n "${probe}" ]; then
      echo "source existing"
    else
      free_mib=$(df -Pm "${CACHE_MOUNT_POINT}" 2>/dev/null | awk 'NR == 2 {print $4}')
      size_mib=$((${free_mib:-0} / 4))
      if [ "${size_mib}" -gt "${CACHE_READ_PROBE_MIB}" ]; then
        size_mib=${CACHE_READ_PROBE_MIB}
      fi
      if [ "${size_mib}" -lt "${CACHE_READ_PROBE_MIN_MIB}" ]; then
        echo "not-measured only ${free_mib:-0} MiB free on the cache"
        exit 0
      fi
      probe="${CACHE_MOUNT_POINT}/.sovereign-read-probe.$$"
      trap 'rm -f "${probe}"' EXIT
      echo "source written"
      timeout -s INT "${CACHE_READ_PROBE_SECONDS}" dd if=/dev/urandom of="${probe}" bs=1M \
        count="${size_mib}" iflag=fullblock oflag=direct conv=fsync status=none 2>&1 |
        sed 's/^/write /'
    fi
    timeout -s INT "${CACHE_READ_PROBE_SECONDS}" dd if="${probe}" of=/dev/null bs=16M \
      count="$((CACHE_READ_PROBE_MIB / 16))" iflag=direct 2>&1
  )
fi
section mdstat
cat /proc/mdstat 2>/dev/null
section resolv_conf
cat /etc/resolv.conf 2>/dev/null
section resolved_dns
if systemctl is-active --quiet systemd-resolved 2>/dev/null; then
  resolvectl dns 2>/dev/null
fi
section ntp_sources
chronyc -n sources 2>/dev/null | awk 'NR > 2 {print $2}'
section ntp_config
grep -hE '^(server|pool) ' /etc/chrony/chrony.conf /etc/chrony/sources.d/*.sources 2>/dev/null
section addresses
ip -o addr show scope global 2>/dev/null | awk '{print $4}'
section firewall
nft list table inet sovereign 2>/dev/null
section egress_canary
if [ -n "${CANARY:-}" ]; then
  if timeout 5 bash -c "exec 3<>/dev/tcp/${CANARY%:*}/${CANARY##*:}" 2>/dev/null; then
    echo connected
  else
    echo blocked
  fi
fi
section k3s_version
if [ -x /usr/local/bin/k3s ]; then
  /usr/local/bin/k3s --version 2>/dev/null | head -1
fi
section k3s_registries
cat /etc/rancher/k3s/registries.yaml 2>/dev/null
section k3s_node
if [ -f /etc/rancher/k3s/k3s.yaml ]; then
  /usr/local/bin/k3s kubectl get node "$(hostname)" -o json 2>/dev/null
fi
section inference_pods
if [ -f /etc/rancher/k3s/k3s.yaml ]; then
  /usr/local/bin/k3s kubectl get pods -n sovereign-inference -o json 2>/dev/null
fi
section containerd_config
# table headers and the keys judged, nothing else: the file also holds registry credentials
if [ -f "${K3S_CONTAINERD_DIR}/config.toml" ]; then
  grep -E '^[[:space:]]*(\[|version[[:space:]]*=|default_runtime_name[[:space:]]*=)' "${K3S_CONTAINERD_DIR}/config.toml"
fi
section containerd_templates
read -ra templates <<<"${K3S_CONTAINERD_TEMPLATES}"
for template in "${templates[@]}"; do
  if [ -f "${K3S_CONTAINERD_DIR}/${template}" ]; then
    echo "template ${K3S_CONTAINERD_DIR}/${template}"
    grep -E '^[[:space:]]*default_runtime_name[[:space:]]*=' "${K3S_CONTAINERD_DIR}/${template}"
  fi
done
section k3s_default_runtime
grep -hE '^default-runtime:' /etc/rancher/k3s/config.yaml /etc/rancher/k3s/config.yaml.d/*.yaml 2>/dev/null
section images
if [ -x /usr/local/bin/k3s ]; then
  /usr/local/bin/k3s crictl images -o json 2>/dev/null
fi
section container_toolkit
if command -v nvidia-ctk >/dev/null; then
  nvidia-ctk --version 2>/dev/null | head -1
  ls /var/run/cdi 2>/dev/null
fi
section probe_env
cat "${PROBE_DIR}/VERSION" 2>/dev/null
section gpu_probe
if [ ! -e /proc/driver/nvidia/version ] && ! ldconfig -p 2>/dev/null | grep -q 'libnvidia-ml\.so\.1'; then
  # no kernel driver and no NVML library: the probe could only say so, without starting Python
  echo '{"probe_version": 1, "nvml": "no-driver", "error": "no NVIDIA kernel driver loaded (/proc/driver/nvidia absent) and no libnvidia-ml.so.1"}'
elif command -v python3 >/dev/null && [ -n "${SOVEREIGN_PAYLOAD_DIR:-}" ]; then
  python3 -I -S "${SOVEREIGN_PAYLOAD_DIR}/gpu_probe.py" --lib "${PROBE_DIR}/lib"
else
  echo '{"probe_version": 1, "nvml": "no-python", "error": "python3 is not installed (the 70-probe-env step installs it)"}'
fi
section kernel_xid
if command -v journalctl >/dev/null; then
  journalctl -k -b --no-pager -o short 2>/dev/null | grep 'NVRM: Xid' | tail -200
else
  dmesg 2>/dev/null | grep 'NVRM: Xid' | tail -200
fi
section end
