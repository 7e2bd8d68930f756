#!/usr/bin/env bash
# make demo: everything from a fresh Debian machine (as root) to traffic
# through nftvs on a real IPVS kernel. It installs what is missing (Debian
# packages, Go modules, Debian's kernel for the VM, upstream kube-apiserver
# built from source: ~10 minutes the first time, cached in
# /var/cache/nftvs), starts etcd + kube-apiserver on the host (loopback),
# boots the VM and runs e2e/demo/guest.sh in it. Nothing is left behind:
# the VM and the control plane are thrown away.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="/usr/local/go/bin:$PATH"
begin=$(date +%s)
echo "demo: setting up (Debian packages, Go modules, the VM kernel, kube-apiserver; cached after the first run)"
bash e2e/deps.sh
go mod download
go build -o bin/ ./cmd/nftvs ./e2e/controlplane/with-apiserver
e2e/tools/build.sh >/dev/null
e2e/vm/build-initramfs.sh "${NFTVS_KERNEL:-bookworm}" >/dev/null
echo "demo: set up in $(( $(date +%s) - begin )) s; starting kube-apiserver on the host and booting the VM"
export NFTVS_NFTVS_BINARY="$PWD/bin/nftvs"
status=0
bin/with-apiserver -quiet e2e/vm/vmexec /bin/bash "$PWD/e2e/demo/guest.sh" || status=$?
echo
echo "demo: done in $(( $(date +%s) - begin )) s (exit $status)"
exit $status
