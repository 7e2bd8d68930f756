#!/bin/bash
# node.sh NAME IP[,IP6] ZONE: one Kubernetes node, PID 1 of its own PID
# namespace, inside its own network, mount, UTS and cgroup namespaces
# (made by guest.sh, as a container runtime makes kind's nodes): cgroup
# v2 rooted at the node's cgroup, its own /run and state directories,
# containerd 2 with runc and the bridge CNI plugin (configuration in
# /var/lib/nftvs-nodes/NAME/net.d, written by guest.sh once the node has
# a pod CIDR) starting from the images guest.sh imported, the kubelet
# registered as NAME with InternalIP IP and label
# topology.kubernetes.io/zone=ZONE. The proxy (nftvs or kube-proxy) is
# a DaemonSet, as on kind. On TERM it writes its state and
# its pods' logs to $NODE_DIR/logs/NAME/ and stops.
set -uo pipefail
name=$1 ip=$2 zone=$3
t0=$(date +%s)
logs=$NODE_DIR/logs/$name
mkdir -p "$logs"
say() { echo "$name [$(($(date +%s) - t0))s]: $*" | tee -a "$NODE_DIR/guest.log"; }
fail() { say "failed: $*"; exit 1; }
sd=/var/lib/nftvs-nodes/$name
hostname "$name"
# Mounts the kubelet makes (volumes) must reach the containers.
mount --make-rshared /

# cgroup v2 as the node sees it: the root is its own cgroup. Its
# processes move to /init so that the root can delegate controllers to
# the kubelet's /kubepods (no internal processes), as kind's entrypoint
# does; guest.sh moves the unshare waiter out.
mount -t cgroup2 cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
mkdir -p /sys/fs/cgroup/init
echo $$ >/sys/fs/cgroup/init/cgroup.procs || fail "cannot enter /init"
for _ in $(seq 1 100); do
  [ -s /sys/fs/cgroup/cgroup.procs ] || break
  sleep 0.1
done
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || fail "cannot delegate controller $c"
done

# The node's own state: nothing shared with the other nodes. overlayfs
# cannot stack its upper layer on the overlay root, so containerd's
# snapshots (and everything else) live in tmpfs.
for d in /run /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers; do
  mkdir -p "$d" && mount -t tmpfs -o mode=0755 tmpfs "$d" || fail "tmpfs on $d"
done
# containerd's state, images already in it (guest.sh).
mkdir -p /var/lib/containerd
mount --bind "/var/lib/nftvs-nodes/store/$name" /var/lib/containerd || fail "containerd state"
echo "${ip%%,*} $name" >>/etc/hosts

stop() {
  say "stopping"
  {
    ipvsadm -Ln; nft list ruleset; ip -d addr; ip route
    ctr -n k8s.io containers ls
  } >"$logs/node-state.txt" 2>&1
  # The pods' own logs (nftvs, CoreDNS, what the tests left), every
  # container instance the kubelet still keeps (restarts included).
  cp -r /var/log/pods "$logs/pods" 2>/dev/null
  kill $(jobs -p) 2>/dev/null
  exit 0
}
trap stop TERM

# --- containerd --------------------------------------------------------------
cat >"$sd/containerd.toml" <<TOML
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
    conf_dir = "$sd/net.d"
TOML
containerd --config "$sd/containerd.toml" >"$logs/containerd.log" 2>&1 &
for _ in $(seq 1 120); do
  ctr version >/dev/null 2>&1 && break
  sleep 1
done
ctr version >/dev/null 2>&1 || fail "containerd did not start (logs/$name/containerd.log)"
say "containerd up"

# --- kubelet -----------------------------------------------------------------
kubelet --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$NODE_DIR/node.kubeconfig" \
  --node-ip "$ip" --hostname-override "$name" --node-labels "topology.kubernetes.io/zone=$zone" \
  --v "${NODE_KUBELET_V:-1}" >"$logs/kubelet.log" 2>&1 &
kubelet_pid=$!
say "kubelet started"
# PID 1 of the node (bash reaps the orphans) until TERM; the node
# fails if its kubelet stops.
while kill -0 "$kubelet_pid" 2>/dev/null; do sleep 2; done
fail "kubelet exited (logs/$name/kubelet.log)"
