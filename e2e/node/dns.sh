#!/usr/bin/env bash
# dns.sh apply|wait: the node's cluster DNS (coredns.yaml: kubeadm's CoreDNS
# addon, the kube-dns Service at 10.96.0.10 the kubelet hands to pods).
#   apply  creates it (cluster.sh, once the node is Ready)
#   wait   waits until the CoreDNS pod is Ready. Its readiness needs the
#          proxy: CoreDNS lists Services and EndpointSlices from the API
#          server through the kubernetes Service's ClusterIP, so this runs
#          after kube-proxy is up (cluster.sh) or nftvs is installed
#          (install-nftvs.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${NFTVS_NODE_BIN:?run me through e2e/node/cluster.sh or e2e/cluster/cluster.sh}"
kubectl() { "$NFTVS_NODE_BIN/kubectl" "$@"; }
t0=$(date +%s)
case ${1:-} in
  apply) kubectl apply -f "$here/coredns.yaml" >/dev/null ;;
  wait)
    if ! kubectl -n kube-system rollout status deploy/coredns --timeout="${NFTVS_DNS_TIMEOUT:-600}s"; then
      kubectl -n kube-system describe pods -l k8s-app=kube-dns | tail -30
      kubectl -n kube-system logs -l k8s-app=kube-dns --tail=30 || true
      exit 1
    fi
    echo "dns: CoreDNS Ready $(($(date +%s) - t0)) s after waiting started"
    ;;
  *) echo "usage: dns.sh apply|wait" >&2; exit 2 ;;
esac
