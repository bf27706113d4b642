# shellcheck shell=bash
# residency layer. Input: CANARY (host:port or empty).
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
section k3s_registries
cat /etc/rancher/k3s/registries.yaml 2>/dev/null
section images
if [ -x /usr/local/bin/k3s ]; then
  /usr/local/bin/k3s crictl images -o json 2>/dev/null
fi
