# shellcheck shell=bash
# inference layer: the pods this host's kubeconfig shows (servers only).
section inference_pods
if [ -f /etc/rancher/k3s/k3s.yaml ]; then
  /usr/local/bin/k3s kubectl get pods -n sovereign-inference -o json 2>/dev/null
fi
