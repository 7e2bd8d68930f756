#!/usr/bin/env bash
# Builds CoreDNS (main.go: coremain, the plugins of kubeadm's Corefile and `hosts`)
# at the version go.mod requires into the cache, outside the git tree, and
# prints the binary's path. Static (no cgo): the image holds nothing
# else; stripped, as it is imported under emulation on every run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
ver=$(cd "$here" && GOWORK=off GOFLAGS=-mod=mod go list -m -f '{{.Version}}' github.com/coredns/coredns)
out="${NFTVS_CACHE:-/var/cache/nftvs}/bin/coredns-$ver"
mkdir -p "$out"
cd "$here"
GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags="-s -w" -o "$out/coredns" . >&2
echo "$out/coredns"
