#!/usr/bin/env bash
# cluster.sh [-p nftvs|kube-proxy] [-k] CMD [ARGS...]
#
# A throwaway one-node Kubernetes cluster, then CMD against it:
#   host, in a private network namespace: etcd, kube-apiserver,
#     kube-controller-manager, kube-scheduler (e2e/tools builds them)
#   VM (e2e/vm/vmexec, Debian kernel, cgroup v2): containerd 2 + runc +
#     bridge CNI, the kubelet, node "nftvs-vm" (e2e/node/guest.sh)
#   cluster DNS: CoreDNS, the kube-dns Service at 10.96.0.10 (dns.sh)
# CMD runs on the host with KUBECONFIG set, when the node is Ready; its
# exit status is cluster.sh's. -p kube-proxy also runs upstream kube-proxy
# --proxy-mode=ipvs on the node (nftvs is installed by CMD, from deploy/).
# -k keeps the run directory (logs of every component) even on success.
#
# The network namespace is private to this run: the API server listens on
# its 127.0.0.1:6443 (no clash with other runs on the machine), the VM
# reaches it as 10.0.2.100:6443 through qemu's guestfwd, and the node's
# address 10.0.2.15 is put on the namespace's loopback with qemu hostfwd
# rules for the node's egress-proxy (8131: the API server's egress selector
# reaches the kubelet, pods and Services through it), the kubelet (10250)
# and one NodePort (30080), so the API server and CMD reach the node as in
# a real cluster. Nothing leaves the machine.
#
# Environment: NFTVS_NODE_NOBUILD=1 (use the cache as it is, build
# nothing), NFTVS_NODE_DIR (run directory, default a new /tmp dir),
# NFTVS_NODE_TIMEOUT (seconds the VM may live, default 3600),
# NFTVS_NODE_MEM (guest MiB, default 4096), NFTVS_KERNEL.
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
  nice -n 15 "$root/e2e/tools/node/build.sh" kubelet kube-controller-manager kube-scheduler kubectl egress-proxy >/dev/null
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
ip addr add 10.0.2.15/32 dev lo
# Connections to it leave from 127.0.0.1: qemu's user network hands a
# forwarded connection from loopback to the guest as coming from its
# gateway 10.0.2.2, but one from 10.0.2.15 as from the guest's own
# address, which the guest drops.
ip route replace local 10.0.2.15 dev lo table local src 127.0.0.1

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
kubeconfig "$dir/node.kubeconfig" https://10.0.2.100:6443
export KUBECONFIG=$dir/admin.kubeconfig

start() { # NAME CMD...
  local name=$1
  shift
  "$@" >"$dir/logs/$name.log" 2>&1 &
  pids+=($!)
}
# Everything the API server sends to the node, its pods and Services
# (kubelet exec/logs, pods/proxy, services/proxy) goes through the
# node's egress-proxy (guest.sh): the host cannot route to pod IPs behind
# qemu's user network, and upstream's e2e tests ask pods for responses
# through pods/proxy. The API server dials a unix socket that socat
# joins to the proxy's hostfwd: kube-apiserver 1.36.3 accepts an http://
# TCP proxy URL in validation but then dereferences the missing tlsConfig
# and panics (egressselector.getTLSConfig; kubernetes#92690, the fix of
# kubernetes#136470 is not in 1.36.3).
cat >"$dir/egress.yaml" <<YAML
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds: {udsName: "$dir/egress.sock"}
YAML
start egress-socket socat UNIX-LISTEN:"$dir/egress.sock",fork TCP:10.0.2.15:8131
start etcd etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:2379 \
  --advertise-client-urls http://127.0.0.1:2379
start kube-apiserver "$bin/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
  --bind-address 0.0.0.0 --secure-port 6443 --advertise-address 10.0.2.100 \
  --cert-dir "$dir/certs" --token-auth-file "$dir/tokens.csv" \
  --service-account-key-file "$dir/sa.key" --service-account-signing-key-file "$dir/sa.key" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-cluster-ip-range 10.96.0.0/16 --authorization-mode Node,RBAC \
  --allow-privileged=true --kubelet-preferred-address-types InternalIP \
  --egress-selector-config-file "$dir/egress.yaml"
kubectl() { "$bin/kubectl" "$@"; }
for _ in $(seq 1 120); do
  kubectl get --raw /readyz >/dev/null 2>&1 && break
  sleep 0.5
done
kubectl get --raw /readyz >/dev/null || { tail -20 "$dir/logs/kube-apiserver.log" >&2; exit 1; }
log "kube-apiserver ready"
# Its self-signed certificate file holds the CA too: the root of trust
# the pods get (kube-root-ca.crt) for https://10.0.2.100:6443 (a SAN).
[ -x "$bin/kube-controller-manager" ] || log "WARNING: no kube-controller-manager yet"
[ -x "$bin/kube-scheduler" ] || log "WARNING: no kube-scheduler yet"
[ ! -x "$bin/kube-controller-manager" ] || start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$dir/admin.kubeconfig" \
  --service-account-private-key-file "$dir/sa.key" --root-ca-file "$dir/certs/apiserver.crt" \
  --use-service-account-credentials --leader-elect=false \
  --allocate-node-cidrs --cluster-cidr 10.244.0.0/16 --node-cidr-mask-size 24 \
  --service-cluster-ip-range 10.96.0.0/16 --bind-address 127.0.0.1
[ ! -x "$bin/kube-scheduler" ] || start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$dir/admin.kubeconfig" \
  --leader-elect=false --bind-address 127.0.0.1

# --- the node ----------------------------------------------------------------
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
clusterCIDR: 10.244.0.0/16
detectLocalMode: ClusterCIDR
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
ipvs: {scheduler: rr, syncPeriod: 30s}
YAML
cat >"$dir/guest.env" <<ENV
NODE_BIN=$bin
NODE_CONTAINERD=$ctrd
NODE_IMAGES=$images
NODE_PROXY=$proxy
NODE_MAX_SECONDS=${NFTVS_NODE_TIMEOUT:-3600}
ENV
log "booting the node (run directory $dir)"
NFTVS_VM_APISERVER=1 NFTVS_NODE_DIR=$dir NFTVS_VM_RW=$dir \
  NFTVS_VM_MEM=${NFTVS_NODE_MEM:-4096} NFTVS_VM_TIMEOUT=$((${NFTVS_NODE_TIMEOUT:-3600} + 120)) \
  NFTVS_VM_HOSTFWD="tcp:10.0.2.15:8131-:8131 tcp:10.0.2.15:10250-:10250 tcp:10.0.2.15:30080-:30080" \
  "$root/e2e/vm/vmexec" /bin/bash "$here/guest.sh" >"$dir/logs/vm.log" 2>&1 &
vm_pid=$!

t=$(date +%s)
for _ in $(seq 1 600); do
  kill -0 "$vm_pid" 2>/dev/null || { cat "$dir/logs/vm.log" >&2; log "the VM stopped"; exit 1; }
  if kubectl get node nftvs-vm -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; then
    break
  fi
  sleep 2
done
kubectl get node nftvs-vm -o wide || exit 1
kubectl wait --for=condition=Ready node/nftvs-vm --timeout=1s >/dev/null || { log "node not Ready"; exit 1; }
log "node Ready $(($(date +%s) - t)) s after boot started"

export NFTVS_NODE_DIR=$dir NFTVS_NODE_PROXY=$proxy NFTVS_NODE_BIN=$bin
# Cluster DNS (CoreDNS as kubeadm deploys it): created now, Ready once a
# proxy runs: here for kube-proxy, after the install for nftvs
# (install-nftvs.sh).
"$here/dns.sh" apply
if [ "$proxy" = kube-proxy ]; then
  "$here/dns.sh" wait || { log "cluster DNS not Ready"; exit 1; }
fi
"$@"
