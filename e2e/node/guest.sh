#!/bin/bash
# guest.sh: the real Kubernetes node, run inside the VM by e2e/vm/vmexec
# (started by cluster.sh, never by hand). It makes the guest a node:
# cgroup v2, containerd 2 with runc and the bridge CNI plugin, the
# images imported into containerd's k8s.io namespace (never pulled), the
# kubelet registered with the control plane on the host
# (https://10.0.2.100:6443 through qemu's guestfwd) and, with
# NODE_PROXY=kube-proxy, upstream kube-proxy --proxy-mode=ipvs as a process
# on the node. It then waits until the host creates $NODE_DIR/stop (or the
# time is up), stops everything and exits.
#
# NFTVS_NODE_DIR (from cluster.sh through vmexec) is a host directory
# shared writable: config in, logs and state out. Its guest.env sets
# NODE_BIN (kubelet, kube-proxy, egress-proxy), NODE_CONTAINERD (containerd, ctr, shim),
# NODE_IMAGES (OCI tarballs to import), NODE_PROXY (nftvs|kube-proxy),
# NODE_MAX_SECONDS.
set -uo pipefail
t0=$(date +%s)
say() { echo "guest [$(($(date +%s) - t0))s]: $*" | tee -a "$NODE_DIR/guest.log"; }
state() { echo "$1" >"$NODE_DIR/state"; say "$1"; }
fail() { state "failed: $*"; exit 1; }

: "${NFTVS_NODE_DIR:?}"
NODE_DIR=$NFTVS_NODE_DIR
# shellcheck disable=SC1091 # written by cluster.sh
. "$NODE_DIR/guest.env"
logs=$NODE_DIR/logs
mkdir -p "$logs"
export PATH=$NODE_CONTAINERD:$NODE_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# --- the kernel side ---------------------------------------------------------
# cgroup v2 only (the 1.36 kubelet refuses v1), every controller delegated
# to the children the kubelet makes.
mkdir -p /sys/fs/cgroup
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
ctrls=$(cat /sys/fs/cgroup/cgroup.controllers)
for c in $ctrls; do echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || say "controller $c: not delegated"; done
say "cgroup2: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
# Mounts the kubelet makes (volumes) must reach the containers.
mount --make-rshared /
# overlayfs cannot stack its upper layer on the overlay root: containerd's
# snapshots live in their own tmpfs, as do the kubelet's pods.
for d in /var/lib/containerd /var/lib/kubelet /var/log/pods /var/log/containers; do
  mkdir -p "$d" && mount -t tmpfs -o mode=0755 tmpfs "$d"
done
sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
ip route add default via 10.0.2.2 dev eth0 2>/dev/null || true
echo 10.0.2.15 nftvs-vm >>/etc/hosts

# --- containerd --------------------------------------------------------------
mkdir -p /etc/containerd /etc/cni/net.d /run/containerd
cat >/etc/containerd/config.toml <<'TOML'
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.2"
[plugins."io.containerd.cri.v1.runtime"]
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "/etc/cni/net.d"
TOML
# One bridge, the node's pod CIDR (the controller manager allocates
# 10.244.0.0/24 to the first node); pods leave the node masqueraded.
cat >/etc/cni/net.d/10-nftvs-node.conflist <<'JSON'
{
  "cniVersion": "0.4.0",
  "name": "nftvs-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]],
               "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
containerd --config /etc/containerd/config.toml >"$logs/containerd.log" 2>&1 &
for _ in $(seq 1 120); do
  ctr version >/dev/null 2>&1 && break
  sleep 1
done
ctr version >/dev/null 2>&1 || fail "containerd did not start (logs/containerd.log)"
state "containerd up"

for img in "$NODE_IMAGES"/*.tar; do
  ctr -n k8s.io images import --local "$img" >>"$logs/import.log" 2>&1 ||
    ctr -n k8s.io images import "$img" >>"$logs/import.log" 2>&1 || fail "import $img (logs/import.log)"
done
ctr -n k8s.io images ls -q >"$NODE_DIR/images"
state "images imported: $(tr '\n' ' ' <"$NODE_DIR/images")"

# --- the API server's way in --------------------------------------------------
# The API server's egress selector sends its connections to the kubelet,
# pods and Services as HTTP CONNECT to this proxy (hostfwd 8131, see
# cluster.sh): qemu's user network cannot route the pod CIDR to the host.
egress-proxy -listen :8131 >"$logs/egress-proxy.log" 2>&1 &
egress_pid=$!

# --- kubelet -----------------------------------------------------------------
kubelet --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/node.kubeconfig" \
  --node-ip 10.0.2.15 --hostname-override nftvs-vm --v "${NODE_KUBELET_V:-1}" >"$logs/kubelet.log" 2>&1 &
kubelet_pid=$!
state "kubelet started"

if [ "${NODE_PROXY:-nftvs}" = kube-proxy ]; then
  kube-proxy --config "$NODE_DIR/kube-proxy.yaml" --hostname-override nftvs-vm >"$logs/kube-proxy.log" 2>&1 &
  kp_pid=$!
  say "kube-proxy --proxy-mode=ipvs started"
fi

deadline=$((t0 + ${NODE_MAX_SECONDS:-3600}))
while [ ! -e "$NODE_DIR/stop" ] && [ "$(date +%s)" -lt "$deadline" ]; do
  kill -0 "$kubelet_pid" 2>/dev/null || fail "kubelet exited (logs/kubelet.log)"
  # A CPU load the host asks for (e2e/node/load.sh): "SECONDS LOOPS NICE
  # [RT]" in $NODE_DIR/busy starts LOOPS busy loops, each ended by timeout
  # after SECONDS: at that nice level or, with RT (µs per second), as
  # SCHED_FIFO tasks with kernel.sched_rt_runtime_us set to RT meanwhile,
  # so that every other task of the node (the kubelet, containerd, every
  # pod) shares the CPU time RT leaves of each second, as on a node whose
  # vCPUs the hypervisor hardly runs.
  if [ -e "$NODE_DIR/busy" ]; then
    read -r busy_s busy_n busy_nice busy_rt <"$NODE_DIR/busy" && rm -f "$NODE_DIR/busy"
    sched=(nice -n "$busy_nice")
    if [ -n "${busy_rt:-}" ]; then
      rt0=$(cat /proc/sys/kernel/sched_rt_runtime_us)
      echo "$busy_rt" >/proc/sys/kernel/sched_rt_runtime_us
      (sleep "$busy_s" && echo "$rt0" >/proc/sys/kernel/sched_rt_runtime_us) &
      sched=(chrt -f 1)
    fi
    for _ in $(seq 1 "$busy_n"); do
      timeout "$busy_s" "${sched[@]}" sh -c 'while :; do :; done' &
    done
    say "busy: $busy_n loops (${sched[*]}${busy_rt:+, rt runtime $busy_rt µs/s}) for $busy_s s"
  fi
  sleep 2
done
state "stopping"
# What the host cannot see from outside, kept for the report.
{
  ipvsadm -Ln; nft list ruleset; ip -d addr; ip route
  ctr -n k8s.io containers ls
  echo "--- top"; top -b -n1 | head -30
} >"$logs/node-state.txt" 2>&1
# The pods' own logs (nftvs, CoreDNS, what the tests left), every
# container instance the kubelet still keeps (restarts included).
cp -r /var/log/pods "$logs/pods" 2>/dev/null
kill "$kubelet_pid" ${kp_pid:-} "$egress_pid" 2>/dev/null
sleep 1
state "stopped"
