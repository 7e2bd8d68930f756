#!/usr/bin/env bash
# lane.sh: the short real-node lane (make test-node), run by cluster.sh
# once the node is Ready:
#   1. nftvs installed from deploy/ (kubectl apply -k e2e/node/deploy, the
#      user's one setting applied), the DaemonSet rolled out under the
#      kubelet, its pod Ready through its own probes
#   2. real pods (agnhost) behind a ClusterIP and a NodePort Service: a
#      client pod reaches them through the ClusterIP and through the
#      Service's name (cluster DNS: CoreDNS behind the kube-dns Service,
#      itself reached through the proxy), and a client outside the node
#      (this host, through the node's address) through the NodePort
#   3. a handful of upstream Service conformance tests (e2e.test)
# With NFTVS_NODE_PROXY=kube-proxy step 1 checks kube-proxy instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${NFTVS_NODE_DIR:?run me through e2e/node/cluster.sh}"
bin=$NFTVS_NODE_BIN
kubectl() { "$bin/kubectl" "$@"; }
t0=$(date +%s)
step() { printf 'lane [%3ds]: %s\n' "$(($(date +%s) - t0))" "$*"; }
fail() { step "FAIL: $*"; exit 1; }

if [ "${NFTVS_NODE_PROXY:-nftvs}" = nftvs ]; then
  "$here/install-nftvs.sh" || fail "nftvs not installed"
  step "nftvs installed"
fi

step "backends (agnhost serve-hostname), a ClusterIP and a NodePort Service"
kubectl create namespace lane
kubectl -n lane apply -f - <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: backend}
spec:
  replicas: 2
  selector: {matchLabels: {app: backend}}
  template:
    metadata: {labels: {app: backend}}
    spec:
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.63.0
        imagePullPolicy: Never
        args: [serve-hostname, --http, --port, "9376"]
        readinessProbe:
          httpGet: {path: /, port: 9376}
          periodSeconds: 2
---
apiVersion: v1
kind: Service
metadata: {name: backend}
spec:
  selector: {app: backend}
  ports: [{port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Service
metadata: {name: backend-np}
spec:
  type: NodePort
  selector: {app: backend}
  ports: [{port: 80, targetPort: 9376, nodePort: 30080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - name: agnhost
    image: registry.k8s.io/e2e-test-images/agnhost:2.63.0
    imagePullPolicy: Never
    args: [pause]
YAML
kubectl -n lane rollout status deploy/backend --timeout=600s || fail "backends not ready"
kubectl -n lane wait --for=condition=Ready pod/client --timeout=600s || fail "client pod not ready"
kubectl -n lane get pods -o wide
cip=$(kubectl -n lane get svc backend -o jsonpath='{.spec.clusterIP}')
backends=$(kubectl -n lane get pods -l app=backend -o jsonpath='{.items[*].metadata.name}')

# Every backend must answer, through the ClusterIP, within a bounded
# number of requests (rr: two suffice once programmed).
hits() { # CMD... → the distinct hostnames seen in 20 requests
  local seen='' i h
  for i in $(seq 1 20); do
    h=$("$@" 2>/dev/null || true)
    case " $seen " in *" $h "*) ;; *) [ -n "$h" ] && seen="$seen $h" ;; esac
  done
  echo "$seen"
}
all_seen() { local b; for b in $backends; do case " $1 " in *" $b "*) ;; *) return 1 ;; esac; done; }

# 20 requests from inside the client pod, in one exec (an exec costs
# seconds under emulation): the hostnames that answered, one a line.
in_client() { # URL
  kubectl -n lane exec client -- sh -c \
    'for i in $(seq 1 20); do curl -s --max-time 3 "$0"; echo; done' "$1" 2>/dev/null | sort -u | tr '\n' ' ' || true
}
step "pod → ClusterIP $cip:80 → pods"
seen=$(in_client "http://$cip/")
all_seen "$seen" || fail "ClusterIP: saw [$seen], want [$backends]"
step "ClusterIP ok: answered by $seen"

step "pod → backend.lane.svc.cluster.local (cluster DNS, kube-dns at 10.96.0.10 through the proxy) → pods"
kubectl -n lane exec client -- cat /etc/resolv.conf | grep -q '^nameserver 10.96.0.10' || fail "client's resolv.conf does not name 10.96.0.10"
seen=$(in_client "http://backend.lane.svc.cluster.local/")
all_seen "$seen" || fail "Service name: saw [$seen], want [$backends]"
step "DNS ok: answered by $seen"

step "outside → NodePort 10.0.2.15:30080 → pods"
seen=''
for _ in $(seq 1 30); do
  seen=$(hits curl -s --max-time 3 http://10.0.2.15:30080/)
  all_seen "$seen" && break
  sleep 2
done
all_seen "$seen" || fail "NodePort: saw [$seen], want [$backends]"
step "NodePort ok: answered by$seen"
# Its pods' teardown would compete with the e2e tests' pod starts.
kubectl delete namespace lane --timeout=300s || step "namespace lane not gone yet"

if [ "${NFTVS_LANE_E2E:-1}" = 1 ]; then
  step "upstream Service conformance tests (e2e.test)"
  "$here/e2e.sh" -f "$here/lane-focus.txt" -o "$NFTVS_NODE_DIR/e2e-lane" || fail "e2e.test"
fi
step "PASS"
