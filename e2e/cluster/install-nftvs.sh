#!/usr/bin/env bash
# install-nftvs.sh: nftvs onto the node of cluster.sh exactly as a user
# installs it: kubectl apply -k of deploy/ (through e2e/cluster/deploy, which
# makes the one setting a user must make, the API server's address). Waits
# until the DaemonSet has rolled out under the kubelet and its pod is
# Ready through its own readiness probe, then until cluster DNS is Ready
# (CoreDNS reaches the API server through the kubernetes Service, which
# nftvs now programs). NFTVS_INSTALL_AS=kube-proxy installs
# e2e/cluster/deploy-as-kube-proxy instead (pods labelled k8s-app=kube-proxy).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${NFTVS_NODE_BIN:?run me through e2e/cluster/cluster.sh}"
kubectl() { "$NFTVS_NODE_BIN/kubectl" "$@"; }
t0=$(date +%s)
dir=$here/deploy app=nftvs
if [ "${NFTVS_INSTALL_AS:-}" = kube-proxy ]; then dir=$here/deploy-as-kube-proxy app=kube-proxy; fi
if [ "${NFTVS_CLUSTER_STACK:-ipv4}" = dual ]; then
  # The one setting a dual-stack cluster changes: clusterCIDR lists the
  # pod CIDR of each family (as kube-proxy's does there, cluster.sh).
  kubectl kustomize "$dir" |
    sed "s#clusterCIDR: 10.244.0.0/16\$#clusterCIDR: $NFTVS_CLUSTER_POD_CIDRS#" | kubectl apply -f -
else
  kubectl apply -k "$dir"
fi
if ! kubectl -n kube-system rollout status ds/nftvs --timeout=600s ||
  ! kubectl -n kube-system wait --for=condition=Ready pod -l k8s-app=$app --timeout=300s; then
  kubectl -n kube-system describe pods -l k8s-app=$app | tail -40
  kubectl -n kube-system logs -l k8s-app=$app --tail=40 || true
  exit 1
fi
kubectl -n kube-system get pods -l k8s-app=$app -o wide
echo "install-nftvs: DaemonSet rolled out, pods Ready $(($(date +%s) - t0)) s after apply"
kubectl -n kube-system logs -l k8s-app=$app --tail=3 --prefix || true  # informative only: a starved kubelet can time out
"$here/../node/dns.sh" wait
