#!/usr/bin/env bash
# cluster.sh [-p nftvs|kube-proxy] [-k] CMD [ARGS...]
#
# A throwaway Kubernetes cluster of NFTVS_NODES nodes (default 3), then
# CMD against it:
#   host, in a private network namespace: etcd, kube-apiserver,
#     kube-controller-manager, kube-scheduler (e2e/tools builds them)
#   one VM (e2e/vm/vmexec, Debian kernel, cgroup v2) holding the nodes
#     node-1, node-2, ... (e2e/cluster/guest.sh, node.sh): each its own
#     network, mount, UTS, PID and cgroup namespace with containerd 2 +
#     runc + bridge CNI and a kubelet, pod CIDRs routed between nodes
#     without masquerade, zones zone-a, zone-b, zone-c
#   cluster DNS: CoreDNS, the kube-dns Service at 10.96.0.10 (e2e/node/dns.sh, shared with the one-node harness)
# CMD runs on the host with KUBECONFIG set, when every node is Ready; its
# exit status is cluster.sh's. -p kube-proxy also runs upstream kube-proxy
# --proxy-mode=ipvs on every node (nftvs is installed by CMD, from deploy/).
# -k keeps the run directory (logs of every component) even on success.
#
# The network namespace is private to this run: its ports (6443, 2379)
# never clash with other runs on the machine, and nothing leaves it. Its
# one link is the tap device tap0 (172.18.0.100/24), the VM's eth0, which
# the VM bridges to its nodes: the API server, CMD and the e2e tests reach
# node IPs (172.18.0.11, ...) and, by routes added here, pod IPs directly,
# as on a real cluster's network.
#
# Environment: NFTVS_NODES (node count, default 3), NFTVS_NODE_NOBUILD=1
# (use the cache as it is, build nothing), NFTVS_NODE_DIR (run directory,
# default a new /tmp dir), NFTVS_NODE_TIMEOUT (seconds the VM may live,
# default 3600), NFTVS_NODE_MEM (guest MiB, default 2048 + 1024 a node),
# NFTVS_KERNEL, NFTVS_CLUSTER_STACK (ipv4, the default, or dual: IPv4 and
# IPv6 pod and Service CIDRs, nodes with an address of each family, as
# upstream's dual-stack kind job builds its cluster).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
proxy=nftvs keep=0
while getopts p:k o; do
  case $o in
    p) proxy=$OPTARG ;;
    k) keep=1 ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: cluster.sh [-p nftvs|kube-proxy] [-k] CMD [ARGS...]" >&2; exit 2; }
case $proxy in nftvs | kube-proxy) ;; *) echo "cluster.sh: -p nftvs|kube-proxy" >&2; exit 2 ;; esac

# Builds first (cached; they may need the module proxy), outside the
# namespace.
if [ "${_NFTVS_NODE_NETNS:-}" != 1 ] && [ "${NFTVS_NODE_NOBUILD:-0}" = 1 ]; then
  # What the cache has, as it is (NFTVS_NODE_IMAGES: another image dir).
  cache=${NFTVS_CACHE:-/var/cache/nftvs}
  _bin=$cache/bin/$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$root/e2e/tools/go.mod")
  _ctrd=$cache/bin/containerd-$(awk '/^require github.com\/containerd\/containerd\/v2/ {print $3}' "$root/e2e/tools/containerd/go.mod")
  _images=${NFTVS_NODE_IMAGES:-$cache/images}
  export _bin _ctrd _images
elif [ "${_NFTVS_NODE_NETNS:-}" != 1 ]; then
  export PATH=/usr/local/go/bin:$PATH
  _bin=$(nice -n 15 "$root/e2e/tools/build.sh")
  nice -n 15 "$root/e2e/tools/coredns/build.sh" >/dev/null
  nice -n 15 "$root/e2e/tools/node/build.sh" kubelet kube-controller-manager kube-scheduler kubectl >/dev/null
  _ctrd=$(nice -n 15 "$root/e2e/tools/containerd/build.sh")
  _images=$(nice -n 15 "$here/images.sh")
  export _bin _ctrd _images
fi
bin=$_bin ctrd=$_ctrd images=$_images

# Into a private network namespace (once): everything below, the VM's
# qemu included, lives there and disappears with it.
if [ "${_NFTVS_NODE_NETNS:-}" != 1 ]; then
  export _NFTVS_NODE_NETNS=1
  exec unshare --net -- "$0" -p "$proxy" $([ "$keep" = 1 ] && echo -k) "$@"
fi
ip link set lo up
# The VM's network: qemu joins tap0 to the guest's eth0, which the guest
# bridges to its nodes.
ip tuntap add dev tap0 mode tap
ip addr add 172.18.0.100/24 dev tap0
ip link set tap0 up
nodes=${NFTVS_NODES:-3}
# The cluster's address plan (guest.sh has the nodes' side of it).
stack=${NFTVS_CLUSTER_STACK:-ipv4}
case $stack in
  ipv4)
    service_cidrs=10.96.0.0/16 pod_cidrs=10.244.0.0/16
    node_cidr_masks=(--node-cidr-mask-size 24)
    ;;
  dual)
    service_cidrs=10.96.0.0/16,fd00:10:96::/112 pod_cidrs=10.244.0.0/16,fd00:10:244::/56
    node_cidr_masks=(--node-cidr-mask-size-ipv4 24 --node-cidr-mask-size-ipv6 64)
    # nodad: the address is usable at once (no duplicate on this link).
    ip -6 addr add fd00:18::100/64 dev tap0 nodad
    ;;
  *) echo "cluster.sh: NFTVS_CLUSTER_STACK: ipv4 or dual, not $stack" >&2; exit 2 ;;
esac

log() { printf 'cluster [%s]: %s\n' "$(date +%T)" "$*" >&2; }

dir=${NFTVS_NODE_DIR:-$(mktemp -d /tmp/nftvs-node.XXXXXX)}
mkdir -p "$dir/logs"
pids=()
vm_pid=''
cleanup() {
  local rc=$?
  touch "$dir/stop"
  if [ -n "$vm_pid" ]; then
    # The guest stops its kubelet and writes node-state.txt, then powers off.
    for _ in $(seq 1 60); do kill -0 "$vm_pid" 2>/dev/null || break; sleep 1; done
    kill "$vm_pid" 2>/dev/null || true
  fi
  # kube-apiserver's graceful shutdown can hang once etcd is gone.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 1 10); do
    alive=''
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || break
    sleep 1
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [ "$rc" != 0 ] || [ "$keep" = 1 ]; then log "run directory kept: $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- control plane on the host ----------------------------------------------
token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token,admin,admin,system:masters" >"$dir/tokens.csv"
openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
kubeconfig() { # FILE SERVER
  cat >"$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$2", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: "$token"}
contexts:
- name: local
  context: {cluster: local, user: admin}
current-context: local
KC
}
kubeconfig "$dir/admin.kubeconfig" https://127.0.0.1:6443
kubeconfig "$dir/node.kubeconfig" https://172.18.0.100:6443
export KUBECONFIG=$dir/admin.kubeconfig

start() { # NAME CMD...
  local name=$1
  shift
  "$@" >"$dir/logs/$name.log" 2>&1 &
  pids+=($!)
}
start etcd etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379
start kube-apiserver "$bin/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
  --bind-address 0.0.0.0 --secure-port 6443 --advertise-address 172.18.0.100 \
  --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" \
  --service-account-key-file "$dir/sa.key" --service-account-signing-key-file "$dir/sa.key" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-cluster-ip-range "$service_cidrs" --authorization-mode Node,RBAC \
  --allow-privileged=true --kubelet-preferred-address-types InternalIP
kubectl() { "$bin/kubectl" "$@"; }
for _ in $(seq 1 120); do
  kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl get --raw /readyz >/dev/null || { tail -20 "$dir/logs/kube-apiserver.log" >&2; exit 1; }
log "kube-apiserver ready"
# Its self-signed certificate file holds the CA too: the root of trust
# the pods get (kube-root-ca.crt) for https://172.18.0.100:6443 (a SAN).
[ -x "$bin/kube-controller-manager" ] || log "WARNING: no kube-controller-manager yet"
[ -x "$bin/kube-scheduler" ] || log "WARNING: no kube-scheduler yet"
[ ! -x "$bin/kube-controller-manager" ] || start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$dir/admin.kubeconfig" \
  --service-account-private-key-file "$dir/sa.key" --root-ca-file "$dir/certs/apiserver.crt" \
  --use-service-account-credentials --leader-elect=false \
  --allocate-node-cidrs --cluster-cidr "$pod_cidrs" "${node_cidr_masks[@]}" \
  --service-cluster-ip-range "$service_cidrs" --bind-address 127.0.0.1
[ ! -x "$bin/kube-scheduler" ] || start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$dir/admin.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1

# --- the nodes ---------------------------------------------------------------
cat >"$dir/kubelet.yaml" <<'YAML'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDomain: cluster.local
clusterDNS: [10.96.0.10]
failSwapOn: false
resolvConf: /etc/resolv.conf
serializeImagePulls: false
# Under emulation on a loaded machine containerd can need minutes for a
# sandbox (shim start, CNI); the default 2 min makes the kubelet give up
# and retry into "failed to reserve sandbox name" until the first try ends.
runtimeRequestTimeout: 10m
nodeStatusUpdateFrequency: 10s
# Everything lives in tmpfs: evict only when memory is really short.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%", imagefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
YAML
cat >"$dir/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
clientConnection: {kubeconfig: $dir/node.kubeconfig}
clusterCIDR: $pod_cidrs
detectLocalMode: ClusterCIDR
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
ipvs: {scheduler: rr, syncPeriod: 30s}
# The nodes share one kernel: nf_conntrack_max can only be written from
# the initial network namespace, so leave it alone, as kind does.
conntrack: {maxPerCore: 0}
YAML
cat >"$dir/guest.env" <<ENV
NODE_BIN=$bin
NODE_CONTAINERD=$ctrd
NODE_IMAGES=$images
NODE_PROXY=$proxy
NODE_COUNT=$nodes
NODE_STACK=$stack
NODE_MAX_SECONDS=${NFTVS_NODE_TIMEOUT:-3600}
ENV
log "booting the VM with $nodes nodes (run directory $dir)"
NFTVS_VM_TAP=tap0 NFTVS_NODE_DIR=$dir NFTVS_VM_RW=$dir \
  NFTVS_VM_MEM=${NFTVS_NODE_MEM:-$((2048 + 1024 * nodes))} NFTVS_VM_TIMEOUT=$((${NFTVS_NODE_TIMEOUT:-3600} + 120)) \
  "$root/e2e/vm/vmexec" /bin/bash "$here/guest.sh" >"$dir/logs/vm.log" 2>&1 &
vm_pid=$!

t=$(date +%s)
ready() { kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True; }
for _ in $(seq 1 600); do
  kill -0 "$vm_pid" 2>/dev/null || { cat "$dir/logs/vm.log" >&2; log "the VM stopped"; exit 1; }
  [ "$(ready)" -ge "$nodes" ] && break
  sleep 2
done
kubectl get nodes -o wide -L topology.kubernetes.io/zone || exit 1
[ "$(ready)" -ge "$nodes" ] || { log "not every node is Ready"; exit 1; }
log "$nodes nodes Ready $(($(date +%s) - t)) s after boot started"
# This namespace (the API server's pods/proxy, the e2e tests) reaches
# the pods by the same routes the nodes use (guest.sh): each pod CIDR
# (one per family) via the node's address of its family.
samefamily() { [[ ($1 == *:* && $2 == *:*) || ($1 != *:* && $2 != *:*) ]]; }
kubectl get nodes -o jsonpath='{range .items[*]}{.spec.podCIDRs[*]} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' |
  while read -r -a f; do
    for cidr in "${f[@]}"; do
      [[ $cidr == */* ]] || continue
      for ip in "${f[@]}"; do
        [[ $ip == */* ]] || ! samefamily "$cidr" "$ip" || ip route replace "$cidr" via "$ip"
      done
    done
  done

export NFTVS_NODE_DIR=$dir NFTVS_NODE_PROXY=$proxy NFTVS_NODE_BIN=$bin NFTVS_CLUSTER_STACK=$stack NFTVS_CLUSTER_POD_CIDRS=$pod_cidrs
# Cluster DNS (CoreDNS as kubeadm deploys it): created now, Ready once a
# proxy runs: here for kube-proxy, after the install for nftvs
# (install-nftvs.sh).
"$here/../node/dns.sh" apply
if [ "$proxy" = kube-proxy ]; then
  # kube-proxy as kind runs it: a DaemonSet in kube-system, pods labelled
  # k8s-app=kube-proxy (upstream's "restart kube-proxy" test deletes
  # them). There is no kube-proxy image here: the pod (agnhost's image,
  # for its busybox chroot) runs the cached kube-proxy binary in the
  # node's own root, which has iptables and ipset.
  kubectl apply -f - <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: kube-proxy, namespace: kube-system, labels: {k8s-app: kube-proxy}}
spec:
  selector: {matchLabels: {k8s-app: kube-proxy}}
  template:
    metadata: {labels: {k8s-app: kube-proxy}}
    spec:
      hostNetwork: true
      priorityClassName: system-node-critical
      tolerations: [{operator: Exists}]
      containers:
      - name: kube-proxy
        image: registry.k8s.io/e2e-test-images/agnhost:2.63.0
        imagePullPolicy: Never
        command: [chroot, /host, $bin/kube-proxy, --config, $dir/kube-proxy.yaml, --hostname-override, \$(NODE_NAME)]
        env: [{name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
        securityContext: {privileged: true}
        volumeMounts: [{name: host, mountPath: /host}]
      volumes: [{name: host, hostPath: {path: /}}]
YAML
  kubectl -n kube-system rollout status ds/kube-proxy --timeout=600s || { log "kube-proxy not rolled out"; exit 1; }
  "$here/../node/dns.sh" wait || { log "cluster DNS not Ready"; exit 1; }
fi
"$@"
