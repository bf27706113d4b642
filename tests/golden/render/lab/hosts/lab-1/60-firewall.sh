#!/usr/bin/env bash
# 60-firewall: nftables table "inet sovereign": inbound only SSH (on the port sshd listens on) and
# the cluster ports between cluster nodes; optionally outbound only to an allowlist. Loaded by a
# unit at boot, checked with nft -c before it replaces the running table.
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
SOVEREIGN_STEP=60-firewall
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

# IPv4 and IPv6 go to separate sets: an nftables set holds one address family.
CLUSTER_NODES_V4=(127.0.0.1)
CLUSTER_NODES_V6=()
CLUSTER_NETWORKS_V4=(10.42.0.0/16 10.43.0.0/16)
CLUSTER_NETWORKS_V6=()
EGRESS_ALLOWLIST_ENABLED=False
# the egress allowlist plus the DNS resolvers
EGRESS_V4=(10.0.2.3)
EGRESS_V6=()
# NTP servers given as addresses, and those given by name (resolved here, when the rules are built)
NTP_V4=(10.0.2.2)
NTP_V6=()
NTP_NAMES=()
RULES=/etc/nftables.d/sovereign.nft
LOADED_MARK=/run/sovereign-firewall.sha256

join_set() {
  local IFS=,
  echo "$*"
}

ssh_ports() {
  local ports
  ports="$(sshd -T 2>/dev/null | awk '$1 == "port" {print $2}' | sort -un | tr '\n' ',' | sed 's/,$//')"
  echo "${ports:-22}"
}

# ntp_addresses v4|v6 ADDRESS...: those addresses and the NTP names' addresses of that family,
# one per line, each once (IPv4-mapped answers of getent ahostsv6 left out)
ntp_addresses() {
  local family=$1 name
  shift
  {
    printf '%s\n' "$@"
    for name in "${NTP_NAMES[@]}"; do
      getent "ahosts${family}" "$name" 2>/dev/null | awk '$1 !~ /^::ffff:/ {print $1}'
    done
  } | awk 'NF && !seen[$1]++ {print $1}'
}

# elements LIST: a set's element line, or nothing for an empty set
elements() {
  if [ -n "$1" ]; then
    echo "elements = { $1 }"
  fi
}

render_rules() {
  local nodes nodes6 networks networks6 egress egress6 ntp ntp6
  nodes="$(join_set "${CLUSTER_NODES_V4[@]}")"
  nodes6="$(join_set "${CLUSTER_NODES_V6[@]}")"
  networks="$(join_set "${CLUSTER_NETWORKS_V4[@]}")"
  networks6="$(join_set "${CLUSTER_NETWORKS_V6[@]}")"
  cat <<RULES
# Managed by sovereign-inference (60-firewall). Replaced as a whole on each run.
table inet sovereign
delete table inet sovereign
table inet sovereign {
  set cluster_nodes {
    type ipv4_addr
    flags interval
    $(elements "$nodes")
  }
  set cluster_networks {
    type ipv4_addr
    flags interval
    $(elements "$networks")
  }
  set cluster_nodes6 {
    type ipv6_addr
    flags interval
    $(elements "$nodes6")
  }
  set cluster_networks6 {
    type ipv6_addr
    flags interval
    $(elements "$networks6")
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iif lo accept
    meta l4proto 1 accept comment "icmp"
    meta l4proto 58 accept comment "ipv6-icmp"
    tcp dport { $(ssh_ports) } accept
    ip saddr @cluster_nodes tcp dport { 2379-2380, 5001, 6443, 10250 } accept
    ip saddr @cluster_nodes udp dport { 8472, 51820, 51821 } accept
    ip saddr @cluster_networks accept
    ip6 saddr @cluster_nodes6 tcp dport { 2379-2380, 5001, 6443, 10250 } accept
    ip6 saddr @cluster_nodes6 udp dport { 8472, 51820, 51821 } accept
    ip6 saddr @cluster_networks6 accept
  }
RULES
  if [ "$EGRESS_ALLOWLIST_ENABLED" = True ]; then
    egress="$(join_set "${EGRESS_V4[@]}")"
    egress6="$(join_set "${EGRESS_V6[@]}")"
    # shellcheck disable=SC2046 # one set element per address
    ntp="$(join_set $(ntp_addresses v4 "${NTP_V4[@]}"))"
    # shellcheck disable=SC2046
    ntp6="$(join_set $(ntp_addresses v6 "${NTP_V6[@]}"))"
    local ntp_rule="" ntp6_rule=""
    if [ -n "$ntp" ]; then
      ntp_rule="udp dport 123 ip daddr { ${ntp} } accept"
    fi
    if [ -n "$ntp6" ]; then
      ntp6_rule="udp dport 123 ip6 daddr { ${ntp6} } accept"
    fi
    cat <<RULES
  set egress_allowed {
    type ipv4_addr
    flags interval
    $(elements "$egress")
  }
  set egress_allowed6 {
    type ipv6_addr
    flags interval
    $(elements "$egress6")
  }
  chain output {
    type filter hook output priority filter; policy drop;
    ct state established,related accept
    oif lo accept
    meta l4proto 1 accept comment "icmp"
    meta l4proto 58 accept comment "ipv6-icmp: neighbour discovery"
    ip daddr @cluster_nodes accept
    ip daddr @cluster_networks accept
    ip daddr @egress_allowed accept
    ip6 daddr @cluster_nodes6 accept
    ip6 daddr @cluster_networks6 accept
    ip6 daddr @egress_allowed6 accept
    ${ntp_rule}
    ${ntp6_rule}
  }
RULES
  fi
  echo "}"
}

load_rules() {
  nft -f "$RULES"
  sha256sum "$RULES" | cut -d' ' -f1 >"$LOADED_MARK"
}

apply() {
  local wanted
  wanted="$(render_rules)"
  if ! nft -c -f - <<<"$wanted" >/dev/null 2>&1; then
    refuse "the generated nftables rules do not parse: $(nft -c -f - <<<"$wanted" 2>&1 | head -3)"
  fi
  ensure_file "$RULES" 600 "$wanted"
  ensure_unit_file /etc/systemd/system/sovereign-firewall.service "[Unit]
Description=sovereign-inference host firewall (nftables table inet sovereign)
After=nftables.service network-pre.target
Before=network-online.target k3s.service k3s-agent.service
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f ${RULES}
ExecStop=/usr/sbin/nft delete table inet sovereign

[Install]
WantedBy=multi-user.target"
  if ! systemctl is-enabled --quiet sovereign-firewall.service; then
    change "enable the firewall at boot" systemctl enable sovereign-firewall.service
  fi
  local current
  current="$(sha256sum "$RULES" | cut -d' ' -f1)"
  if ! nft list table inet sovereign >/dev/null 2>&1 || [ "$(cat "$LOADED_MARK" 2>/dev/null || true)" != "$current" ]; then
    change "load firewall rules (inbound: SSH $(ssh_ports) and cluster ports)" load_rules
  fi
  fact firewall.rules_sha256 "$current"
  fact firewall.egress_allowlist "$EGRESS_ALLOWLIST_ENABLED"
}

teardown() {
  if systemctl is-enabled --quiet sovereign-firewall.service 2>/dev/null; then
    change "disable the firewall unit" systemctl disable sovereign-firewall.service
  fi
  if nft list table inet sovereign >/dev/null 2>&1; then
    change "remove the firewall table" nft delete table inet sovereign
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
