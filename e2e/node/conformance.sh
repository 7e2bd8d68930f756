#!/usr/bin/env bash
# conformance.sh [OUTDIR]: make conformance. The same upstream e2e.test
# selection (conformance-focus.txt minus conformance-skip.txt) on the same
# kind of node, twice: with upstream kube-proxy 1.36.3 --proxy-mode=ipvs,
# then with nftvs installed from deploy/. Each run gets a fresh cluster
# (cluster.sh). Writes OUTDIR (default docs/conformance): junit-*.xml,
# results.md (the table, from e2e/node/report) and the run times.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/docs/conformance}
mkdir -p "$out"
export PATH=/usr/local/go/bin:$PATH
work=$(mktemp -d /tmp/nftvs-conformance.XXXXXX)
rc=0
declare -A secs
for proxy in ${NFTVS_CONFORMANCE_PROXIES:-kube-proxy nftvs}; do
  t=$(date +%s)
  echo "=== $proxy"
  NFTVS_NODE_TIMEOUT=${NFTVS_NODE_TIMEOUT:-14400} "$here/cluster.sh" -p "$proxy" bash -c '
    set -e
    [ "$NFTVS_NODE_PROXY" = kube-proxy ] || "$0/install-nftvs.sh"
    "$0/e2e.sh" -f "$0/conformance-focus.txt" -s "$0/conformance-skip.txt" -o "$1"' "$here" "$work/$proxy" || rc=1
  secs[$proxy]=$(($(date +%s) - t))
  echo "=== $proxy: $((secs[$proxy] / 60)) min"
  if [ -f "$work/$proxy/junit_01.xml" ]; then
    cp "$work/$proxy/junit_01.xml" "$out/junit-$proxy.xml"
  else
    echo "conformance: no JUnit from the $proxy run (kept in $work/$proxy)" >&2
    rc=1
  fi
done
args=()
[ -f "$out/junit-kube-proxy.xml" ] && args+=("kube-proxy 1.36.3 IPVS mode=$out/junit-kube-proxy.xml")
[ -f "$out/junit-nftvs.xml" ] && args+=("nftvs=$out/junit-nftvs.xml")
if [ ${#args[@]} -gt 0 ]; then
  {
    (cd "$root" && go run ./e2e/node/report -title "Upstream e2e [sig-network] Services on one real node ($(date -u +%F))" "${args[@]}")
    echo
    for p in "${!secs[@]}"; do echo "- $p run: $((secs[$p] / 60)) min (cluster, node boot, e2e.test)"; done
  } >"$out/results.md"
  echo "conformance: $out/results.md"
fi
exit $rc
