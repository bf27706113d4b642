# shellcheck shell=bash
# runtime layer. Inputs: K3S_CONTAINERD_DIR (where K3s writes containerd's config),
# K3S_CONTAINERD_TEMPLATES (the override templates K3s reads there, space-separated).
section containerd_config
# table headers and the keys judged, nothing else: the file also holds registry credentials
if [ -f "${K3S_CONTAINERD_DIR}/config.toml" ]; then
  grep -E '^[[:space:]]*(\[|version[[:space:]]*=|default_runtime_name[[:space:]]*=)' "${K3S_CONTAINERD_DIR}/config.toml"
fi
section containerd_templates
read -ra templates <<<"${K3S_CONTAINERD_TEMPLATES}"
for template in "${templates[@]}"; do
  if [ -f "${K3S_CONTAINERD_DIR}/${template}" ]; then
    echo "template ${K3S_CONTAINERD_DIR}/${template}"
    grep -E '^[[:space:]]*default_runtime_name[[:space:]]*=' "${K3S_CONTAINERD_DIR}/${template}"
  fi
done
section k3s_default_runtime
grep -hE '^default-runtime:' /etc/rancher/k3s/config.yaml /etc/rancher/k3s/config.yaml.d/*.yaml 2>/dev/null
section container_toolkit
if command -v nvidia-ctk >/dev/null; then
  nvidia-ctk --version 2>/dev/null | head -1
  ls /var/run/cdi 2>/dev/null
fi
