# shellcheck shell=bash
# k3s layer: the binary's version, the labels the node registers with, the Node object.
section node_labels
cat /etc/sovereign/node-labels 2>/dev/null
section k3s_version
if [ -x /usr/local/bin/k3s ]; then
  /usr/local/bin/k3s --version 2>/dev/null | head -1
fi
section k3s_node
if [ -f /etc/rancher/k3s/k3s.yaml ]; then
  /usr/local/bin/k3s kubectl get node "$(hostname)" -o json 2>/dev/null
fi
