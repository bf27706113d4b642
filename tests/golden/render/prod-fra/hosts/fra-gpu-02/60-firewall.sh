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

CLUSTER_NODES_V4=(203.0.113.11 203.0.113.12 203.0.113.13)
CLUSTER_NETWORKS=(10.42.0.0/16 10.43.0.0/16)
EGRESS_ALLOWLIST_ENABLED=True
EGRESS_ALLOWLIST=(192.0.2.0/24 185.48.116.0/22)
DNS_RESOLVERS=(192.0.2.53 192.0.2.54)
NTP_SERVERS=(ptbtime1.ptb.de ptbtime2.ptb.de)
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

resolve_v4() {
  local name
  for name in "$@"; do
    getent ahostsv4 "$name" 2>/dev/null | awk '{print $1}'
  done | sort -u | tr '\n' ' '
}

render_rules() {
  local nodes networks egress ntp
  nodes="$(join_set "${CLUSTER_NODES_V4[@]}")"
  networks="$(join_set "${CLUSTER_NETWORKS[@]}")"
  cat <<RULES
# Managed by sovereign-inference (60-firewall). Replaced as a whole on each run.
table inet sovereign
delete table inet sovereign
table inet sovereign {
  set cluster_nodes {
    type ipv4_addr
    flags interval
    ${nodes:+elements = { ${nodes} }}
  }
  set cluster_networks {
    type ipv4_addr
    flags interval
    ${networks:+elements = { ${networks} }}
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
  }
RULES
  if [ "$EGRESS_ALLOWLIST_ENABLED" = True ]; then
    egress="$(join_set "${EGRESS_ALLOWLIST[@]}" "${DNS_RESOLVERS[@]}")"
    ntp="$(resolve_v4 "${NTP_SERVERS[@]}")"
    # shellcheck disable=SC2086 # split the resolved addresses into set elements
    ntp="$(join_set ${ntp})"
    local ntp_rule=""
    if [ -n "$ntp" ]; then
      ntp_rule="udp dport 123 ip daddr { ${ntp} } accept"
    fi
    cat <<RULES
  set egress_allowed {
    type ipv4_addr
    flags interval
    ${egress:+elements = { ${egress} }}
  }
  chain output {
    type filter hook output priority filter; policy drop;
    ct state established,related accept
    oif lo accept
    meta l4proto 1 accept comment "icmp"
    ip daddr @cluster_nodes accept
    ip daddr @cluster_networks accept
    ip daddr @egress_allowed accept
    ${ntp_rule}
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
