#!/usr/bin/env bash
# images.sh: the node's container images as OCI tarballs in
# $NFTVS_CACHE/images (printed), built here, never pulled:
#   registry.k8s.io/pause:3.10.2                   the pod sandbox (a Go pause)
#   registry.k8s.io/e2e-test-images/agnhost:2.63.0 upstream agnhost with what
#     the tests exec in it (e2e/node/agnhost.sh)
#   registry.k8s.io/coredns/coredns:v1.14.2        cluster DNS: CoreDNS at the
#     version kubeadm 1.36 deploys, built by e2e/tools/coredns
#   docker.io/nftvs/nftvs:dev                      deploy/image, the tree's nftvs
# and, in test/, the other images upstream's [sig-network] tests start, each with
# what those tests run in it (the names and tags of
# test/utils/image/manifest.go in k8s.io/kubernetes v1.36.3):
#   registry.k8s.io/e2e-test-images/busybox:1.37.0-1            busybox
#     (Conntrack: sleep, nc)
#   registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0     dig
#     (bind9-dnsutils), glibc's getent, bash, busybox (the DNS tests'
#     "jessie" prober; upstream's is Debian with dnsutils)
#   registry.k8s.io/build-image/distroless-iptables:v0.9.6      conntrack,
#     iptables and busybox (KubeProxy CLOSE_WAIT: conntrack -L on the node)
#   registry.k8s.io/e2e-test-images/regression-issue-74839:1.4  upstream's
#     test/images/regression-issue-74839 (Conntrack invalid packets)
#   registry.k8s.io/e2e-test-images/nginx:1.15-4                a stand-in:
#     the EndpointSlice and Endpoints tests that start it only need a
#     running container (they never connect), so it is the Go pause
# Each is rebuilt only when its input changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PATH=/usr/local/go/bin:$PATH
cache=${NFTVS_CACHE:-/var/cache/nftvs}
out=$cache/images
mkdir -p "$out" "$cache/image-work"
bin=$("$root/e2e/tools/node/build.sh" agnhost regression-issue-74839)
coredns=$("$root/e2e/tools/coredns/build.sh")
corednsver=$(basename "$(dirname "$coredns")")
corednsver=${corednsver#coredns-}
tool=$cache/image-work/images
(cd "$root/e2e/tools/images" && GOWORK=off GOFLAGS=-mod=mod go build -o "$tool" . &&
  GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$cache/image-work/pause" ./pause)

newer() { [ ! -e "$1" ] || [ -n "$(find "${@:2}" -newer "$1" 2>/dev/null | head -1)" ]; }

if newer "$out/pause.tar" "$cache/image-work/pause" "$tool"; then
  "$tool" -name registry.k8s.io/pause:3.10.2 -out "$out/pause.tar" \
    -add "$cache/image-work/pause:/pause" -entrypoint /pause
fi
. "$root/e2e/node/agnhost.sh"
agnhost_recipe "$bin" "$coredns"
# Rebuilt also when what goes into it changed (a cache from before wget).
if newer "$out/agnhost.tar" "$bin/agnhost" "$coredns" "$tool" ||
  [ "$(cat "$out/agnhost.recipe" 2>/dev/null)" != "${agnhost[*]}" ]; then
  "$tool" "${agnhost[@]}" -out "$out/agnhost.tar.new" && mv "$out/agnhost.tar.new" "$out/agnhost.tar"
  echo "${agnhost[*]}" >"$out/agnhost.recipe"
fi
# image NAME FILE ARGS...: build test/FILE.tar from the image tool's ARGS
# unless it is there with the same recipe. The tests' own images live in
# test/ (node.sh imports both directories).
mkdir -p "$out/test"
image() {
  local name=$1 file=$out/test/$2.tar recipe=$out/test/$2.recipe
  shift 2
  if newer "$file" "$tool" || [ "$(cat "$recipe" 2>/dev/null)" != "$*" ]; then
    "$tool" -name "$name" "$@" -out "$file.new" && mv "$file.new" "$file"
    echo "$*" >"$recipe"
  fi
}
image registry.k8s.io/e2e-test-images/busybox:1.37.0-1 busybox -busybox /bin/busybox -dir /tmp -cmd sh
image registry.k8s.io/e2e-test-images/glibc-dns-testing:2.0.0 glibc-dns-testing \
  -add "$(command -v dig):/usr/bin/dig" -add "$(command -v getent):/usr/bin/getent" \
  -add /bin/bash:/bin/bash -add /bin/bash:/bin/sh -busybox /bin/busybox -dir /tmp -dir /results -cmd sh
image registry.k8s.io/build-image/distroless-iptables:v0.9.6 distroless-iptables \
  -add "$(command -v conntrack):/usr/sbin/conntrack" -add "$(command -v xtables-nft-multi):/usr/sbin/iptables" \
  -busybox /bin/busybox -dir /tmp -cmd sh
image registry.k8s.io/e2e-test-images/regression-issue-74839:1.4 regression-issue-74839 \
  -add "$bin/regression-issue-74839:/regression-issue-74839" -entrypoint /regression-issue-74839
image registry.k8s.io/e2e-test-images/nginx:1.15-4 nginx -add "$cache/image-work/pause:/pause" -entrypoint /pause
if newer "$out/coredns.tar" "$coredns" "$tool"; then
  "$tool" -name "registry.k8s.io/coredns/coredns:$corednsver" -out "$out/coredns.tar" \
    -add "$coredns:/coredns" -entrypoint /coredns
fi
# deploy/image: nftvs as committed (HEAD, exported with git archive, so
# that uncommitted edits in a shared tree cannot break or change the
# run), or with NFTVS_NODE_TREE=1 the working tree as it is.
if [ "${NFTVS_NODE_TREE:-0}" = 1 ]; then
  NFTVS_BIN_DIR=$cache/image-work "$root/deploy/image/build.sh" >/dev/null
  cp "$cache/image-work/nftvs-image.tar" "$out/nftvs.tar.new" && mv "$out/nftvs.tar.new" "$out/nftvs.tar"
  rm -f "$cache/image-work/nftvs.commit"
else
  head=$(git -C "$root" rev-parse HEAD)
  if [ "$(cat "$cache/image-work/nftvs.commit" 2>/dev/null)" != "$head" ] || [ ! -f "$out/nftvs.tar" ]; then
    src=$cache/image-work/src
    rm -rf "$src" && mkdir -p "$src"
    git -C "$root" archive HEAD | tar -x -C "$src"
    NFTVS_VERSION=$(git -C "$root" describe --tags --always) \
      SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct) \
      NFTVS_BIN_DIR=$cache/image-work "$src/deploy/image/build.sh" >/dev/null
    cp "$cache/image-work/nftvs-image.tar" "$out/nftvs.tar.new" && mv "$out/nftvs.tar.new" "$out/nftvs.tar"
    echo "$head" >"$cache/image-work/nftvs.commit"
  fi
fi
echo "$out"
