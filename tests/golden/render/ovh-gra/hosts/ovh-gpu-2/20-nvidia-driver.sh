#!/usr/bin/env bash
# 20-nvidia-driver: the pinned NVIDIA driver (open kernel modules where chosen), held, with the
# persistence daemon and, on NVSwitch systems, the fabric manager. A no-op when the pinned driver
# is loaded. Refuses when no NVIDIA GPU is on the bus or the running kernel cannot get the module.
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
SOVEREIGN_STEP=20-nvidia-driver
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
# NVIDIA's CUDA network repository (the source of pinned driver branches on Ubuntu and Debian 12),
# with the keyring package fetched over TLS. Debian also needs contrib/non-free for firmware.
NVIDIA_REPO_BASE=https://developer.download.nvidia.com/compute/cuda/repos

nvidia_distro() {
  local os_id os_version
  # shellcheck disable=SC1091 # present on every supported distribution
  os_id="$(. /etc/os-release && echo "${ID}")"
  # shellcheck disable=SC1091
  os_version="$(. /etc/os-release && echo "${VERSION_ID:-}")"
  case "${os_id}-${os_version}" in
    debian-12) echo debian12 ;;
    ubuntu-22.04) echo ubuntu2204 ;;
    ubuntu-24.04) echo ubuntu2404 ;;
    *) refuse "no NVIDIA repository for ${os_id} ${os_version}" ;;
  esac
}

install_nvidia_keyring() {
  local distro="$1" tmp
  tmp="$(mktemp -d)"
  curl -fsSL --retry 3 -o "${tmp}/cuda-keyring.deb" "${NVIDIA_REPO_BASE}/${distro}/x86_64/cuda-keyring_1.1-1_all.deb"
  dpkg -i "${tmp}/cuda-keyring.deb" >/dev/null
  rm -rf "$tmp"
  apt-get update -qq
}

ensure_nvidia_repo() {
  local distro
  distro="$(nvidia_distro)"
  if ! dpkg-query -W -f='${Status}' cuda-keyring 2>/dev/null | grep -q "install ok installed"; then
    change "add NVIDIA's ${distro} repository" install_nvidia_keyring "$distro"
  fi
}

DRIVER_VERSION=570.172.08
DRIVER_BRANCH=570
OPEN_MODULES=True
FABRIC_MANAGER=auto
EXPECTED_GPU_COUNT=2
PIN_FILE=/etc/apt/preferences.d/sovereign-nvidia-driver
export DEBIAN_FRONTEND=noninteractive

loaded_driver_version() {
  if [ -r /sys/module/nvidia/version ]; then
    cat /sys/module/nvidia/version
  fi
}

driver_packages() {
  local distro="$1"
  case "$distro" in
    ubuntu*)
      if [ "$OPEN_MODULES" = True ]; then
        echo "nvidia-driver-${DRIVER_BRANCH}-open"
      else
        echo "nvidia-driver-${DRIVER_BRANCH}"
      fi
      ;;
    *)
      if [ "$OPEN_MODULES" = True ]; then
        echo "nvidia-open"
      else
        echo "cuda-drivers"
      fi
      ;;
  esac
}

install_driver() {
  # shellcheck disable=SC2086 # the package list is split on purpose
  apt-get install -y -qq --no-install-recommends "linux-headers-$(uname -r)" $1
  # shellcheck disable=SC2086
  apt-mark hold $1 >/dev/null
}

disable_nouveau() {
  printf 'blacklist nouveau\noptions nouveau modeset=0\n' >/etc/modprobe.d/sovereign-blacklist-nouveau.conf
  if command -v update-initramfs >/dev/null; then
    update-initramfs -u
  fi
}

enable_unit() {
  systemctl enable --now "$1"
}

apply() {
  local gpus loaded distro packages
  scan_nvidia_pci
  gpus=$NVIDIA_GPUS
  if [ "$gpus" -eq 0 ]; then
    refuse "no NVIDIA GPU on the PCI bus (vendor 10de), but this host expects ${EXPECTED_GPU_COUNT}; check the hardware or set gpu.count: 0 for this host"
  fi
  loaded="$(loaded_driver_version)"
  fact driver.loaded "${loaded:-none}"
  if [ "$loaded" = "$DRIVER_VERSION" ] && [ -f "$PIN_FILE" ]; then
    log "pinned driver ${DRIVER_VERSION} is loaded"
  else
    if ! apt-cache show "linux-headers-$(uname -r)" >/dev/null 2>&1 && [ ! -d "/lib/modules/$(uname -r)/build" ]; then
      refuse "running kernel $(uname -r) has no headers package, so the NVIDIA module cannot be built for it; boot a distribution kernel that has linux-headers-$(uname -r)"
    fi
    ensure_nvidia_repo
    ensure_file "$PIN_FILE" 644 "Package: *nvidia* libnvidia* libcuda* cuda-drivers* libxnvctrl* firmware-nvidia*
Pin: version ${DRIVER_VERSION}-*
Pin-Priority: 1001"
    distro="$(nvidia_distro)"
    packages="$(driver_packages "$distro")"
    if ! dpkg-query -W -f='${Version}' nvidia-kernel-common nvidia-kernel-common-"${DRIVER_BRANCH}" 2>/dev/null | grep -q "^${DRIVER_VERSION}"; then
      change "install NVIDIA driver ${DRIVER_VERSION} (${packages})" install_driver "$packages"
    fi
    if lsmod | grep -q '^nouveau'; then
      change "blacklist nouveau" disable_nouveau
      reboot_required "nouveau is loaded; the NVIDIA driver loads after a reboot"
    fi
    if [ -n "$loaded" ] && [ "$loaded" != "$DRIVER_VERSION" ]; then
      reboot_required "driver ${loaded} is loaded; ${DRIVER_VERSION} takes over after a reboot"
    fi
    if [ -z "$loaded" ]; then
      if ! modprobe nvidia 2>/dev/null; then
        if [ -r /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c ] &&
          [ "$(od -An -t u1 -j 4 -N 1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c | tr -d ' ')" = 1 ]; then
          refuse "the NVIDIA module does not load and Secure Boot is on: enroll the DKMS signing key (mokutil --import /var/lib/dkms/mok.pub) or turn Secure Boot off"
        fi
        reboot_required "the NVIDIA module did not load; retrying after a reboot"
      fi
      loaded="$(loaded_driver_version)"
      if [ "$loaded" != "$DRIVER_VERSION" ]; then
        refuse "loaded NVIDIA module is ${loaded:-none}, expected ${DRIVER_VERSION}"
      fi
    fi
  fi
  if ! systemctl is-active --quiet nvidia-persistenced; then
    change "enable nvidia-persistenced" enable_unit nvidia-persistenced
  fi
  local switches
  switches=$NVSWITCHES
  fact nvswitch_count "$switches"
  if [ "$FABRIC_MANAGER" = on ] || { [ "$FABRIC_MANAGER" = auto ] && [ "$switches" -gt 0 ]; }; then
    if ! dpkg-query -W -f='${Status}' "nvidia-fabricmanager-${DRIVER_BRANCH}" 2>/dev/null | grep -q "install ok installed"; then
      change "install fabric manager ${DRIVER_VERSION}" install_driver "nvidia-fabricmanager-${DRIVER_BRANCH}"
    fi
    if ! systemctl is-active --quiet nvidia-fabricmanager; then
      change "enable nvidia-fabricmanager" enable_unit nvidia-fabricmanager
    fi
  fi
  fact driver.version "$(loaded_driver_version)"
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
