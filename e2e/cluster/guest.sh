#!/bin/bash
# guest.sh: the machine that hosts the nodes, run inside the VM by
# e2e/vm/vmexec (started by cluster.sh, never by hand). One kernel, one
# boot, NODE_COUNT Kubernetes nodes built the way kind builds them from
# containers: each node is its own network, mount, UTS, PID and cgroup
# namespace (e2e/cluster/node.sh) with its own containerd, kubelet, state
# directories and pod CIDR, and a veth on the bridge "nodes". The
# bridge also holds eth0, the VM's link to the control plane in the
# host's private namespace (172.18.0.100), so the control plane, the
# nodes and their pods reach each other by plain routes, without NAT.
#
#   172.18.0.100  control plane (host, tap0)      172.18.0.1   this VM's root
#   172.18.0.11   node-1, zone-a                  172.18.0.12  node-2, zone-b
#   172.18.0.13   node-3, zone-c                  ...
# With NODE_STACK=dual each also has fd00:18::N on the same link (the
# same last number: fd00:18::100, fd00:18::1, fd00:18::11, ...), and
# every pod an address of each family.
#
# Once the controller manager has given every node a pod CIDR, this
# script writes each node's CNI configuration (bridge, host-local IPAM
# in that CIDR, no masquerade) and the routes between the pod CIDRs (what
# kind's kindnet does). It then waits until the host creates
# $NODE_DIR/stop (or the time is up), asks each node to write its state
# and stop, and exits.
#
# NFTVS_NODE_DIR (from cluster.sh through vmexec) is a host directory
# shared writable: config in, logs and state out. Its guest.env sets
# NODE_BIN (kubelet, kubectl), NODE_CONTAINERD (containerd,
# ctr, shim), NODE_IMAGES (OCI tarballs to import), NODE_PROXY
# (nftvs|kube-proxy), NODE_COUNT, NODE_STACK (ipv4|dual), NODE_MAX_SECONDS.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
t0=$(date +%s)
: "${NFTVS_NODE_DIR:?}"
NODE_DIR=$NFTVS_NODE_DIR
say() { echo "guest [$(($(date +%s) - t0))s]: $*" | tee -a "$NODE_DIR/guest.log"; }
state() { echo "$1" >"$NODE_DIR/state"; say "$1"; }
fail() { state "failed: $*"; exit 1; }
# shellcheck disable=SC1091 # written by cluster.sh
set -a; . "$NODE_DIR/guest.env"; set +a  # node.sh reads them too
export NODE_DIR
mkdir -p "$NODE_DIR/logs"
export PATH=$NODE_CONTAINERD:$NODE_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
kubectl() { "$NODE_BIN/kubectl" --kubeconfig "$NODE_DIR/node.kubeconfig" "$@"; }

# --- the kernel side ---------------------------------------------------------
# cgroup v2 only (the 1.36 kubelet refuses v1), every controller delegated
# down to the nodes' cgroups. nsdelegate makes each node's cgroup
# namespace a delegation boundary, as for a container.
mkdir -p /sys/fs/cgroup
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup || fail "cannot mount cgroup2"
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
  echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || say "controller $c: not delegated"
done
say "cgroup2: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
modprobe -a virtio_net veth bridge br_netfilter || fail "modules"

# The nodes' network: a bridge with eth0 (the control plane beyond it).
ip link add nodes type bridge || fail "bridge"
ip link set eth0 master nodes
ip link set eth0 up
ip link set nodes up
ip addr add 172.18.0.1/24 dev nodes
dual=0
[ "${NODE_STACK:-ipv4}" != dual ] || dual=1
[ "$dual" = 0 ] || ip -6 addr add fd00:18::1/64 dev nodes nodad
# This namespace only switches frames between the nodes; the nodes'
# own netfilter (their proxies) sees their traffic, this one must not.
sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0

# --- the images, imported once -------------------------------------------------
# An import reads each tarball over 9p, hashes and unpacks it: minutes
# under emulation, for ~250 MB. So one containerd imports them into a
# tmpfs here, and each node's containerd starts from a copy of that
# state (node.sh) on the same tmpfs: hard links for the content blobs and
# unpacked layers, which containerd never writes in place.
store=/var/lib/nftvs-nodes/store
mkdir -p "$store" && mount -t tmpfs -o mode=0755 tmpfs "$store" || fail "tmpfs on $store"
mkdir -p "$store/run"
cat >"$store/config.toml" <<TOML
version = 3
root = "$store/root"
state = "$store/run"
[grpc]
  address = "$store/run/containerd.sock"
TOML
containerd --config "$store/config.toml" >"$NODE_DIR/logs/containerd-import.log" 2>&1 &
ctrd=$!
ctr() { command ctr --address "$store/run/containerd.sock" "$@"; }
for _ in $(seq 1 120); do ctr version >/dev/null 2>&1 && break; sleep 1; done
for img in "$NODE_IMAGES"/*.tar "$NODE_IMAGES"/test/*.tar; do
  ctr -n k8s.io images import --local "$img" >>"$NODE_DIR/logs/import.log" 2>&1 ||
    ctr -n k8s.io images import "$img" >>"$NODE_DIR/logs/import.log" 2>&1 || fail "import $img (logs/import.log)"
done
ctr -n k8s.io images ls -q >"$NODE_DIR/images"
kill "$ctrd"
wait "$ctrd"
unset -f ctr
state "images imported: $(tr '\n' ' ' <"$NODE_DIR/images")"

# --- the nodes -----------------------------------------------------------------
zones=(zone-a zone-b zone-c)
declare -A waiter
for i in $(seq 1 "$NODE_COUNT"); do
  name=node-$i ip=172.18.0.$((10 + i)) zone=${zones[$(((i - 1) % 3))]}
  ip netns add "$name"
  ip link add "veth-$i" type veth peer name eth0 netns "$name"
  ip link set "veth-$i" master nodes up
  ip -n "$name" link set lo up
  ip -n "$name" link set eth0 up
  ip -n "$name" addr add "$ip/24" dev eth0
  ip -n "$name" route add default via 172.18.0.1
  # What a node's kernel needs for a proxy and the bridge CNI (these are
  # per network namespace). IPv6 forwarding is the node's own setting,
  # as on kind's nodes: neither proxy turns it on.
  ip netns exec "$name" sysctl -qw net.ipv4.ip_forward=1 \
    net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1
  if [ "$dual" = 1 ]; then
    ip -n "$name" addr add "fd00:18::$((10 + i))/64" dev eth0 nodad
    ip -n "$name" -6 route add default via fd00:18::1
    ip netns exec "$name" sysctl -qw net.ipv6.conf.all.forwarding=1
    ip="$ip,fd00:18::$((10 + i))"
  fi
  mkdir -p "/var/lib/nftvs-nodes/$name/net.d" "/sys/fs/cgroup/$name"
  # The node's containerd state: the imported one, hard-linked, with its
  # own copies of the bolt databases containerd writes.
  cp -al "$store/root" "$store/$name"
  (cd "$store/root" && find . -name '*.db') | while read -r f; do
    rm "$store/$name/$f" && cp "$store/root/$f" "$store/$name/$f"
  done
  # The node's cgroup namespace is rooted at /sys/fs/cgroup/NAME: enter
  # it before unshare. ip netns exec remounts /sys for the node's network
  # namespace (its own /sys/class/net); node.sh mounts its cgroup2 there.
  (
    echo "$BASHPID" >"/sys/fs/cgroup/$name/cgroup.procs"
    exec ip netns exec "$name" unshare --mount --uts --pid --cgroup --fork --mount-proc \
      /bin/bash "$here/node.sh" "$name" "$ip" "$zone"
  ) >"$NODE_DIR/logs/$name.log" 2>&1 &
  waiter[$name]=$!
  # unshare --fork waits for the node's PID 1 in the node's cgroup: a
  # process there would forbid the node to enable controllers for its
  # children (cgroup v2's no-internal-processes rule, which exempts only
  # the real root). Once PID 1 exists (the namespaces are made), move the
  # waiter out, as a container runtime keeps its shim outside.
  for _ in $(seq 1 100); do
    [ "$(wc -l <"/sys/fs/cgroup/$name/cgroup.procs")" -ge 2 ] && break
    sleep 0.1
  done
  echo "${waiter[$name]}" >/sys/fs/cgroup/cgroup.procs || fail "$name: cannot move its waiter out of its cgroup"
  say "$name ($ip, $zone) started"
done
state "nodes started"

# --- pod CIDRs: CNI configurations and routes ----------------------------------
# The controller manager gives each registered node a /24 of
# 10.244.0.0/16 (dual: and a /64 of fd00:10:244::/56); each node's CNI
# configuration needs them, and every node routes every other node's pod
# CIDRs to that node (same bridge).
deadline=$((t0 + 900))
while :; do
  kill -0 "${waiter[node-1]}" 2>/dev/null || fail "node-1 stopped (logs/node-1.log)"
  # NAME CIDR4 IP4 (dual: NAME CIDR4 CIDR6 IP4 IP6; both lists are in
  # the order of the flags, IPv4 first).
  cidrs=$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.podCIDRs[*]} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null |
    awk -v n=$((3 + 2 * dual)) 'NF == n')
  [ "$(echo "$cidrs" | grep -c .)" -ge "$NODE_COUNT" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "nodes without pod CIDRs: [$cidrs]"
  sleep 3
done
echo "$cidrs" >"$NODE_DIR/pod-cidrs"
while read -r name cidr cidr6 ip ip6; do
  if [ "$dual" = 0 ]; then ip=$cidr6 cidr6=''; fi
  ranges="[{\"subnet\": \"$cidr\"}]" routes='{"dst": "0.0.0.0/0"}'
  if [ "$dual" = 1 ]; then
    ranges="$ranges, [{\"subnet\": \"$cidr6\"}]" routes="$routes, {\"dst\": \"::/0\"}"
  fi
  cat >"/var/lib/nftvs-nodes/$name/net.d/10-nftvs-node.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "nftvs-node",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [$ranges],
               "routes": [$routes]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
  ip route replace "$cidr" via "$ip"
  [ "$dual" = 0 ] || ip route replace "$cidr6" via "$ip6"
  while read -r other _; do
    [ "$other" = "$name" ] && continue
    ip -n "$other" route replace "$cidr" via "$ip"
    [ "$dual" = 0 ] || ip -n "$other" route replace "$cidr6" via "$ip6"
  done <<<"$cidrs"
done <<<"$cidrs"
state "pod CIDRs routed: $(echo "$cidrs" | tr '\n' ';')"

# Where the VM's CPU goes, every 30 s, into logs/vm-cpu.log: a cluster
# that is slow for one proxy and not the other must be explained by
# measurement. Per-process times miss what a process execs (kube-proxy
# IPVS mode runs iptables-restore and ipset on each sync), so this reads
# cgroup totals, which count every process that ever ran in the cgroup,
# and the kernel's fork counter. CPU seconds are cumulative.
cgroup_secs() { awk '$1 == "usage_usec" { printf "%.1f", $2 / 1e6 }' "$1/cpu.stat" 2>/dev/null || echo -; }
sample_cpu() {
  local line comm pid cg
  line="t=$(($(date +%s) - t0))s load=$(cut -d' ' -f1 /proc/loadavg) forks=$(awk '$1 == "processes" { print $2 }' /proc/stat)"
  for name in "${!waiter[@]}"; do
    line+=" | $name=$(cgroup_secs "/sys/fs/cgroup/$name") pods=$(cgroup_secs "/sys/fs/cgroup/$name/kubepods" 2>/dev/null)"
  done
  echo "$line"
  # The proxies and node daemons: own CPU, their children's, and the
  # cgroup they run in (for a pod's container: every process it ran).
  for pid in $(pgrep -x 'kube-proxy|nftvs|kubelet|containerd'); do
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    cg=$(sed -n 's/^0:://p' "/proc/$pid/cgroup" 2>/dev/null)
    awk -v comm="$comm" -v pid="$pid" -v cg="${cg:-?}" -v cgs="$(cgroup_secs "/sys/fs/cgroup$cg")" -v hz="$(getconf CLK_TCK)" \
      '{ sub(/^.*\) /, ""); printf "  %s %s self=%.1f children=%.1f cgroup=%s %s\n", comm, pid, ($12 + $13) / hz, ($14 + $15) / hz, cgs, cg }' "/proc/$pid/stat"
  done
}
deadline=$((t0 + ${NODE_MAX_SECONDS:-3600}))
i=0
while [ ! -e "$NODE_DIR/stop" ] && [ "$(date +%s)" -lt "$deadline" ]; do
  for name in "${!waiter[@]}"; do
    kill -0 "${waiter[$name]}" 2>/dev/null || fail "$name stopped (logs/$name.log)"
  done
  [ $((i++ % 15)) != 0 ] || sample_cpu >>"$NODE_DIR/logs/vm-cpu.log" 2>&1
  sleep 2
done
state "stopping"
# Each node's PID 1 (node.sh) writes its state and pod logs on TERM.
for name in "${!waiter[@]}"; do
  kill -TERM $(cat "/proc/${waiter[$name]}/task/${waiter[$name]}/children" 2>/dev/null) 2>/dev/null
done
for name in "${!waiter[@]}"; do
  for _ in $(seq 1 30); do kill -0 "${waiter[$name]}" 2>/dev/null || break; sleep 1; done
done
{ ip -d addr; ip route; echo "--- top"; top -b -n1 | head -40; } >"$NODE_DIR/logs/vm-state.txt" 2>&1
state "stopped"
