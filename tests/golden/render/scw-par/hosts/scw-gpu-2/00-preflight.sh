#!/usr/bin/env bash
# 00-preflight: read-only facts about the host; refuses early when it cannot become the node
# the stack describes (OS, GPUs on the PCI bus, NVMe drives by id, memory).
# Shared by every step. Protocol lines on stdout, read by the executor:
#   SOVEREIGN-FACT key=value     something the step found (versions, devices)
#   SOVEREIGN-CHANGE text        one change made, in words
#   SOVEREIGN-DRIFT text         check mode: what an apply would change (then the step stops)
#   SOVEREIGN-REFUSED text       a precondition does not hold (exit 3); nothing was changed by it
#   SOVEREIGN-REBOOT text        a reboot is needed before the step can finish (exit 100)
#   SOVEREIGN-RESULT changed|unchanged|drift
# Human-readable progress goes to stderr.
set -euo pipefail
export LC_ALL=C
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SOVEREIGN_STEP=00-preflight
SOVEREIGN_MODE="${SOVEREIGN_MODE:-apply}"
SOVEREIGN_CHANGED=0

log() { printf '[%s] %s\n' "$SOVEREIGN_STEP" "$*" >&2; }
fact() { printf 'SOVEREIGN-FACT %s=%s\n' "$1" "$2"; }
refuse() { printf 'SOVEREIGN-REFUSED %s\n' "$*"; exit 3; }
reboot_required() { printf 'SOVEREIGN-REBOOT %s\n' "$*"; exit 100; }

# change DESCRIPTION COMMAND [ARG...]: the only way a step modifies the host. In check mode it
# reports the drift and stops instead, so `check` is an exact dry run of `apply`.
change() {
  local description="$1"
  shift
  if [ "$SOVEREIGN_MODE" = check ]; then
    printf 'SOVEREIGN-DRIFT %s\n' "$description"
    printf 'SOVEREIGN-RESULT drift\n'
    exit 0
  fi
  "$@"
  SOVEREIGN_CHANGED=1
  printf 'SOVEREIGN-CHANGE %s\n' "$description"
  log "changed: $description"
}

_write_file_atomically() {
  local path="$1" mode="$2" content="$3" tmp
  mkdir -p "$(dirname "$path")"
  tmp="$(mktemp "${path}.sovereign.XXXXXX")"
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

# ensure_file PATH MODE CONTENT: write only when content or mode differ; never half-written.
ensure_file() {
  local path="$1" mode="$2" content="$3"
  if [ -f "$path" ] && [ "$(<"$path")" = "$content" ] && [ "$(stat -c %a "$path")" = "$mode" ]; then
    return 0
  fi
  change "write $path" _write_file_atomically "$path" "$mode" "$content"
}

# ensure_unit_file PATH CONTENT: a systemd unit, with the manager reloaded when it changed.
ensure_unit_file() {
  local path="$1" content="$2"
  if [ -f "$path" ] && [ "$(<"$path")" = "$content" ]; then
    return 0
  fi
  change "write $path" _write_file_atomically "$path" 644 "$content"
  change "reload systemd units" systemctl daemon-reload
}

finish() {
  if [ "$SOVEREIGN_CHANGED" = 1 ]; then
    echo 'SOVEREIGN-RESULT changed'
  else
    echo 'SOVEREIGN-RESULT unchanged'
  fi
}
# scan_nvidia_pci [DEVICE_ID]: one pass over the PCI bus (vendor 10de) setting
#   NVIDIA_GPUS      display and 3D controllers (class 0300/0302)
#   MATCHING_GPUS    those of device DEVICE_ID (lspci -n form, e.g. 2330)
#   NVSWITCHES       NVSwitch bridges (class 0680)
# read builtins, not cat: a server has dozens of PCI functions and every fork counts
NVIDIA_GPUS=0
MATCHING_GPUS=0
NVSWITCHES=0
scan_nvidia_pci() {
  local wanted="${1:-}" dev vendor class device
  NVIDIA_GPUS=0
  MATCHING_GPUS=0
  NVSWITCHES=0
  for dev in /sys/bus/pci/devices/*; do
    [ -r "$dev/vendor" ] || continue
    read -r vendor <"$dev/vendor"
    [ "$vendor" = 0x10de ] || continue
    read -r class <"$dev/class"
    case "$class" in
      0x0300* | 0x0302*)
        NVIDIA_GPUS=$((NVIDIA_GPUS + 1))
        read -r device <"$dev/device"
        if [ -n "$wanted" ] && [ "$device" = "0x${wanted}" ]; then
          MATCHING_GPUS=$((MATCHING_GPUS + 1))
        fi
        ;;
      0x0680*) NVSWITCHES=$((NVSWITCHES + 1)) ;;
    esac
  done
}

EXPECTED_GPU_COUNT=1
EXPECTED_GPU_MODEL=L40S-48GB
EXPECTED_GPU_DEVICE_ID=26b9
NVME_IDS=()
MIN_MEMORY_MIB=512

check_os() {
  local os_id os_version
  # shellcheck disable=SC1091 # present on every supported distribution
  os_id="$(. /etc/os-release && echo "${ID}")"
  # shellcheck disable=SC1091
  os_version="$(. /etc/os-release && echo "${VERSION_ID:-}")"
  fact os "${os_id}-${os_version}"
  fact kernel "$(uname -r)"
  case "${os_id}-${os_version}" in
    debian-12 | ubuntu-22.04 | ubuntu-24.04) ;;
    *) refuse "unsupported OS ${os_id} ${os_version}; expected Debian 12, Ubuntu 22.04 or Ubuntu 24.04" ;;
  esac
}

check_gpus() {
  scan_nvidia_pci "$EXPECTED_GPU_DEVICE_ID"
  local nvidia=$NVIDIA_GPUS matching=$MATCHING_GPUS
  fact gpu_count "$nvidia"
  fact gpu_matching "$matching"
  if [ "$EXPECTED_GPU_COUNT" -gt 0 ] && [ "$matching" -ne "$EXPECTED_GPU_COUNT" ]; then
    refuse "expected ${EXPECTED_GPU_COUNT} x ${EXPECTED_GPU_MODEL} (PCI 10de:${EXPECTED_GPU_DEVICE_ID}) on the bus, found ${nvidia} NVIDIA GPU(s), ${matching} of that model"
  fi
  if [ "$EXPECTED_GPU_COUNT" -eq 0 ] && [ "$nvidia" -gt 0 ]; then
    log "note: ${nvidia} NVIDIA GPU(s) present but the stack expects none on this host"
  fi
}

check_nvme() {
  local id missing=()
  for id in "${NVME_IDS[@]}"; do
    if [ -e "/dev/disk/by-id/${id}" ]; then
      fact "nvme.${id}" "$(readlink -f "/dev/disk/by-id/${id}")"
    else
      missing+=("$id")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    local present
    present="$(find /dev/disk/by-id -maxdepth 1 -name 'nvme-*' ! -name '*_1' ! -name '*-part*' -printf '%f ' 2>/dev/null || true)"
    refuse "NVMe drive(s) not found by id: ${missing[*]}; present: ${present:-none}"
  fi
}

check_firmware() {
  local efivar=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
  if [ ! -d /sys/firmware/efi ]; then
    fact secure_boot "not-uefi"
  elif [ -r "$efivar" ] && [ "$(od -An -t u1 -j 4 -N 1 "$efivar" | tr -d ' ')" = 1 ]; then
    fact secure_boot "enabled"
  else
    fact secure_boot "disabled"
  fi
}

check_memory() {
  local total_kib
  total_kib="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
  fact memory_mib "$((total_kib / 1024))"
  fact cpus "$(nproc)"
  if [ "$((total_kib / 1024))" -lt "$MIN_MEMORY_MIB" ]; then
    refuse "only $((total_kib / 1024)) MiB of memory; expected at least ${MIN_MEMORY_MIB} MiB"
  fi
}

apply() {
  check_os
  check_gpus
  check_nvme
  check_firmware
  check_memory
}

case "$SOVEREIGN_MODE" in
  apply | check) apply ;;
  teardown)
    if declare -F teardown >/dev/null; then
      teardown
    fi
    ;;
  *) refuse "unknown SOVEREIGN_MODE ${SOVEREIGN_MODE}; expected apply, check or teardown" ;;
esac
finish
