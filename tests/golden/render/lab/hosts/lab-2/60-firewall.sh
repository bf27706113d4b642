#!/usr/bin/env bash
# 60-firewall: nftables table "inet sovereign": inbound only SSH (on the port sshd listens on),
# the cluster ports between cluster nodes, and on servers the API port from k3s.apiAllowedCidrs;
# optionally outbound only to an allowlist. Loaded by a unit at boot, checked with nft -c before
# it replaces the running table.
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

# The cluster's nodes: the hosts' addresses, given to the step at run time (SOVEREIGN_CLUSTER_NODES),
# since an ordered machine's address is known only once its order returns. IPv4 and IPv6 go to
# separate sets: an nftables set holds one address family.
# is_ipv4 ADDRESS: four decimal octets 0-255, no leading zeros (nft would read 010 as octal)
is_ipv4() {
  local octet
  local -a octets
  [[ $1 =~ ^(0|[1-9][0-9]{0,2})(\.(0|[1-9][0-9]{0,2})){3}$ ]] || return 1
  IFS=. read -r -a octets <<<"$1"
  for octet in "${octets[@]}"; do
    ((octet <= 255)) || return 1
  done
}
# is_ipv6 ADDRESS: lower-case hex groups of 1-4 digits, at most one "::", eight groups without it
is_ipv6() {
  local groups
  [[ $1 =~ ^[0-9a-f]{0,4}(:[0-9a-f]{0,4}){2,7}$ && $1 != *:::* ]] || return 1
  groups="${1//[^:]/}"
  if [[ $1 == *::*::* ]]; then
    return 1
  elif [[ $1 == *::* ]]; then
    [[ ${#groups} -le 7 ]]
  else
    [[ ${#groups} -eq 7 && $1 != :* && $1 != *: ]]
  fi
}
if [ -z "${SOVEREIGN_CLUSTER_NODES+set}" ]; then
  refuse "SOVEREIGN_CLUSTER_NODES is not set: the cluster's node addresses are given to this step at run time"
fi
if [[ $SOVEREIGN_CLUSTER_NODES == *$'\n'* ]]; then
  refuse "SOVEREIGN_CLUSTER_NODES: expected the addresses on one line, separated by spaces"
fi
read -r -a cluster_nodes <<<"$SOVEREIGN_CLUSTER_NODES"
CLUSTER_NODES_V4=()
CLUSTER_NODES_V6=()
for node in "${cluster_nodes[@]}"; do
  if is_ipv4 "$node"; then
    CLUSTER_NODES_V4+=("$node")
  elif is_ipv6 "$node"; then
    CLUSTER_NODES_V6+=("$node")
  else
    refuse "SOVEREIGN_CLUSTER_NODES: ${node} is not an IPv4 or IPv6 address as the plan writes them"
  fi
done
CLUSTER_NETWORKS_V4=(10.42.0.0/16 10.43.0.0/16)
CLUSTER_NETWORKS_V6=()
# ranges outside the cluster that may reach the API server (pulumi's Kubernetes provider, kubectl)
API_PORT=6443
API_CLIENTS_V4=()
API_CLIENTS_V6=()
EGRESS_ALLOWLIST_ENABLED=False
# the egress allowlist plus the DNS resolvers
EGRESS_V4=(10.0.2.3/32)
EGRESS_V6=()
# NTP servers given as addresses, and those given by name (resolved here, when the rules are built)
NTP_V4=(10.0.2.2)
NTP_V6=()
NTP_NAMES=()
# what the host must still reach once egress is limited: the allowed registries and object stores
# (the apt mirrors are read from the host's own sources)
REQUIRED_DESTINATIONS=(registry.lab.internal objects.lab.internal)
APT_SOURCE_FILES=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
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

# address_bits ADDRESS: the address as 32 (IPv4) or 128 (IPv6) characters 0 and 1
address_bits() {
  local address=$1 part bits="" i value
  local -a parts=()
  if [[ $address == *:* ]]; then
    local head=$address tail=""
    local -a head_parts=() tail_parts=()
    if [[ $address == *::* ]]; then
      head=${address%%::*}
      tail=${address#*::}
    fi
    if [ -n "$head" ]; then
      IFS=: read -r -a head_parts <<<"$head"
    fi
    if [ -n "$tail" ]; then
      IFS=: read -r -a tail_parts <<<"$tail"
    fi
    parts=("${head_parts[@]}")
    for ((i = ${#head_parts[@]} + ${#tail_parts[@]}; i < 8; i++)); do
      parts+=(0)
    done
    parts+=("${tail_parts[@]}")
    for part in "${parts[@]}"; do
      value=$((16#$part))
      for ((i = 15; i >= 0; i--)); do
        bits+=$(((value >> i) & 1))
      done
    done
  else
    IFS=. read -r -a parts <<<"$address"
    for part in "${parts[@]}"; do
      for ((i = 7; i >= 0; i--)); do
        bits+=$(((10#$part >> i) & 1))
      done
    done
  fi
  echo "$bits"
}

# in_range ADDRESS CIDR: whether the address lies in the range (same family only)
in_range() {
  local address=$1 network=${2%/*} length=${2#*/} wanted have
  have="$(address_bits "$address")"
  wanted="$(address_bits "$network")"
  if [ "${#have}" != "${#wanted}" ]; then
    return 1
  fi
  if [ "$length" = "$2" ]; then
    length=${#wanted}
  fi
  [ "${have:0:length}" = "${wanted:0:length}" ]
}

# apt_hosts: the host names in the apt sources (one-line and deb822 formats), each once
apt_hosts() {
  local file
  for file in "${APT_SOURCE_FILES[@]}"; do
    if [ -f "$file" ]; then
      awk '/^[[:space:]]*#/ {next}
        $1 == "deb" || $1 == "deb-src" || $1 == "URIs:" {
          for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) print $i
        }' "$file"
    fi
  done | sed -E 's#^[a-z0-9+.-]+://([^/@]*@)?##; s#/.*$##; s#^\[([^]]*)\].*$#\1#; s#^([^:]*):[0-9]+$#\1#' |
    awk 'NF && !seen[$1]++'
}

# egress_preflight: refuse, naming each one, when a destination the host needs resolves to an
# address the egress rules would drop (cluster nodes and networks, the allowlist, the resolvers)
egress_preflight() {
  local name address range allowed outside=""
  local -a ranges=("${CLUSTER_NODES_V4[@]}" "${CLUSTER_NODES_V6[@]}" "${CLUSTER_NETWORKS_V4[@]}"
    "${CLUSTER_NETWORKS_V6[@]}" "${EGRESS_V4[@]}" "${EGRESS_V6[@]}")
  # shellcheck disable=SC2046 # one destination per word
  for name in "${REQUIRED_DESTINATIONS[@]}" $(apt_hosts); do
    local addresses
    addresses="$(getent ahosts "$name" 2>/dev/null | awk '$1 !~ /^::ffff:/ && !seen[$1]++ {print $1}' || true)"
    if [ -z "$addresses" ]; then
      log "egress preflight: ${name} does not resolve here; not checked"
      continue
    fi
    for address in $addresses; do
      allowed=0
      for range in "${ranges[@]}"; do
        if in_range "$address" "$range"; then
          allowed=1
          break
        fi
      done
      if [ "$allowed" = 0 ]; then
        outside+="${outside:+, }${name} (${address})"
      fi
    done
  done
  if [ -n "$outside" ]; then
    refuse "the egress allowlist would cut this host off from: ${outside}; add their ranges to residency.egressAllowlist"
  fi
}

# elements LIST: a set's element line, or nothing for an empty set
elements() {
  if [ -n "$1" ]; then
    echo "elements = { $1 }"
  fi
}

render_rules() {
  local nodes nodes6 networks networks6 api_clients api_clients6 egress egress6 ntp ntp6
  nodes="$(join_set "${CLUSTER_NODES_V4[@]}")"
  api_clients="$(join_set "${API_CLIENTS_V4[@]}")"
  api_clients6="$(join_set "${API_CLIENTS_V6[@]}")"
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
  set api_clients {
    type ipv4_addr
    flags interval
    $(elements "$api_clients")
  }
  set api_clients6 {
    type ipv6_addr
    flags interval
    $(elements "$api_clients6")
  }
  chain input {
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    ct state invalid drop
    iif lo accept
    meta l4proto 1 accept comment "icmp"
    meta l4proto 58 accept comment "ipv6-icmp"
    tcp dport { $(ssh_ports) } accept
    ip saddr @cluster_nodes tcp dport { 2379-2380, 5001, ${API_PORT}, 10250 } accept
    ip saddr @api_clients tcp dport ${API_PORT} accept
    ip saddr @cluster_nodes udp dport { 8472, 51820, 51821 } accept
    ip saddr @cluster_networks accept
    ip6 saddr @cluster_nodes6 tcp dport { 2379-2380, 5001, ${API_PORT}, 10250 } accept
    ip6 saddr @api_clients6 tcp dport ${API_PORT} accept
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
  if [ "$EGRESS_ALLOWLIST_ENABLED" = True ]; then
    egress_preflight
  fi
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
    change "load firewall rules (inbound: SSH $(ssh_ports), cluster ports, API from ${#API_CLIENTS_V4[@]} IPv4 and ${#API_CLIENTS_V6[@]} IPv6 client ranges)" load_rules
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
