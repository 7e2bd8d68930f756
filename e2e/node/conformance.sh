#!/usr/bin/env bash
# conformance.sh [OUTDIR]: make conformance. The same upstream e2e.test
# selection (conformance-focus.txt minus conformance-skip.txt) on the same
# kind of node, twice: with upstream kube-proxy 1.36.3 --proxy-mode=ipvs,
# and with nftvs installed from deploy/. Each run gets a fresh cluster
# (cluster.sh) and runs the selection in two parts, the [Conformance]
# tests first (conformance-first.txt), then the others. Writes OUTDIR
# (default docs/conformance): junit-PROXY-conformance.xml and
# junit-PROXY-other.xml, results.md (the table, from e2e/node/report) and
# the run times.
#
# Environment: NFTVS_CONFORMANCE_PROXIES (default "kube-proxy nftvs"),
# NFTVS_CONFORMANCE_PARALLEL=1 (both clusters at once, each in its own
# network namespace and VM: half the wall time on an idle machine),
# NFTVS_CONFORMANCE_BUDGET (minutes of e2e.test per proxy, default 240:
# what is not reached in time is reported "not run").
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$root/docs/conformance}
mkdir -p "$out"
export PATH=/usr/local/go/bin:$PATH
work=$(mktemp -d /tmp/nftvs-conformance.XXXXXX)
budget=${NFTVS_CONFORMANCE_BUDGET:-240}
# The second part: the same selection without the [Conformance] tests.
{ cat "$here/conformance-skip.txt"; echo '\[Conformance\]'; } >"$work/skip-other.txt"

run() { # PROXY: one cluster, both parts; its output in $work/PROXY.log
  local proxy=$1 t
  t=$(date +%s)
  NFTVS_NODE_TIMEOUT=${NFTVS_NODE_TIMEOUT:-$((budget * 60 + 1800))} "$here/cluster.sh" -p "$proxy" bash -c '
    here=$0 o=$1 budget=$2 skipother=$3
    [ "$NFTVS_NODE_PROXY" = kube-proxy ] || "$here/install-nftvs.sh" || exit 1
    t0=$(date +%s)
    NFTVS_E2E_TIMEOUT=${budget}m "$here/e2e.sh" -f "$here/conformance-first.txt" -s "$here/conformance-skip.txt" -o "$o/conformance"
    rc=$?
    left=$((budget * 60 - $(date +%s) + t0))
    if [ "$left" -gt 60 ]; then
      NFTVS_E2E_TIMEOUT=${left}s "$here/e2e.sh" -f "$here/conformance-focus.txt" -s "$skipother" -o "$o/other" || rc=1
    else
      echo "conformance: no time left for the other tests"; rc=1
    fi
    exit $rc' "$here" "$work/$proxy" "$budget" "$work/skip-other.txt" >"$work/$proxy.log" 2>&1
  local st=$?
  echo "$(($(date +%s) - t))" >"$work/$proxy.secs"
  return $st
}

proxies=${NFTVS_CONFORMANCE_PROXIES:-kube-proxy nftvs}
# Two clusters must not rebuild the cache under each other: build once
# here (what make's node-bins already did), then use it as it is.
if [ "${NFTVS_CONFORMANCE_PARALLEL:-0}" = 1 ] && [ "${NFTVS_NODE_NOBUILD:-0}" != 1 ]; then
  nice -n 15 "$root/e2e/tools/build.sh" >/dev/null &&
    nice -n 15 "$root/e2e/tools/node/build.sh" >/dev/null &&
    nice -n 15 "$root/e2e/tools/containerd/build.sh" >/dev/null &&
    nice -n 15 "$here/images.sh" >/dev/null || exit 1
  export NFTVS_NODE_NOBUILD=1
fi
rc=0
declare -A pid
for proxy in $proxies; do
  echo "=== $proxy (log: $work/$proxy.log)"
  if [ "${NFTVS_CONFORMANCE_PARALLEL:-0}" = 1 ]; then
    run "$proxy" &
    pid[$proxy]=$!
  else
    run "$proxy" || rc=1
    echo "=== $proxy: $(($(cat "$work/$proxy.secs") / 60)) min"
  fi
done
for proxy in "${!pid[@]}"; do
  wait "${pid[$proxy]}" || rc=1
  echo "=== $proxy: $(($(cat "$work/$proxy.secs") / 60)) min"
done

args=()
for proxy in $proxies; do
  files=()
  for part in conformance other; do
    if [ -f "$work/$proxy/$part/junit_01.xml" ]; then
      cp "$work/$proxy/$part/junit_01.xml" "$out/junit-$proxy-$part.xml"
      files+=("$out/junit-$proxy-$part.xml")
    else
      echo "conformance: no JUnit from the $proxy run, part $part (see $work/$proxy.log)" >&2
      rc=1
    fi
  done
  [ ${#files[@]} -gt 0 ] || continue
  label=$proxy
  [ "$proxy" = kube-proxy ] && label="kube-proxy 1.36.3 IPVS mode"
  args+=("$label=$(IFS=,; echo "${files[*]}")")
done
if [ ${#args[@]} -gt 0 ]; then
  {
    (cd "$root" && go run ./e2e/node/report -title "Upstream e2e [sig-network] Services on one real node ($(date -u +%F))" "${args[@]}")
    echo
    for proxy in $proxies; do
      [ -f "$work/$proxy.secs" ] && echo "- $proxy run: $(($(cat "$work/$proxy.secs") / 60)) min (cluster, node boot, install, e2e.test; budget $budget min of e2e.test)"
    done
  } >"$out/results.md"
  echo "conformance: $out/results.md"
fi
exit $rc
