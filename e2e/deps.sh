#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine (run as root):
# tools the kernel tests drive (nft, ip, conntrack, ipvsadm, iptables, ipset) and what the VM
# harness boots (qemu, busybox, cpio, kmod, socat). Idempotent and quiet
# when everything is present.
set -euo pipefail

# command → Debian package
declare -A want=(
  [nft]=nftables [ip]=iproute2 [conntrack]=conntrack [ipvsadm]=ipvsadm
  [qemu-system-x86_64]=qemu-system-x86 [cpio]=cpio [depmod]=kmod
  [socat]=socat [curl]=curl [etcd]=etcd-server
  # upstream kube-proxy's IPVS mode in the takeover test and the benchmark,
  # and kube-proxy-like state in internal/takeover's kernel tests
  [iptables]=iptables [iptables-legacy]=iptables [ipset]=ipset
  # the real node in the VM (e2e/node): the OCI runtime under containerd,
  # and nc and wget for the agnhost image the e2e tests exec into
  [runc]=runc [nc]=netcat-openbsd [wget]=wget
  # dig (and nslookup, host) for the images the DNS e2e tests query with
  # (agnhost in e2e/node/images.sh, glibc-dns-testing in e2e/cluster/images.sh)
  [dig]=bind9-dnsutils
  # iperf 2 for the agnhost image (the IPerf2 e2e test runs `iperf` in it)
  [iperf]=iperf
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
# The CNI plugins of the real node (e2e/node) are not on PATH.
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
# busybox-static ships /bin/busybox; a dynamic busybox would not run in
# the initramfs.
if ! { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }; then
  missing+=(busybox-static)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages ${missing[*]}; run as root to install them" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
