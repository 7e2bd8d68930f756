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
# NFTVS_CONFORMANCE_PARTS (default "conformance other": which parts, in
# that order; a part left out keeps OUTDIR's earlier JUnit in the table,
# and so does a proxy left out of NFTVS_CONFORMANCE_PROXIES),
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
# The second part: the same selection without the first part's tests.
cat "$here/conformance-skip.txt" "$here/conformance-first.txt" >"$work/skip-other.txt"

# The parts, in the order they run: "conformance" (the [Conformance]
# tests of conformance-first.txt) and "other" (the rest of the selection).
parts=${NFTVS_CONFORMANCE_PARTS:-conformance other}
for part in $parts; do
  case $part in conformance | other) ;; *) echo "conformance: NFTVS_CONFORMANCE_PARTS: unknown part $part" >&2; exit 2 ;; esac
done

run() { # PROXY: one cluster, the parts in order; its output in $work/PROXY.log
  local proxy=$1 t
  t=$(date +%s)
  NFTVS_NODE_TIMEOUT=${NFTVS_NODE_TIMEOUT:-$((budget * 60 + 1800))} "$here/cluster.sh" -p "$proxy" bash -c '
    here=$0 o=$1 budget=$2 skipother=$3 parts=$4
    [ "$NFTVS_NODE_PROXY" = kube-proxy ] || "$here/install-nftvs.sh" || exit 1
    t0=$(date +%s) rc=0
    for part in $parts; do
      left=$((budget * 60 - $(date +%s) + t0))
      if [ "$left" -le 60 ]; then
        echo "conformance: no time left for part $part"; rc=1; continue
      fi
      case $part in
      conformance) focus=$here/conformance-first.txt skip=$here/conformance-skip.txt ;;
      other) focus=$here/conformance-focus.txt skip=$skipother ;;
      esac
      NFTVS_E2E_TIMEOUT=${left}s "$here/e2e.sh" -f "$focus" -s "$skip" -o "$o/$part" || rc=1
    done
    exit $rc' "$here" "$work/$proxy" "$budget" "$work/skip-other.txt" "$parts" >"$work/$proxy.log" 2>&1
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

args=() earlier=()
for proxy in kube-proxy nftvs; do
  files=()
  ran=0
  case " $proxies " in *" $proxy "*) ran=1 ;; esac
  for part in conformance other; do
    case "$ran: $parts " in
    "1:"*" $part "*)
      if [ -f "$work/$proxy/$part/junit_01.xml" ]; then
        cp "$work/$proxy/$part/junit_01.xml" "$out/junit-$proxy-$part.xml"
        files+=("$out/junit-$proxy-$part.xml")
      else
        echo "conformance: no JUnit from the $proxy run, part $part (see $work/$proxy.log)" >&2
        rc=1
      fi ;;
    *)
      # A part or proxy this run left out (NFTVS_CONFORMANCE_PARTS,
      # NFTVS_CONFORMANCE_PROXIES): the table keeps OUTDIR's earlier
      # results for it, re-runs last, and says so.
      for f in "$out/junit-$proxy-$part.xml" "$out/junit-$proxy-$part"-*.xml; do
        [ -f "$f" ] || continue
        files+=("$f")
        earlier+=("$proxy, part $part: $(basename "$f") (an earlier run, kept)")
      done ;;
    esac
  done
  [ ${#files[@]} -gt 0 ] || continue
  label=$proxy
  [ "$proxy" = kube-proxy ] && label="kube-proxy 1.36.3 IPVS mode"
  args+=("$label=$(IFS=,; echo "${files[*]}")")
done
if [ ${#args[@]} -gt 0 ]; then
  {
    (cd "$root" && go run ./e2e/node/report -title "Upstream e2e [sig-network] tests of a service proxy on one real node ($(date -u +%F))" "${args[@]}")
    echo
    for e in "${earlier[@]}"; do echo "- $e"; done
    for proxy in $proxies; do
      [ -f "$work/$proxy.secs" ] && echo "- $proxy run: $(($(cat "$work/$proxy.secs") / 60)) min (cluster, node boot, install, e2e.test; budget $budget min of e2e.test)"
    done
  } >"$out/results.md"
  echo "conformance: $out/results.md"
fi
exit $rc
