#!/bin/sh
# Stand-in for the K3s installer (install.sh of the pinned release) in lab tests, where K3s
# downloads cannot be reached. It treats its environment the way the real installer does, which
# is what the tests examine, and installs a unit around the stand-in binary:
# - INSTALL_K3S_SKIP_DOWNLOAD=true: the k3s binary already in /usr/local/bin is used;
# - INSTALL_K3S_EXEC: "server" (unit k3s) or "agent" (unit k3s-agent);
# - K3S_URL without K3S_TOKEN, K3S_TOKEN_FILE or K3S_CLUSTER_SECRET is refused;
# - every K3S_* and CONTAINERD_* variable, and the proxy variables, of its environment are copied
#   into /etc/systemd/system/<unit>.service.env (mode 0600), which the unit reads;
# - the unit and an uninstall script are written, systemd reloaded, the unit enabled and, unless
#   INSTALL_K3S_SKIP_START=true, started.
set -e

bin_dir=/usr/local/bin
if [ "${INSTALL_K3S_SKIP_DOWNLOAD:-}" != true ]; then
    echo "fake installer: only INSTALL_K3S_SKIP_DOWNLOAD=true is supported (no downloads in the lab)" >&2
    exit 1
fi
if [ ! -x "${bin_dir}/k3s" ]; then
    echo "fake installer: ${bin_dir}/k3s is missing" >&2
    exit 1
fi
if [ -n "${K3S_URL:-}" ] && [ -z "${K3S_TOKEN:-}" ] && [ -z "${K3S_TOKEN_FILE:-}" ] && [ -z "${K3S_CLUSTER_SECRET:-}" ]; then
    echo "fake installer: K3S_URL requires K3S_TOKEN, K3S_TOKEN_FILE or K3S_CLUSTER_SECRET" >&2
    exit 1
fi

command="${INSTALL_K3S_EXEC:-server}"
command="${command%% *}"
case "$command" in
    server) unit=k3s ;;
    agent) unit=k3s-agent ;;
    *)
        echo "fake installer: unsupported INSTALL_K3S_EXEC ${INSTALL_K3S_EXEC}" >&2
        exit 1
        ;;
esac
unit_file="/etc/systemd/system/${unit}.service"
env_file="${unit_file}.env"
uninstall="${bin_dir}/${unit}-uninstall.sh"

systemctl disable "$unit" >/dev/null 2>&1 || true
rm -f "$unit_file" "$env_file"

# the environment capture, as the real installer does it
touch "$env_file"
chmod 0600 "$env_file"
sh -c export | while read -r _ assignment; do echo "$assignment"; done | grep -E '^(K3S|CONTAINERD)_' >"$env_file" || true
sh -c export | while read -r _ assignment; do echo "$assignment"; done | grep -Ei '^(NO|HTTP|HTTPS)_PROXY' >>"$env_file" || true

cat >"$unit_file" <<UNIT
[Unit]
Description=Lightweight Kubernetes (lab stand-in)
After=network-online.target

[Service]
Type=simple
EnvironmentFile=-${env_file}
ExecStart=${bin_dir}/k3s ${command}
Restart=no

[Install]
WantedBy=multi-user.target
UNIT

cat >"$uninstall" <<UNINSTALL
#!/bin/sh
set -e
systemctl disable --now ${unit} >/dev/null 2>&1 || true
rm -f ${unit_file} ${env_file} ${bin_dir}/k3s
systemctl daemon-reload
rm -f "\$0"
UNINSTALL
chmod 0755 "$uninstall"

systemctl daemon-reload
systemctl enable "$unit" >/dev/null 2>&1
if [ "${INSTALL_K3S_SKIP_START:-}" != true ]; then
    systemctl restart "$unit"
fi
echo "fake installer: ${unit} installed"
