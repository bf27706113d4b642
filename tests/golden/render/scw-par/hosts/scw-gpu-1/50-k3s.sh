#!/usr/bin/env bash
# 50-k3s: K3s at the pinned version as the first server (cluster-init, embedded etcd), a joining
# server, or an agent. The installer is install.sh at the pinned release's tag, checksum-verified,
# or the one in an air-gap bundle already on the host. Config carries node labels, taints, tls-san, secrets encryption and the registry
# mirrors from the residency policy. Teardown leaves the cluster and never touches the cache.
# The cluster token reaches K3s only through /etc/rancher/k3s/token (0600, named by token-file in
# the config): the executor sets K3S_TOKEN as an unexported variable of this script, the installer
# runs with no K3S_* variable in its environment (it copies every one into the service's .env
# file, where a token would outlive its rotation), and a token an earlier install left in a .env
# file is removed.
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
SOVEREIGN_STEP=50-k3s
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

K3S_ROLE=server-init
K3S_VERSION=v1.31.6+k3s1
INSTALLER_URL=https://raw.githubusercontent.com/k3s-io/k3s/v1.31.6%2Bk3s1/install.sh
INSTALLER_SHA256=2ce4e1bf7bd1e6c8e9d5a9c3b6d0f7e4a1b2c3d4e5f60718293a4b5c6d7e8f90
AIRGAP_BUNDLE=''
# /etc/rancher/k3s/config.yaml: the settings before and after the addresses, and between them
# what names hosts' addresses (the server a joining node joins, the names in a server's
# certificate), given to the step at run time since an ordered machine's address is known only
# once its order returns. Only those settings: a server URL, the certificate's names.
CONFIG_HEAD='node-name: scw-gpu-1
token-file: /etc/rancher/k3s/token
node-label:
- topology.kubernetes.io/region=fr
- topology.kubernetes.io/zone=fr-par-2
- sovereign-inference/country=FR
- sovereign-inference/provider=scaleway
- sovereign-inference/environment=scw-par
- sovereign-inference/gpu-count=1
- sovereign-inference/gpu-model=H100-PCIE-80GB
cluster-init: true'
CONFIG_TAIL='secrets-encryption: true
cluster-cidr: 10.42.0.0/16
service-cidr: 10.43.0.0/16
write-kubeconfig-mode: '"'"'0600'"'"''
if [ -z "${SOVEREIGN_K3S_ADDRESSES:-}" ]; then
  refuse "SOVEREIGN_K3S_ADDRESSES is not set: the K3s addresses are given to this step at run time"
fi
while IFS= read -r line; do
  if ! [[ $line =~ ^(server:\ https://[^[:space:]]+|tls-san:|-\ [^[:space:]]+)$ ]]; then
    refuse "SOVEREIGN_K3S_ADDRESSES: ${line} is no server URL or certificate name line"
  fi
done <<<"$SOVEREIGN_K3S_ADDRESSES"
CONFIG_CONTENT="${CONFIG_HEAD}"$'\n'"${SOVEREIGN_K3S_ADDRESSES}"
if [ -n "$CONFIG_TAIL" ]; then
  CONFIG_CONTENT+=$'\n'"${CONFIG_TAIL}"
fi
REGISTRIES_CONTENT='mirrors:
  docker.io:
    endpoint:
    - https://rg.fr-par.scw.cloud
  ghcr.io:
    endpoint:
    - https://rg.fr-par.scw.cloud
  quay.io:
    endpoint:
    - https://rg.fr-par.scw.cloud
  registry.k8s.io:
    endpoint:
    - https://rg.fr-par.scw.cloud
  nvcr.io:
    endpoint:
    - https://rg.fr-par.scw.cloud'
READY_TIMEOUT_SECONDS=300
CONFIG_DIR=/etc/rancher/k3s
TOKEN_FILE="${CONFIG_DIR}/token"
SERVICE_ENV_FILES=(/etc/systemd/system/k3s.service.env /etc/systemd/system/k3s-agent.service.env)
# the variables through which K3s and its installer take a cluster secret
TOKEN_VARIABLES_PATTERN='^(K3S_TOKEN|K3S_AGENT_TOKEN|K3S_CLUSTER_SECRET)='

service_name() {
  if [ "$K3S_ROLE" = agent ]; then
    echo k3s-agent
  else
    echo k3s
  fi
}

installed_version() {
  if [ -x /usr/local/bin/k3s ]; then
    /usr/local/bin/k3s --version 2>/dev/null | awk 'NR == 1 {print $3}'
  fi
}

# Installed means the pinned binary and its unit: a binary alone (an install cut short) is not.
k3s_installed() {
  [ "$(installed_version)" = "$K3S_VERSION" ] && [ -f "/etc/systemd/system/$(service_name).service" ]
}

run_installer() {
  local tmp exec_mode
  tmp="$(mktemp -d)"
  exec_mode=server
  if [ "$K3S_ROLE" = agent ]; then
    exec_mode=agent
  fi
  if [ -n "$AIRGAP_BUNDLE" ]; then
    cp "${AIRGAP_BUNDLE}/install.sh" "${tmp}/install.sh"
  else
    curl -fsSL --retry 3 -o "${tmp}/install.sh" "$INSTALLER_URL"
  fi
  # verified before anything is installed: a refused run must leave no binary behind that makes
  # the next run believe K3s is installed
  if [ -n "$INSTALLER_SHA256" ]; then
    if ! echo "${INSTALLER_SHA256}  ${tmp}/install.sh" | sha256sum --check --status; then
      local got
      got="$(sha256sum "${tmp}/install.sh" | cut -d' ' -f1)"
      rm -rf "$tmp"
      refuse "K3s installer checksum mismatch: expected ${INSTALLER_SHA256}, got ${got}"
    fi
  fi
  if [ -n "$AIRGAP_BUNDLE" ]; then
    install -m 0755 "${AIRGAP_BUNDLE}/k3s" /usr/local/bin/k3s
    mkdir -p /var/lib/rancher/k3s/agent/images
    cp "${AIRGAP_BUNDLE}"/k3s-airgap-images-*.tar* /var/lib/rancher/k3s/agent/images/
    export INSTALL_K3S_SKIP_DOWNLOAD=true
  fi
  local name unset_k3s=()
  # the installer writes every K3S_* variable of its environment into the service's .env file
  for name in $(compgen -e); do
    case "$name" in
      K3S_*) unset_k3s+=(-u "$name") ;;
    esac
  done
  env "${unset_k3s[@]}" INSTALL_K3S_VERSION="$K3S_VERSION" INSTALL_K3S_EXEC="$exec_mode" \
    INSTALL_K3S_SKIP_START=true sh "${tmp}/install.sh" >&2 </dev/null
  rm -rf "$tmp"
}

drop_token_lines() {
  sed -i -E "/${TOKEN_VARIABLES_PATTERN}/d" "$1"
}

# An install by an earlier version of this step (or by hand) may have left the token in a .env
# file, where it goes stale at the next rotation: the token file is the only place for it.
ensure_no_token_in_service_env() {
  local file
  for file in "${SERVICE_ENV_FILES[@]}"; do
    if [ -f "$file" ] && grep -Eq "$TOKEN_VARIABLES_PATTERN" "$file"; then
      change "remove the cluster token from ${file} (K3s reads ${TOKEN_FILE})" drop_token_lines "$file"
    fi
  done
}

restart_k3s() {
  systemctl restart "$(service_name)"
}

wait_until_ready() {
  local waited=0
  until systemctl is-active --quiet "$(service_name)"; do
    if [ "$waited" -ge "$READY_TIMEOUT_SECONDS" ]; then
      refuse "$(service_name) did not become active within ${READY_TIMEOUT_SECONDS} s; see journalctl -u $(service_name)"
    fi
    sleep 2
    waited=$((waited + 2))
  done
}

apply() {
  if [ -z "${K3S_TOKEN:-}" ]; then
    refuse "no cluster token: set k3sToken as a Pulumi secret (pulumi config set --secret k3sToken ...)"
  fi
  ensure_file "${CONFIG_DIR}/config.yaml" 600 "$CONFIG_CONTENT"
  local config_changed=$SOVEREIGN_CHANGED
  ensure_file "${CONFIG_DIR}/registries.yaml" 600 "$REGISTRIES_CONTENT"
  ensure_file "$TOKEN_FILE" 600 "$K3S_TOKEN"
  if ! k3s_installed; then
    change "install K3s ${K3S_VERSION} as ${K3S_ROLE}" run_installer
  fi
  ensure_no_token_in_service_env
  if [ "$SOVEREIGN_CHANGED" = 1 ] || [ "$config_changed" = 1 ] || ! systemctl is-active --quiet "$(service_name)"; then
    change "start $(service_name) with the current configuration" restart_k3s
    wait_until_ready
  fi
  fact k3s.version "$(installed_version)"
  fact k3s.role "$K3S_ROLE"
}

teardown() {
  local script=/usr/local/bin/k3s-uninstall.sh
  if [ "$K3S_ROLE" = agent ]; then
    script=/usr/local/bin/k3s-agent-uninstall.sh
  fi
  if [ -x "$script" ]; then
    change "uninstall K3s (${K3S_ROLE}); the weight cache is not touched" run_uninstaller "$script"
  fi
}

# stdin is this script itself: the uninstaller must not read the rest of it
run_uninstaller() {
  "$1" </dev/null
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
