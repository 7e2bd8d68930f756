#!/bin/sh
# Builds nftvs (static, CGO_ENABLED=0) and its container image as an OCI
# image layout tarball, without a container engine or base image:
#   deploy/image/build.sh            → bin/nftvs, bin/nftvs-image.tar
# NFTVS_BIN_DIR puts both elsewhere; NFTVS_VERSION names the version
# (default: git describe); NFTVS_IMAGE the image name.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
bindir=${NFTVS_BIN_DIR:-$root/bin}
version=${NFTVS_VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
name=${NFTVS_IMAGE:-docker.io/nftvs/nftvs:dev}
mkdir -p "$bindir"
# -trimpath and a fixed SOURCE_DATE_EPOCH (the last commit's time) make
# the image reproducible from a commit.
: "${SOURCE_DATE_EPOCH:=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH
(cd "$root" && CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X github.com/nftvs/nftvs/internal/version.version=$version" \
	-o "$bindir/nftvs" ./cmd/nftvs)
(cd "$root/deploy/image" && GOWORK=off go run . \
	-binary "$bindir/nftvs" -out "$bindir/nftvs-image.tar" -name "$name" -version "$version")
echo "$bindir/nftvs-image.tar $(stat -c %s "$bindir/nftvs-image.tar") bytes"
