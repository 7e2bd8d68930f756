#!/usr/bin/env bash
# Builds what a real node and upstream's e2e tests need, from the
# k8s.io/kubernetes release pinned in go.mod, into the cache (outside the
# git tree), and prints the directory: kubelet, kube-controller-manager,
# kube-scheduler, kubectl, agnhost and e2e-network.test (upstream's e2e.test
# with the sig-network suites only; e2e.test, everything, on request),
# egress-proxy (ours, stdlib only: the one-node harness's way from the API
# server to pod IPs) and regression-issue-74839 (a test image's program,
# for e2e/cluster).
# Incremental; a cold build takes long on two cores.
#   build.sh [NAME...]   only these (default: all but e2e.test)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# The version as go.mod requires it, as the go command reads it.
ver=$(cd "$here" && GOWORK=off GOFLAGS=-mod=mod go list -m -f '{{.Version}}' k8s.io/kubernetes)
out="${NFTVS_CACHE:-/var/cache/nftvs}/bin/$ver"
mkdir -p "$out"
cd "$here"
export GOFLAGS=-mod=mod
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(kubelet kube-controller-manager kube-scheduler kubectl agnhost e2e-network.test egress-proxy)
# regression-issue-74839 is built on request (e2e/cluster/images.sh).
for cmd in "${want[@]}"; do
  case $cmd in
    # With cgo like the rest (CGO_ENABLED=0 would recompile every package):
    # e2e/node/images.sh puts the libraries ldd names into its image.
    # With the TLS key pair its image carries (porter serves TLS with
    # them: the Proxy [Conformance] test's https ports).
    agnhost)
      go build -trimpath -o "$out/agnhost" k8s.io/kubernetes/test/images/agnhost
      src=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/porter
      cp "$src/localhost.crt" "$src/localhost.key" "$out/" && chmod 0644 "$out/localhost.crt" "$out/localhost.key"
      ;;
    # The Conntrack test's sender of invalid packets; static, its image
    # has nothing else.
    regression-issue-74839) CGO_ENABLED=0 go build -trimpath -o "$out/$cmd" k8s.io/kubernetes/test/images/regression-issue-74839 ;;
    # Static: it runs on the node outside any image.
    egress-proxy) CGO_ENABLED=0 go build -trimpath -o "$out/egress-proxy" ./egress-proxy ;;
    e2e.test) go test -c -vet=off -trimpath -o "$out/e2e.test" k8s.io/kubernetes/test/e2e ;;
    # The same, linked with the sig-network suites only (e2enetwork/).
    e2e-network.test) go test -c -vet=off -trimpath -o "$out/e2e-network.test" ./e2enetwork ;;
    *) go build -trimpath -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd" ;;
  esac
done
echo "$out"
