#!/usr/bin/env bash
# The demo, inside the VM (Debian's kernel, real IPVS): this VM is the
# node "node-a". It makes two pods and an outside client as network
# namespaces, starts the real nftvs binary against the kube-apiserver on
# the host (https://10.0.2.100:6443, reached through qemu's one restricted
# forward), creates Services of every type through the API, sends traffic
# through each, and shows what a user would look at. Any request that is
# not answered fails the demo (exit 1). Run by `make demo`
# (e2e/demo/run.sh); needs NFTVS_KUBECONFIG and NFTVS_NFTVS_BINARY.
set -euo pipefail

: "${NFTVS_KUBECONFIG:?run through make demo}" "${NFTVS_NFTVS_BINARY:?run through make demo}"
API=https://10.0.2.100:6443
TOKEN=$(awk '/token:/ {print $2; exit}' "$NFTVS_KUBECONFIG")
NODE=node-a
NODE_IP=192.168.100.1
failures=0

elapsed() { awk -v s="$start" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }'; }
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
api() { curl -sS -k --max-time 10 -H "Authorization: Bearer $TOKEN" "$@"; }
# create PATH: POST the YAML on stdin, which must be created (201).
create() {
  local out code
  out=$(api -X POST -H 'Content-Type: application/yaml' --data-binary @- -w '\n%{http_code}' "$API$1")
  code=${out##*$'\n'}
  if [ "$code" != 201 ]; then
    echo "create $1: HTTP $code: ${out%$'\n'*}" >&2
    exit 1
  fi
}
# patch PATH JSON: a merge patch that must succeed (200).
patch() {
  local code
  code=$(api -o /dev/null -w '%{http_code}' -X PATCH -H 'Content-Type: application/merge-patch+json' -d "$2" "$API$1")
  [ "$code" = 200 ] || { echo "patch $1: HTTP $code" >&2; exit 1; }
}
# ask WHAT CMD...: run one request, print its answer; count a failure.
ask() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1) && [ -n "$out" ]; then
    printf '  %-46s %s\n' "$what" "$out"
  else
    printf '  %-46s FAILED: %s\n' "$what" "$out"
    failures=$((failures + 1))
  fi
}

step "The node: pods and an outside client as network namespaces"
sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
# pod NAME IP: a namespace on a veth, routed /32 from the node (as Calico
# does), answering HTTP on 8080 and UDP on 8053 with its name and the
# source address it saw.
pod() {
  local name=$1 ip=$2
  ip netns add "pod-$name"
  ip link add "vp-$name" type veth peer name eth0 netns "pod-$name"
  ip link set "vp-$name" up
  ip -n "pod-$name" link set lo up
  ip -n "pod-$name" addr add "$ip/32" dev eth0
  ip -n "pod-$name" link set eth0 up
  # The node's end has no address: static neighbours both ways stand in
  # for ARP (Calico answers with proxy ARP instead).
  local node_mac pod_mac
  node_mac=$(cat "/sys/class/net/vp-$name/address")
  pod_mac=$(ip netns exec "pod-$name" cat /sys/class/net/eth0/address)
  ip -n "pod-$name" neigh add 169.254.1.1 lladdr "$node_mac" dev eth0 nud permanent
  ip -n "pod-$name" route add default via 169.254.1.1 dev eth0 onlink
  ip neigh add "$ip" lladdr "$pod_mac" dev "vp-$name" nud permanent
  ip route add "$ip/32" dev "vp-$name" scope link
  # socat sets SOCAT_PEERADDR for the program it runs.
  printf '#!/bin/sh\nprintf "HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n%%s (saw %%s)\\n" %s "$SOCAT_PEERADDR"\n' "$name" >"/tmp/http-$name"
  printf '#!/bin/sh\nprintf "%%s (saw %%s)\\n" %s "$SOCAT_PEERADDR"\n' "$name" >"/tmp/udp-$name"
  chmod +x "/tmp/http-$name" "/tmp/udp-$name"
  ip netns exec "pod-$name" socat -T2 TCP-LISTEN:8080,fork,reuseaddr EXEC:"/tmp/http-$name" &
  ip netns exec "pod-$name" socat -T2 UDP-RECVFROM:8053,fork EXEC:"/tmp/udp-$name" &
  echo "  pod $name: $ip"
}
pod a1 10.244.1.11
pod a2 10.244.1.12
pod client 10.244.1.99
ip netns add outside
ip link add ext0 type veth peer name eth0 netns outside
ip addr add "$NODE_IP/24" dev ext0
ip link set ext0 up
ip -n outside link set lo up
ip -n outside addr add 192.168.100.2/24 dev eth0
ip -n outside link set eth0 up
ip -n outside route add default via "$NODE_IP"
echo "  outside client: 192.168.100.2, via the node's $NODE_IP"

step "This node's Node object, through the API"
create /api/v1/nodes <<EOF
apiVersion: v1
kind: Node
metadata: {name: $NODE, labels: {kubernetes.io/hostname: $NODE}}
EOF
patch /api/v1/nodes/$NODE/status \
  "{\"status\":{\"addresses\":[{\"type\":\"InternalIP\",\"address\":\"$NODE_IP\"},{\"type\":\"Hostname\",\"address\":\"$NODE\"}]}}"
echo "  node $NODE, InternalIP $NODE_IP"

step "nftvs starts, with a kube-proxy command line"
args=(--kubeconfig="$NFTVS_KUBECONFIG" --hostname-override=$NODE --proxy-mode=ipvs
  --cluster-cidr=10.244.0.0/16 --ipvs-scheduler=rr --ipvs-min-sync-period=100ms -v=2)
echo "  nftvs ${args[*]}"
start=$(date +%s.%N)
"$NFTVS_NFTVS_BINARY" "${args[@]}" >/tmp/nftvs.log 2>&1 &
nftvs_pid=$!
for _ in $(seq 1 300); do
  curl -sf --max-time 1 http://127.0.0.1:10256/healthz >/dev/null 2>&1 && break
  kill -0 $nftvs_pid 2>/dev/null || { echo "nftvs exited:"; tail -20 /tmp/nftvs.log; exit 1; }
  sleep 0.2
done
echo "  healthy after $(elapsed) s: $(curl -s http://127.0.0.1:10256/healthz)"

step "Services and EndpointSlices, through the API"
create /api/v1/namespaces <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: demo}
EOF
# service NAME TYPE CLUSTERIP EXTRA_SPEC: a Service with ports http 80/TCP
# and dns 53/UDP, and its EndpointSlice with pods a1 and a2.
service() {
  local name=$1 type=$2 ip=$3 extra=${4:-}
  create /api/v1/namespaces/demo/services <<EOF
apiVersion: v1
kind: Service
metadata: {name: $name, namespace: demo}
spec:
  type: $type
  clusterIP: $ip
  ports:
  - {name: http, port: 80, protocol: TCP, targetPort: 8080$( [ "$type" = ClusterIP ] || echo ", nodePort: $5")}
  - {name: dns, port: 53, protocol: UDP, targetPort: 8053}
$extra
EOF
  create /apis/discovery.k8s.io/v1/namespaces/demo/endpointslices <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $name-abc12, namespace: demo, labels: {kubernetes.io/service-name: $name}}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 8053, protocol: UDP}
endpoints:
- {addresses: [10.244.1.11], nodeName: $NODE, conditions: {ready: true}}
- {addresses: [10.244.1.12], nodeName: $NODE, conditions: {ready: true}}
EOF
  echo "  $type demo/$name: ClusterIP $ip${extra:+, $(echo $extra | tr -s ' ')}"
}
service web ClusterIP 10.96.0.10
service nodeport NodePort 10.96.0.11 "" 30080
service lb LoadBalancer 10.96.0.12 "  loadBalancerSourceRanges: [192.168.100.0/24]" 30081
patch /api/v1/namespaces/demo/services/lb/status '{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.10"}]}}}'
echo "  LoadBalancer demo/lb: status ingress 203.0.113.10"
service ext ClusterIP 10.96.0.13 "  externalIPs: [198.51.100.7]"

# Wait until every frontend is programmed (bounded).
for _ in $(seq 1 150); do
  n=$(ipvsadm -Ln | grep -cE '10\.96\.0\.1[0-3]:80|30080|30081|203\.0\.113\.10:80|198\.51\.100\.7:80' || true)
  [ "$n" -ge 7 ] && break
  sleep 0.2
done
echo "  every frontend programmed $(elapsed) s after nftvs started"

step "Traffic"
curl_in() { ip netns exec "$1" curl -sS --max-time 3 "http://$2/"; }
udp_in() { ip netns exec "$1" socat -T2 - "UDP:$2" <<<"ping"; }
for i in 1 2 3 4; do ask "pod client → web 10.96.0.10:80 (#$i)" curl_in pod-client 10.96.0.10:80; done
ask "pod client → web 10.96.0.10:53/UDP" udp_in pod-client 10.96.0.10:53
ask "node → web 10.96.0.10:80" curl -sS --max-time 3 http://10.96.0.10:80/
ask "pod a1 → web (hairpin: a1 may answer itself)" curl_in pod-a1 10.96.0.10:80
for i in 1 2; do ask "outside → NodePort $NODE_IP:30080 (#$i)" curl_in outside $NODE_IP:30080; done
ask "outside → LoadBalancer 203.0.113.10:80" curl_in outside 203.0.113.10:80
ask "outside → external IP 198.51.100.7:80" curl_in outside 198.51.100.7:80
if out=$(ip netns exec outside curl -sS --max-time 2 http://10.96.0.10:9999/ 2>&1); then
  echo "  a host port on a ClusterIP answered: $out"; failures=$((failures + 1))
else
  printf '  %-46s %s\n' "outside → 10.96.0.10:9999 (not a Service port)" "rejected, as it should be: ${out##*: }"
fi

step "ipvsadm -Ln"
ipvsadm -Ln

step "nft list table inet nftvs"
nft list table inet nftvs

step "Metrics (127.0.0.1:10249/metrics) and health (:10256/healthz)"
curl -s http://127.0.0.1:10249/metrics | grep -E '^(kubeproxy_sync_proxy_rules_(duration_seconds_(count|sum)|last_timestamp_seconds)|kubeproxy_network_programming_duration_seconds_count|nftvs_nft_elements|nftvs_nft_rules)' | sed 's/^/  /'
echo "  /healthz: $(curl -s http://127.0.0.1:10256/healthz)"

step "Cleaning up"
kill $nftvs_pid
wait $nftvs_pid || true
"$NFTVS_NFTVS_BINARY" --cleanup >/dev/null 2>&1 && echo "  nftvs --cleanup: IPVS, kube-ipvs0 and table inet nftvs removed"
if [ "$failures" -gt 0 ]; then
  echo "demo: $failures requests FAILED; nftvs log:" >&2
  tail -40 /tmp/nftvs.log >&2
  exit 1
fi
echo "  every request was answered"
