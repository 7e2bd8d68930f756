#!/usr/bin/env bash
# lane.sh: the short real-node lane (make test-node), run by cluster.sh
# once its nodes (node-1, node-2, node-3: one VM, see guest.sh) are Ready:
#   1. nftvs installed from deploy/ (kubectl apply -k e2e/cluster/deploy),
#      the DaemonSet rolled out on every node, its pods Ready through
#      their own probes, cluster DNS Ready through it
#   2. across nodes, with real pods (agnhost netexec), endpoints only on
#      node-2 and the client pod on node-1:
#      - pod → ClusterIP → pods on another node, by IP and by name (DNS),
#        and the source the backends see is the client pod's own IP
#      - outside (this host's namespace) → NodePort of an ETP=Local
#        Service (type LoadBalancer, never provisioned): answered by node-2 (with the client's own address as
#        the source), not answered by node-1 and node-3 (no local pod)
#      - the Service's health-check node port: 200 on node-2, 503 on
#        node-1 and node-3
#   3. a handful of upstream Service tests (e2e.test, lane-focus.txt),
#      every one of which must have run and passed
# With NFTVS_NODE_PROXY=kube-proxy step 1 checks kube-proxy instead.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${NFTVS_NODE_DIR:?run me through e2e/cluster/cluster.sh}"
bin=$NFTVS_NODE_BIN
kubectl() { "$bin/kubectl" "$@"; }
t0=$(date +%s)
step() { printf 'lane [%3ds]: %s\n' "$(($(date +%s) - t0))" "$*"; }
fail() { step "FAIL: $*"; exit 1; }

if [ "${NFTVS_NODE_PROXY:-nftvs}" = nftvs ]; then
  "$here/install-nftvs.sh" || fail "nftvs not installed"
  step "nftvs installed"
fi

nodeip() { kubectl get node "$1" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}'; }
ip1=$(nodeip node-1) ip2=$(nodeip node-2) ip3=$(nodeip node-3)
[ -n "$ip1" ] && [ -n "$ip2" ] && [ -n "$ip3" ] || fail "the lane needs nodes node-1, node-2 and node-3"

step "2 backends on node-2 (agnhost netexec), a client pod on node-1, a ClusterIP and an ETP=Local Service"
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
      nodeSelector: {kubernetes.io/hostname: node-2}
      containers:
      - name: agnhost
        image: registry.k8s.io/e2e-test-images/agnhost:2.63.0
        imagePullPolicy: Never
        # /hostname answers the pod's name, /clientip the peer address.
        args: [netexec, --http-port, "9376"]
        readinessProbe:
          httpGet: {path: /healthz, port: 9376}
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
metadata: {name: backend-local}
spec:
  # A health-check node port exists only for type LoadBalancer (no load
  # balancer is ever provisioned here: its NodePort is what is tested).
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 30256
  selector: {app: backend}
  ports: [{port: 80, targetPort: 9376, nodePort: 30080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeSelector: {kubernetes.io/hostname: node-1}
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
client_ip=$(kubectl -n lane get pod client -o jsonpath='{.status.podIP}')
backends=$(kubectl -n lane get pods -l app=backend -o jsonpath='{.items[*].metadata.name}')
all_seen() { local b; for b in $backends; do case " $1 " in *" $b "*) ;; *) return 1 ;; esac; done; }

# Inside the client pod, in one exec (an exec costs seconds under
# emulation): 10 requests to each URL, the answers as "N ANSWER" lines
# (N: the URL's position), bounded by curl's timeout. Up to 10 tries:
# on a starved node a backend's readiness probe can time out, and both
# proxies then take it out of the Service until it is Ready again (seen
# under kube-proxy on 6 December: one backend answered every request).
kubectl -n lane exec client -- cat /etc/resolv.conf | grep -q '^nameserver 10.96.0.10' || fail "client's resolv.conf does not name 10.96.0.10"
step "pod on node-1 → pods on node-2: ClusterIP $cip:80 by IP and by name (cluster DNS through the proxy), and the source IP seen"
seen() { awk -v n="$1" '$1 == n && NF > 1 { print $2 }' <<<"$answers" | sort -u | tr '\n' ' '; }
for try in $(seq 1 10); do
  answers=$(kubectl -n lane exec client -- sh -c '
    n=0
    for url in "$@"; do
      n=$((n + 1))
      for i in $(seq 1 10); do echo "$n $(curl -s --max-time 3 "$url")"; done
    done' sh "http://$cip/hostname" "http://$cip/clientip" "http://backend.lane.svc.cluster.local/hostname" 2>/dev/null || true)
  seen_ip=$(seen 1) seen_src=$(seen 2) seen_dns=$(seen 3)
  all_seen "$seen_ip" && all_seen "$seen_dns" && break
  step "try $try: ClusterIP answered by [$seen_ip], name by [$seen_dns]; ready: [$(kubectl -n lane get pods -l app=backend -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}')]"
  sleep 5
done
all_seen "$seen_ip" || fail "ClusterIP: saw [$seen_ip], want [$backends]"
step "ClusterIP ok: answered by $seen_ip"
# netexec answers host:port; every answer must be the client pod's IP.
srcs=$(for a in $seen_src; do echo "${a%:*}"; done | sort -u | tr '\n' ' ')
[ "$srcs" = "$client_ip " ] || fail "source IPs seen across nodes: [$srcs], want the client pod's [$client_ip]"
step "source IP ok: the backends saw $srcs(the client pod's own)"
all_seen "$seen_dns" || fail "Service name: saw [$seen_dns], want [$backends]"
step "DNS ok: backend.lane.svc.cluster.local answered by $seen_dns"

# From outside the cluster: this host's namespace, 172.18.0.100, on the
# nodes' network. Bounded: 20 requests at most per try, 30 tries.
step "outside → NodePort $ip2:30080 (ETP=Local, node-2 has the pods)"
seen=''
for _ in $(seq 1 30); do
  seen=$(for _ in $(seq 1 20); do curl -s --max-time 3 "http://$ip2:30080/hostname"; echo; done | sort -u | tr '\n' ' ')
  all_seen "$seen" && break
  sleep 2
done
all_seen "$seen" || fail "NodePort on node-2: saw [$seen], want [$backends]"
src=$(curl -s --max-time 3 "http://$ip2:30080/clientip")
[ "${src%:*}" = 172.18.0.100 ] || fail "NodePort on node-2 (ETP=Local): the pod saw source [$src], want this host's 172.18.0.100"
step "NodePort on node-2 ok: answered by $seen, source kept ($src)"
for ip in "$ip1" "$ip3"; do
  # No local endpoint: the node must not answer (nor forward elsewhere).
  for _ in 1 2 3; do
    if out=$(curl -s --max-time 3 "http://$ip:30080/hostname"); then
      fail "NodePort on $ip (no local endpoint, ETP=Local) answered [$out]"
    fi
  done
  step "NodePort on $ip: no answer (no local endpoint), ok"
done

step "health-check node port 30256: 200 on node-2, 503 on node-1 and node-3"
hc() { curl -s -o /dev/null --max-time 3 -w '%{http_code}' "http://$1:30256/" || true; }
for _ in $(seq 1 15); do
  got="$(hc "$ip1") $(hc "$ip2") $(hc "$ip3")"
  [ "$got" = "503 200 503" ] && break
  sleep 2
done
[ "$got" = "503 200 503" ] || fail "health-check node port (node-1 node-2 node-3): [$got], want [503 200 503]"
step "health-check node port ok: $got"

# Its pods' teardown would compete with the e2e tests' pod starts.
kubectl delete namespace lane --timeout=300s || step "namespace lane not gone yet"

if [ "${NFTVS_LANE_E2E:-1}" = 1 ]; then
  step "upstream Service tests (e2e.test): every one must run and pass"
  "$here/e2e.sh" -a -f "$here/lane-focus.txt" -o "$NFTVS_NODE_DIR/e2e-lane" || fail "e2e.test"
fi
step "PASS"
