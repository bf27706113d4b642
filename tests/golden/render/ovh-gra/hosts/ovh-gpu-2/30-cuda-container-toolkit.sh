#!/usr/bin/env bash
# 30-cuda-container-toolkit: the pinned CUDA toolkit and NVIDIA container toolkit, with a CDI spec
# regenerated at every boot, ready for K3s's containerd (K3s picks up the nvidia runtime itself).
# The runtime hands an unprivileged container only the GPUs the device plugin mounted a list of,
# never those its NVIDIA_VISIBLE_DEVICES names.
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
SOVEREIGN_STEP=30-cuda-container-toolkit
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

CUDA_VERSION=12.8
CUDA_PACKAGE=cuda-toolkit-12-8
TOOLKIT_VERSION=1.17.8
TOOLKIT_REPO=https://nvidia.github.io/libnvidia-container
CDI_SPEC=/var/run/cdi/nvidia.yaml
TOOLKIT_CONFIG=/etc/nvidia-container-runtime/config.toml
# key=value settings of the runtime's config.toml
TOOLKIT_SETTINGS=(accept-nvidia-visible-devices-envvar-when-unprivileged=false accept-nvidia-visible-devices-as-volume-mounts=true)
export DEBIAN_FRONTEND=noninteractive

installed_version() {
  dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true
}

# A configuration file this step edited (the runtime's config.toml) is kept on upgrade: dpkg
# would otherwise stop at its prompt, and the settings are applied again after every install.
install_pinned() {
  apt-get install -y -qq --no-install-recommends --allow-change-held-packages \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
  local spec
  for spec in "$@"; do
    apt-mark hold "${spec%%=*}" >/dev/null
  done
}

add_toolkit_repo() {
  curl -fsSL --retry 3 "${TOOLKIT_REPO}/gpgkey" | gpg --dearmor --yes -o /usr/share/keyrings/nvidia-container-toolkit.gpg
  # $(ARCH) is expanded by apt, not by the shell
  # shellcheck disable=SC2016
  printf 'deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit.gpg] %s/stable/deb/$(ARCH) /\n' "$TOOLKIT_REPO" \
    >/etc/apt/sources.list.d/nvidia-container-toolkit.list
  apt-get update -qq
}

# the runtime's config as the pinned nvidia-ctk writes it with our settings applied
wanted_toolkit_config() {
  local setting args=()
  for setting in "${TOOLKIT_SETTINGS[@]}"; do
    args+=(--set "$setting")
  done
  nvidia-ctk config --config-file="$TOOLKIT_CONFIG" "${args[@]}"
}

generate_cdi() {
  mkdir -p /var/run/cdi
  nvidia-ctk cdi generate --output="$CDI_SPEC" >/dev/null
}

apply() {
  ensure_nvidia_repo
  if [ ! -f "/usr/local/cuda-${CUDA_VERSION}/version.json" ]; then
    change "install CUDA ${CUDA_VERSION} (${CUDA_PACKAGE})" install_pinned "$CUDA_PACKAGE"
  fi
  fact cuda.version "$CUDA_VERSION"
  if [ ! -f /etc/apt/sources.list.d/nvidia-container-toolkit.list ]; then
    change "add the NVIDIA container toolkit repository" add_toolkit_repo
  fi
  if [ "$(installed_version nvidia-container-toolkit)" != "${TOOLKIT_VERSION}-1" ]; then
    change "install nvidia-container-toolkit ${TOOLKIT_VERSION}" install_pinned \
      "nvidia-container-toolkit=${TOOLKIT_VERSION}-1" "nvidia-container-toolkit-base=${TOOLKIT_VERSION}-1" \
      "libnvidia-container-tools=${TOOLKIT_VERSION}-1" "libnvidia-container1=${TOOLKIT_VERSION}-1"
  fi
  fact container_toolkit.version "$TOOLKIT_VERSION"
  local toolkit_config
  toolkit_config="$(wanted_toolkit_config)"
  ensure_file "$TOOLKIT_CONFIG" 644 "$toolkit_config"
  ensure_unit_file /etc/systemd/system/sovereign-nvidia-cdi.service "[Unit]
Description=Generate the NVIDIA CDI specification for containerd
After=nvidia-persistenced.service
Before=k3s.service k3s-agent.service

[Service]
Type=oneshot
ExecStart=/usr/bin/nvidia-ctk cdi generate --output=${CDI_SPEC}

[Install]
WantedBy=multi-user.target"
  if ! systemctl is-enabled --quiet sovereign-nvidia-cdi.service; then
    change "enable CDI generation at boot" systemctl enable sovereign-nvidia-cdi.service
  fi
  if [ ! -s "$CDI_SPEC" ]; then
    change "generate the CDI spec" generate_cdi
  fi
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
