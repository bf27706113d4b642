#!/usr/bin/env bash
# 10-base: packages, kernel settings, time sync and DNS from the residency policy, the running
# kernel held, SSH hardened (keys only; key exchange, ciphers, MACs and host key algorithms
# restricted; no Diffie-Hellman moduli under 3072 bits). Never blocks on time sync.
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
SOVEREIGN_STEP=10-base
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

PACKAGES=(ca-certificates curl gnupg chrony kmod iproute2 pciutils mdadm xfsprogs nvme-cli nftables)
NTP_SERVERS=(ntp.ovh.net ptbtime1.ptb.de)
DNS_RESOLVERS=(192.0.2.53 192.0.2.54)
SYSCTL_CONTENT='net.ipv4.ip_forward = 1
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
fs.inotify.max_user_instances = 8192
fs.inotify.max_user_watches = 524288
vm.max_map_count = 262144
vm.swappiness = 1'
MODULES=(overlay br_netfilter)
SSHD_CONTENT='# Managed by sovereign-inference: keys only, root by key only, modern algorithms.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PermitEmptyPasswords no
X11Forwarding no
MaxAuthTries 4
KexAlgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org
Ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr
MACs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com
HostKeyAlgorithms ssh-ed25519-cert-v01@openssh.com,ssh-ed25519,rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-512,rsa-sha2-256-cert-v01@openssh.com,rsa-sha2-256'
SSHD_DROPIN=/etc/ssh/sshd_config.d/50-sovereign.conf
SSHD_EFFECTIVE=('passwordauthentication no' 'kbdinteractiveauthentication no' 'permitemptypasswords no' 'x11forwarding no' 'maxauthtries 4' 'kexalgorithms sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org' 'ciphers chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr' 'macs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com' 'hostkeyalgorithms ssh-ed25519-cert-v01@openssh.com,ssh-ed25519,rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-512,rsa-sha2-256-cert-v01@openssh.com,rsa-sha2-256')
SSHD_HOST_KEY_TYPES=(ssh-ed25519 ssh-rsa)
SSHD_LOADED_STAMP=/var/lib/sovereign/sshd-dropin.loaded
SSHD_MODULI=/etc/ssh/moduli
SSHD_MODULI_STAMP=/var/lib/sovereign/sshd-moduli.cleaned
SSHD_MIN_MODULUS_SIZE_FIELD=3071
NODE_LABELS_CONTENT='sovereign-inference/country=FR
sovereign-inference/environment=ovh-gra
sovereign-inference/gpu-count=2
sovereign-inference/gpu-model=L40S-48GB
sovereign-inference/provider=ovh
topology.kubernetes.io/region=gra3
topology.kubernetes.io/zone=gra3'
export DEBIAN_FRONTEND=noninteractive

missing_packages() {
  local installed pkg
  # one dpkg-query for all packages: "name status" for those dpkg knows
  installed=" $(dpkg-query -W -f='${Package}=${Status}\n' "${PACKAGES[@]}" 2>/dev/null | awk -F= '$2 == "install ok installed" {printf "%s ", $1}' || true)"
  for pkg in "${PACKAGES[@]}"; do
    case "$installed" in
      *" ${pkg} "*) ;;
      *) printf '%s ' "$pkg" ;;
    esac
  done
}

install_packages() {
  # shellcheck disable=SC2086 # word splitting of the package list is intended
  apt-get update -qq && apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold $1
}

ensure_packages() {
  local missing
  missing="$(missing_packages)"
  if [ -n "$missing" ]; then
    change "install packages: ${missing% }" install_packages "$missing"
  fi
}

apply_sysctl() {
  sysctl -q -p /etc/sysctl.d/90-sovereign.conf
}

load_modules() {
  local module
  for module in "${MODULES[@]}"; do
    modprobe "$module"
  done
}

ensure_kernel_settings() {
  local modules_content module not_loaded=""
  modules_content="$(printf '%s\n' "${MODULES[@]}")"
  ensure_file /etc/modules-load.d/sovereign.conf 644 "$modules_content"
  for module in "${MODULES[@]}"; do
    if [ ! -d "/sys/module/${module}" ]; then
      not_loaded="${not_loaded}${module} "
    fi
  done
  if [ -n "$not_loaded" ]; then
    change "load kernel modules ${not_loaded% }" load_modules
  fi
  ensure_file /etc/sysctl.d/90-sovereign.conf 644 "$SYSCTL_CONTENT"
  local key value drifted="" keys=() wanted=() current=()
  while IFS='=' read -r key value; do
    key="${key// /}"
    [ -n "$key" ] || continue
    keys+=("$key")
    wanted+=("${value# }")
  done <<<"$SYSCTL_CONTENT"
  # one sysctl call reads every key, in order
  mapfile -t current < <(sysctl -n "${keys[@]}" 2>/dev/null || true)
  local i
  for i in "${!keys[@]}"; do
    if [ "${current[$i]:-}" != "${wanted[$i]}" ]; then
      drifted="${drifted}${keys[$i]} "
    fi
  done
  if [ -n "$drifted" ]; then
    change "apply sysctl ${drifted% }" apply_sysctl
  fi
}

restart_unit() {
  systemctl restart "$1"
}

ensure_time_sync() {
  local server content
  content="# Managed by sovereign-inference: time only from the residency policy's NTP servers."
  for server in "${NTP_SERVERS[@]}"; do
    content="${content}
server ${server} iburst"
  done
  content="${content}
driftfile /var/lib/chrony/chrony.drift
makestep 1.0 3
rtcsync
logdir /var/log/chrony"
  local before=$SOVEREIGN_CHANGED
  SOVEREIGN_CHANGED=0
  ensure_file /etc/chrony/chrony.conf 644 "$content"
  if [ "$SOVEREIGN_CHANGED" = 1 ] || ! systemctl is-active --quiet chrony; then
    change "restart chrony with the policy's NTP servers" restart_unit chrony
  fi
  SOVEREIGN_CHANGED=$((before | SOVEREIGN_CHANGED))
  fact ntp.servers "${NTP_SERVERS[*]}"
}

ensure_dns() {
  local resolver content
  if systemctl is-active --quiet systemd-resolved; then
    # FallbackDNS= empty: without it resolved falls back to built-in resolvers outside the policy
    content="[Resolve]
DNS=${DNS_RESOLVERS[*]}
FallbackDNS=
Domains=~."
    local before=$SOVEREIGN_CHANGED
    SOVEREIGN_CHANGED=0
    ensure_file /etc/systemd/resolved.conf.d/90-sovereign.conf 644 "$content"
    if [ "$SOVEREIGN_CHANGED" = 1 ]; then
      change "restart systemd-resolved with the policy's resolvers" restart_unit systemd-resolved
    fi
    SOVEREIGN_CHANGED=$((before | SOVEREIGN_CHANGED))
  else
    if [ -L /etc/resolv.conf ]; then
      refuse "/etc/resolv.conf is a link to $(readlink /etc/resolv.conf) but systemd-resolved is not running; configure that resolver manager to use ${DNS_RESOLVERS[*]}"
    fi
    content="# Managed by sovereign-inference: resolvers from the residency policy."
    for resolver in "${DNS_RESOLVERS[@]}"; do
      content="${content}
nameserver ${resolver}"
    done
    ensure_file /etc/resolv.conf 644 "$content"
  fi
  fact dns.resolvers "${DNS_RESOLVERS[*]}"
}

hold_packages() {
  apt-mark hold "$@" >/dev/null
}

ensure_kernel_held() {
  local pkg held to_hold=()
  held=" $(apt-mark showhold | tr '\n' ' ')"
  local candidates=("linux-image-$(uname -r)" linux-image-amd64 linux-image-generic linux-generic)
  local installed
  installed=" $(dpkg-query -W -f='${Package}=${Status}\n' "${candidates[@]}" 2>/dev/null | awk -F= '$2 == "install ok installed" {printf "%s ", $1}' || true)"
  for pkg in "${candidates[@]}"; do
    case "$installed" in
      *" ${pkg} "*)
        case "$held" in
          *" ${pkg} "*) ;;
          *) to_hold+=("$pkg") ;;
        esac
        ;;
    esac
  done
  if [ "${#to_hold[@]}" -gt 0 ]; then
    change "hold kernel packages ${to_hold[*]}" hold_packages "${to_hold[@]}"
  fi
}

# The stamp holds the drop-in as sshd last reloaded it, after its effective settings were
# checked: a run cut off between writing the drop-in and the reload reloads on the next run.
sshd_reload_pending() {
  [ ! -f "$SSHD_LOADED_STAMP" ] || [ "$(<"$SSHD_LOADED_STAMP")" != "$SSHD_CONTENT" ]
}

# Whether a file sshd reads before (or instead of) the drop-in changed since that reload. When
# none did, the checked settings still hold and the no-op run skips `sshd -T` (about 0.5 s under
# emulation). Builtin tests only: no process per run.
sshd_config_changed_since_reload() {
  local path
  for path in /etc/ssh/sshd_config /etc/ssh/sshd_config.d /etc/ssh/sshd_config.d/*; do
    if [ "$path" -nt "$SSHD_LOADED_STAMP" ]; then
      return 0
    fi
  done
  return 1
}

reload_sshd() {
  if systemctl is-active --quiet ssh; then
    systemctl reload ssh
  elif systemctl is-active --quiet sshd; then
    systemctl reload sshd
  fi
  _write_file_atomically "$SSHD_LOADED_STAMP" 644 "$SSHD_CONTENT"
}

# The first effective sshd setting (as `sshd -T` prints it) that differs from the drop-in's, or
# nothing when all are in force. sshd keeps the first value it reads: a file that sorts before
# the drop-in, or a line above the Include in sshd_config, wins over it.
sshd_setting_overridden() {
  local effective="$1" wanted directive actual
  for wanted in "${SSHD_EFFECTIVE[@]}"; do
    case "$effective" in
      *"
${wanted}
"*) ;;
      *)
        directive="${wanted%% *}"
        actual="$(printf '%s\n' "$effective" | awk -v d="$directive" '$1 == d {print $2; exit}')"
        printf '%s is %s, expected %s' "$directive" "${actual:-unset}" "${wanted#* }"
        return 0
        ;;
    esac
  done
}

# sshd offers only ed25519 and RSA host keys once hardened: a host with neither would present a
# key its pinned fingerprint cannot match (or none at all).
sshd_has_kept_host_key() {
  local effective="$1" path key_type kept
  while read -r path; do
    [ -r "$path" ] && [ -r "${path}.pub" ] || continue
    read -r key_type _ <"${path}.pub" || continue
    for kept in "${SSHD_HOST_KEY_TYPES[@]}"; do
      if [ "$key_type" = "$kept" ]; then
        return 0
      fi
    done
  done < <(printf '%s\n' "$effective" | awk '$1 == "hostkey" {print $2}')
  return 1
}

# Sets SSHD_EFFECTIVE_CONFIG to what `sshd -T` prints, wrapped in newlines for whole-line
# matching; on failure to sshd's first error line, and returns non-zero.
read_sshd_effective() {
  local output
  if ! output="$(sshd -T 2>&1)"; then
    SSHD_EFFECTIVE_CONFIG="${output%%$'\n'*}"
    return 1
  fi
  SSHD_EFFECTIVE_CONFIG="
${output}
"
}

restore_sshd_dropin() {
  local previous="$1"
  if [ -n "$previous" ]; then
    _write_file_atomically "$SSHD_DROPIN" 644 "$previous"
  else
    rm -f "$SSHD_DROPIN"
  fi
}

ensure_ssh_hardened() {
  if ! grep -Eqi '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/' /etc/ssh/sshd_config; then
    refuse "/etc/ssh/sshd_config does not include /etc/ssh/sshd_config.d/*.conf; add 'Include /etc/ssh/sshd_config.d/*.conf' at its top"
  fi
  local overridden where
  where="a file in /etc/ssh/sshd_config.d sorting before ${SSHD_DROPIN##*/}, or a line above the Include in /etc/ssh/sshd_config, overrides it; remove that setting"
  if [ -f "$SSHD_DROPIN" ] && [ "$(<"$SSHD_DROPIN")" = "$SSHD_CONTENT" ]; then
    if ! sshd_reload_pending && ! sshd_config_changed_since_reload; then
      return 0
    fi
    # in place, but not reloaded yet or sshd's other files changed: in force only if nothing
    # read before the drop-in overrides one of its settings
    if ! read_sshd_effective; then
      refuse "sshd -T cannot read the SSH server configuration: ${SSHD_EFFECTIVE_CONFIG}"
    fi
    overridden="$(sshd_setting_overridden "$SSHD_EFFECTIVE_CONFIG")"
    if [ -n "$overridden" ]; then
      refuse "sshd's effective ${overridden}: ${where}"
    fi
    if sshd_reload_pending; then
      change "reload sshd with ${SSHD_DROPIN}" reload_sshd
    fi
    return 0
  fi
  if ! read_sshd_effective; then
    refuse "sshd -T cannot read the SSH server configuration: ${SSHD_EFFECTIVE_CONFIG}"
  fi
  if ! sshd_has_kept_host_key "$SSHD_EFFECTIVE_CONFIG"; then
    refuse "sshd has no ${SSHD_HOST_KEY_TYPES[*]} host key; the hardened sshd offers only those: generate one (ssh-keygen -t ed25519 -f /etc/ssh/ssh_host_ed25519_key), add it as a HostKey and pin its fingerprint in the stack (ssh.hostKey)"
  fi
  local previous=""
  if [ -f "$SSHD_DROPIN" ]; then
    previous="$(<"$SSHD_DROPIN")"
  fi
  ensure_file "$SSHD_DROPIN" 644 "$SSHD_CONTENT"
  if ! sshd -t 2>/dev/null; then
    restore_sshd_dropin "$previous"
    refuse "sshd rejects the hardened configuration (sshd -t); left the previous configuration in place"
  fi
  if ! read_sshd_effective; then
    restore_sshd_dropin "$previous"
    refuse "sshd -T cannot read the hardened configuration: ${SSHD_EFFECTIVE_CONFIG}; left the previous configuration in place"
  fi
  overridden="$(sshd_setting_overridden "$SSHD_EFFECTIVE_CONFIG")"
  if [ -n "$overridden" ]; then
    restore_sshd_dropin "$previous"
    refuse "sshd's effective ${overridden}: ${where} (left the previous configuration in place)"
  fi
  change "reload sshd (passwords off, root by key only, modern key exchange, ciphers, MACs and host key algorithms)" reload_sshd
}

small_moduli_count() {
  awk -v min="$SSHD_MIN_MODULUS_SIZE_FIELD" '$1 !~ /^#/ && NF >= 7 && $5 + 0 < min {n++} END {print n + 0}' "$SSHD_MODULI"
}

remove_small_moduli() {
  local tmp
  tmp="$(mktemp "${SSHD_MODULI}.sovereign.XXXXXX")"
  awk -v min="$SSHD_MIN_MODULUS_SIZE_FIELD" '$1 ~ /^#/ || NF < 7 || $5 + 0 >= min' "$SSHD_MODULI" >"$tmp"
  chmod 644 "$tmp"
  mv -f "$tmp" "$SSHD_MODULI"
  _write_file_atomically "$SSHD_MODULI_STAMP" 644 "moduli under $((SSHD_MIN_MODULUS_SIZE_FIELD + 1)) bits removed"
}

# Diffie-Hellman group exchange is not offered by the drop-in; the small moduli go all the same, so
# re-enabling it later never brings back 2048-bit groups. sshd reads the file per exchange. The
# file is read (about 0.3 s under emulation) only when it changed since this step cleaned it.
ensure_no_small_moduli() {
  [ -f "$SSHD_MODULI" ] || return 0
  if [ -f "$SSHD_MODULI_STAMP" ] && ! [ "$SSHD_MODULI" -nt "$SSHD_MODULI_STAMP" ]; then
    return 0
  fi
  local count
  count="$(small_moduli_count)"
  if [ "$count" -gt 0 ]; then
    change "remove ${count} Diffie-Hellman moduli under $((SSHD_MIN_MODULUS_SIZE_FIELD + 1)) bits from ${SSHD_MODULI}" remove_small_moduli
  fi
}

# Where the host declares what it is (country, region, zone, provider): the labels K3s gets, kept
# on the host too so verification can compare them with the stack even where K3s is not running.
ensure_identity() {
  ensure_file /etc/sovereign/node-labels 644 "$NODE_LABELS_CONTENT"
}

apply() {
  ensure_identity
  ensure_packages
  ensure_kernel_settings
  ensure_time_sync
  ensure_dns
  ensure_kernel_held
  ensure_no_small_moduli
  ensure_ssh_hardened
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
