#!/usr/bin/env bash
# Builds containerd, ctr and containerd-shim-runc-v2 (the release pinned in
# go.mod) into the cache, outside the git tree, and prints the directory.
# Static, without cgo (no btrfs snapshotter). Incremental: a warm build
# only checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pkg=github.com/containerd/containerd/v2
ver=$(cd "$here" && GOWORK=off GOFLAGS=-mod=mod go list -m -f '{{.Version}}' $pkg)
out="${NFTVS_CACHE:-/var/cache/nftvs}/bin/containerd-$ver"
mkdir -p "$out"
cd "$here"
ld="-X $pkg/version.Version=$ver -X $pkg/version.Revision=$ver -X $pkg/version.Package=$pkg -s -w"
for cmd in containerd ctr containerd-shim-runc-v2; do
  tags="urfave_cli_no_docs no_btrfs"
  [ "$cmd" = containerd-shim-runc-v2 ] && tags="$tags no_grpc"
  CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags "$tags" -ldflags "$ld" -o "$out/$cmd" "$pkg/cmd/$cmd"
done
echo "$out"
