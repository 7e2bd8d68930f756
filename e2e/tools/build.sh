#!/usr/bin/env bash
# Builds upstream kube-apiserver and kube-proxy (the release pinned in
# go.mod) into the cache, outside the git tree, and prints the directory.
# A cold build takes several minutes on two cores; a warm one is instant.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${NFTVS_CACHE:-/var/cache/nftvs}/bin/$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/go.mod")"
mkdir -p "$out"
cd "$here"
for cmd in kube-apiserver kube-proxy; do
  # go build is incremental: when nothing changed it only checks.
  GOFLAGS=-mod=mod go build -trimpath -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
echo "$out"
